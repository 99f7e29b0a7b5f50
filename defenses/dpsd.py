"""``dpsd``: Differentially Private Synthetic Distillation (Liu, Ge, Wang, Li, Liu, "Privacy-Preserving
Model Transcription with Differentially Private Synthetic Distillation", IEEE TPAMI 2026,
arXiv 2601.19090).

Data-free model transcription: the non-private teacher (the cached ``none`` release of the same
task and seed) is converted into a private student through a trainable generator; the private
training set is never read. Each iteration: a generator batch from Gaussian noise -> teacher and
student logits -> private annotation -> student update -> generator update with the student as
discriminator. Two switchable modes (``mode``):

* ``data`` (data-sensitive): per-sample gradient of the DKD loss w.r.t. the student's logits,
  optional top-k coordinates chosen by the student's own logits (default: all K), per-sample
  normalization to C, Gaussian noise, detached regression target. Privacy unit ``query``: each
  answer is noised once (parallel composition, default) or, with ``query_composition:
  per-iteration``, one answer per iteration may differ and sigma is calibrated to the planned
  iterations; epsilon from dp_accounting (PLD), ledger advanced after every teacher query.
* ``label`` (label-sensitive): the teacher's hard label through randomized response with the
  student's prediction as prior (RRWithPrior). Privacy unit ``label``; each query is labelled
  once, so the release is epsilon-label-DP with epsilon = the RR parameter.

Both modes also report ``extra["epsilon_example_level"]`` (one private training example may
change the teacher arbitrarily, so every query carries full sensitivity). The paper's Algorithm 1,
losses and hyperparameters are unpublished in what we could read: everything not in the abstract
is a **reconstruction**, documented in docs/methods/dpsd.md.

With ``teachers: N`` (N > 1) the shared teacher is replaced by N teachers on disjoint shards
(unit ``example``) or clients (unit ``client``) and the mechanism noises their aggregate
(``bench.lib.distill.ensemble``; FedDPSD is the client configuration): the reported epsilon is
then in that unit.

Model selection: the checkpoint with the best accuracy on ``ctx.task.val`` (never test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from bench.api import (
    LAST_ITERATE,
    BenchError,
    Defense,
    PrivacyReport,
    Release,
    register_defense,
    val_selection,
)
from bench.lib import distill as D
from bench.lib.accounting import pure_dp_composition_epsilon
from bench.lib.models import build_model, spec_for


@dataclass
class DPSDConfig(D.TranscriptionConfig):
    """The shared transcription fields (:class:`bench.lib.distill.TranscriptionConfig`: teacher,
    student, generator, loop, Gaussian mechanism, DAFL weights, selection, canaries) and DPSD's
    own: the mode, the DKD loss and top-k of the data-sensitive mechanism, the label-sensitive
    mechanism's prior, and the adversarial generator term."""

    mode: Literal["data", "label"] = "data"
    #: generator output layer: ``dataset-stats`` = DAFL's BatchNorm output mapped through the
    #: dataset's standard input normalization constants; ``tanh`` = (tanh + 1) / 2; ``auto`` =
    #: ``tanh`` in data mode, ``dataset-stats`` in label mode (both chosen on validation: hard
    #: labels of a generator whose first images the teacher calls one class never leave it)
    generator_output: Literal["auto", "dataset-stats", "tanh"] = "auto"
    # --- data-sensitive mechanism
    #: distillation loss whose logit gradient is privatized: dkd (DPSD) or kl
    loss: Literal["dkd", "kl"] = "dkd"
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    #: top-k coordinates (chosen from the student's logits); 0 = all K
    top_k: int = 0
    # --- label-sensitive mechanism
    #: temperature of the student prior given to RRWithPrior (1 = the student's softmax)
    rr_prior_temperature: float = 1.0
    #: weight of the uniform distribution mixed into the prior (0 = the student's softmax only,
    #: 1 = plain K-ary randomized response); keeps an over-confident student prior from shutting
    #: the teacher out (RRWithPrior's k* = 1)
    rr_prior_mix: float = 0.0
    #: iterations labelled with the uniform prior (plain K-ary RR) before the student's prediction
    #: becomes the prior (Ghazi et al.'s two-stage LP-2ST schedule; default: half of the default
    #: iterations); 0 = the student's prior from the first query (a random student's confident
    #: prior makes RRWithPrior return the student's own class: chance accuracy)
    rr_prior_warmup: int = 200
    #: weight of the generator's adversarial term on DP quantities (added to the DAFL losses)
    w_adv: float = 1.0

    def validate(self):
        self.check_sizes("dpsd")
        if self.top_k < 0:
            raise BenchError("dpsd: top_k must be >= 0 (0 = all classes)")
        if self.generator_every < 1:
            raise BenchError("dpsd: generator_every must be >= 1")
        if not 0.0 <= self.ema < 1.0 or not 0.0 <= self.rr_prior_mix <= 1.0:
            raise BenchError("dpsd: ema must be in [0, 1) and rr_prior_mix in [0, 1]")
        if self.rr_prior_warmup < 0:
            raise BenchError("dpsd: rr_prior_warmup must be >= 0")


@register_defense("dpsd")
class DPSD(Defense):
    """Data-free DP transcription teacher -> student via a generator (data or label noise)."""

    Config = DPSDConfig
    privacy_unit = "query"  # the data-sensitive unit; label mode reports unit "label"
    paper = ("Liu, Ge, Wang, Li, Liu, Privacy-Preserving Model Transcription with Differentially "
             "Private Synthetic Distillation, IEEE TPAMI 2026 (arXiv 2601.19090)")

    def fit(self, ctx) -> Release:
        c = self.config
        if math.isinf(ctx.epsilon):
            raise BenchError("dpsd needs a finite epsilon")
        if c.teachers > 1:
            return self._fit_ensemble(ctx)
        teacher, teacher_desc, teacher_info = D.resolve_teacher(ctx, c, "dpsd")
        # ---- from here on the private training set (ctx.task.members) is never read ----
        task = ctx.task
        K = task.num_classes
        sspec, gout, gspec = self._specs(task)
        student, generator, rng, noise_rng = self._nets(ctx, sspec, gspec)
        loop = self._loop_config()
        k = c.top_k if 0 < c.top_k < K else K
        canaries = D.make_canaries(c.own_unit_canaries, task.image_shape, c.iterations, ctx.seed, "dpsd")
        if c.mode == "data":
            plan = D.plan_gaussian(ctx.epsilon, ctx.delta, iterations=c.iterations, batch_size=c.batch_size,
                                   sens=D.sensitivity_factor(c.neighbouring), query_composition=c.query_composition,
                                   accountant=c.accountant, noise_multiplier=c.noise_multiplier,
                                   noise_scale=c.noise_scale)
            annotate = D.GaussianAnnotator(plan.applied, c.norm_bound, c.stability, k, c.target_step, c.loss,
                                           c.temperature, c.dkd_alpha, c.dkd_beta, noise_rng)
            ledger = D.GaussianLedger(plan.z, plan.z_example, ctx.delta, c.accountant, c.query_composition,
                                      released_multiplier=plan.z_released)
            hist = D.transcribe(teacher=teacher, student=student, generator=generator, annotate=annotate, mode="data",
                                cfg=loop, rng=rng, device=ctx.device, val=task.val,
                                on_query=lambda it: ledger.step(), on_eval=lambda it: {"epsilon": ledger.epsilon()},
                                progress=ctx.progress, log=ctx.log, canaries=canaries)
            spent = ledger.epsilon()
            mech = "Gaussian mechanism on per-sample normalized top-k logit gradients (no subsampling)"
            if c.noise_scale == "batch-mean":
                mech += "; noise std divided by the batch size (the DPDFD authors' batch-mean scaling)"
            privacy = PrivacyReport(
                spent, ctx.delta, "query", f"{c.accountant.upper()} (dp_accounting)", mech,
                {**D.gaussian_privacy_extra(plan, ledger),
                 "iterations": ledger.steps, "queries": ledger.steps * c.batch_size,
                 "norm_bound": c.norm_bound, "top_k": k, "neighbouring": c.neighbouring, "target_epsilon": ctx.epsilon,
                 "unit_definition": D.QUERY_UNITS[c.query_composition], "query_composition": c.query_composition,
                 "selection_on_private_val": c.select_on_val},
                val_selection("the transcription checkpoint") if c.select_on_val else LAST_ITERATE)
        else:
            eps_rr = ctx.epsilon
            annotate = D.RRAnnotator(eps_rr, noise_rng, c.rr_prior_temperature, c.rr_prior_mix,
                                     c.rr_prior_warmup)
            queries = {"n": 0}

            def on_query(it):
                queries["n"] += c.batch_size

            hist = D.transcribe(teacher=teacher, student=student, generator=generator, annotate=annotate,
                                mode="label", cfg=loop, rng=rng, device=ctx.device, val=task.val, on_query=on_query,
                                on_eval=lambda it: {"epsilon": eps_rr}, progress=ctx.progress, log=ctx.log, canaries=canaries)
            # own unit: each query's label is released once -> eps_rr-label-DP (parallel composition)
            spent = eps_rr
            eps_ex = pure_dp_composition_epsilon(eps_rr, queries["n"], ctx.delta)
            privacy = PrivacyReport(
                spent, 0.0, "label", "pure DP of RRWithPrior (per query, parallel composition); "
                "example level: RDP (dp_accounting)",
                "randomized response with the student's prediction as prior (RRWithPrior)",
                {"epsilon_example_level": eps_ex, "delta_example_level": ctx.delta, "rr_epsilon": eps_rr,
                 "queries": queries["n"], "iterations": c.iterations, "target_epsilon": ctx.epsilon,
                 "unit_definition": "neighbouring runs differ in the teacher's label for one synthetic query "
                                    "(each query is labelled exactly once)",
                 "selection_on_private_val": c.select_on_val},
                val_selection("the transcription checkpoint") if c.select_on_val else LAST_ITERATE)
        info = {"history": hist, "selected_by": hist["selected_by"], "selected_iteration": hist["selected_iteration"],
                "mode": c.mode, "generator_output": gout, "teacher": teacher_desc,
                **({"teacher_clients": teacher_info} if teacher_info else {})}
        if canaries is not None:
            info["own_unit_canaries"] = {**D.canary_info(canaries), "mode": c.mode, "unit": privacy.unit}
        return Release({"model": student.cpu(), "generator": generator.cpu()},
                       {"model": sspec, "generator": gspec}, privacy, info)

    # --- pieces shared by the single-teacher and the ensemble paths
    def _specs(self, task):
        c = self.config
        sspec = spec_for(task, c.student_arch)
        gout = c.generator_output if c.generator_output != "auto" else ("tanh" if c.mode == "data" else "dataset-stats")
        gspec = spec_for(task, {"name": "dafl-generator", "latent_dim": c.latent_dim, "width": c.generator_width,
                                **D.generator_spec_args(task.dataset, gout)})
        return sspec, gout, gspec

    def _nets(self, ctx, sspec, gspec):
        student = D.seeded_init(ctx.seed * 1000 + 11, lambda: build_model(sspec))
        generator = D.seeded_init(ctx.seed * 1000 + 13, lambda: build_model(gspec))
        rng = torch.Generator().manual_seed(ctx.seed * 1000 + 17)  # latent codes
        noise_rng = torch.Generator().manual_seed(ctx.seed * 1000 + 19)  # DP noise
        return student, generator, rng, noise_rng

    def _loop_config(self) -> D.LoopConfig:
        c = self.config
        return D.LoopConfig(c.iterations, c.batch_size, c.lr_student, c.lr_generator, c.w_oh, c.w_ie, c.w_act,
                            c.w_adv, c.eval_every, c.select_on_val, generator_every=c.generator_every, ema=c.ema,
                            query_every=c.query_every, generator_on_replay=c.generator_on_replay)

    def _fit_ensemble(self, ctx) -> Release:
        """Ensemble transcription (``teachers`` > 1, :mod:`bench.lib.distill.ensemble`): N MLP
        teachers on disjoint shards (unit ``example``) or clients (unit ``client``), the mean of
        their normalized gradients (data mode) or their vote histogram (label mode, GNMax) noised
        per query, sequential composition over the query iterations."""
        c = self.config
        task = ctx.task
        sspec, gout, gspec = self._specs(task)
        student, generator, rng, noise_rng = self._nets(ctx, sspec, gspec)
        hist, privacy, tinfo = D.transcribe_ensemble(ctx, c, self._loop_config(), student=student,
                                                     generator=generator, rng=rng, noise_rng=noise_rng,
                                                     mode=c.mode, loss=c.loss)
        info = {"history": hist, "selected_by": hist["selected_by"], "selected_iteration": hist["selected_iteration"],
                "mode": c.mode, "generator_output": gout, "teacher": "ensemble", "ensemble": tinfo}
        return Release({"model": student.cpu(), "generator": generator.cpu()},
                       {"model": sspec, "generator": gspec}, privacy, info)
