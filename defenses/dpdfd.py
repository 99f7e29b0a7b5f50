"""``dpdfd``: Differentially Private Data-Free Distillation (Liu, Wang, Li, Zeng, Ge, "Model Conversion
via Differentially Private Data-Free Distillation", IJCAI 2023, arXiv 2304.12528).

The teacher (the cached ``none`` release of the same task and seed) is converted into a private
student with synthetic data only. Each iteration: generator batch -> teacher and student logits ->
gradient of the KL distillation loss w.r.t. the student's logits, normalized per sample, plus
Gaussian noise -> the student regresses (MSE) onto the detached DP target -> the generator is
updated with the student as a fixed discriminator (DAFL losses on the student, no teacher).

The official snippet (github.com/llbbcc/DPDFD, ``DPTrain``) has three faults, fixed here:

1. its target ``s_out_new`` keeps the autograd graph of ``s_out``, so ``MSE(s_out, s_out_new)``
   has zero gradient -> the target is **detached**;
2. ``loss_old.backward()`` fills the student's parameter gradients with the non-private KD
   gradient, which then leaks into the update -> the logit gradient is taken with
   ``torch.autograd.grad`` on a detached leaf copy of the logits, no parameter gradient exists;
3. it scales the whole batch by its single largest entry and overwrites every row with the batch
   mean -> each sample is normalized separately, ``C g_i / (||g_i|| + e)``, so one query's
   contribution is bounded by C (the sensitivity the accountant uses).

Accounting as in ``dpsd``'s data mode (shared code in :mod:`bench.lib.distill`): unit ``query``,
sigma calibrated with dp_accounting (PLD) so ``iterations`` rounds spend the target epsilon, plus
the example-level figure in ``extra["epsilon_example_level"]``. Model selection: best accuracy on
``ctx.task.val`` (never test). See docs/methods/dpdfd.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
from bench.lib.models import build_model, spec_for


@dataclass
class DPDFDConfig(D.TranscriptionConfig):
    """The shared transcription fields (:class:`bench.lib.distill.TranscriptionConfig`) at their
    defaults: DPDFD distils with the KL loss on all classes (no top-k), has no label mode and no
    adversarial generator term."""

    def validate(self):
        self.check_sizes("dpdfd")
        if self.generator_every < 1 or not 0.0 <= self.ema < 1.0:
            raise BenchError("dpdfd: generator_every must be >= 1 and ema in [0, 1)")


@register_defense("dpdfd")
class DPDFD(Defense):
    """Data-free DP distillation: noisy normalized KL logit gradients, MSE to the DP target."""

    Config = DPDFDConfig
    privacy_unit = "query"
    paper = ("Liu, Wang, Li, Zeng, Ge, Model Conversion via Differentially Private Data-Free Distillation, "
             "IJCAI 2023 (arXiv 2304.12528)")

    def fit(self, ctx) -> Release:
        c = self.config
        if math.isinf(ctx.epsilon):
            raise BenchError("dpdfd needs a finite epsilon")
        if c.teachers > 1:
            return self._fit_ensemble(ctx)
        teacher, teacher_desc, teacher_info = D.resolve_teacher(ctx, c, "dpdfd")
        # ---- from here on the private training set (ctx.task.members) is never read ----
        task = ctx.task
        sspec = spec_for(task, c.student_arch)
        gspec = spec_for(task, {"name": "dafl-generator", "latent_dim": c.latent_dim, "width": c.generator_width,
                                **D.generator_spec_args(task.dataset, c.generator_output)})
        student = D.seeded_init(ctx.seed * 1000 + 21, lambda: build_model(sspec))
        generator = D.seeded_init(ctx.seed * 1000 + 23, lambda: build_model(gspec))
        rng = torch.Generator().manual_seed(ctx.seed * 1000 + 27)
        noise_rng = torch.Generator().manual_seed(ctx.seed * 1000 + 29)
        canaries = D.make_canaries(c.own_unit_canaries, task.image_shape, c.iterations, ctx.seed, "dpdfd")
        plan = D.plan_gaussian(ctx.epsilon, ctx.delta, iterations=c.iterations, batch_size=c.batch_size,
                               sens=D.sensitivity_factor(c.neighbouring), query_composition=c.query_composition,
                               accountant=c.accountant, noise_multiplier=c.noise_multiplier,
                               noise_scale=c.noise_scale)
        annotate = D.GaussianAnnotator(plan.applied, c.norm_bound, c.stability, None, c.target_step, "kl",
                                       c.temperature, generator=noise_rng)
        ledger = D.GaussianLedger(plan.z, plan.z_example, ctx.delta, c.accountant, c.query_composition,
                                  released_multiplier=plan.z_released)
        loop = D.LoopConfig(c.iterations, c.batch_size, c.lr_student, c.lr_generator, c.w_oh, c.w_ie, c.w_act, 0.0,
                            c.eval_every, c.select_on_val, generator_every=c.generator_every, ema=c.ema)
        hist = D.transcribe(teacher=teacher, student=student, generator=generator, annotate=annotate, mode="data",
                            cfg=loop, rng=rng, device=ctx.device, val=task.val, on_query=lambda it: ledger.step(),
                            on_eval=lambda it: {"epsilon": ledger.epsilon()}, progress=ctx.progress, log=ctx.log, canaries=canaries)
        spent = ledger.epsilon()
        mech = "Gaussian mechanism on per-sample normalized KL logit gradients (no subsampling)"
        if c.noise_scale == "batch-mean":
            mech += "; noise std divided by the batch size (the authors' batch-mean scaling)"
        privacy = PrivacyReport(
            spent, ctx.delta, "query", f"{c.accountant.upper()} (dp_accounting)", mech,
            {**D.gaussian_privacy_extra(plan, ledger),
             "iterations": ledger.steps, "queries": ledger.steps * c.batch_size,
             "norm_bound": c.norm_bound, "neighbouring": c.neighbouring, "target_epsilon": ctx.epsilon,
             "unit_definition": D.QUERY_UNITS[c.query_composition], "query_composition": c.query_composition,
             "selection_on_private_val": c.select_on_val},
                val_selection("the transcription checkpoint") if c.select_on_val else LAST_ITERATE)
        info = {"history": hist, "selected_by": hist["selected_by"], "selected_iteration": hist["selected_iteration"],
                "teacher": teacher_desc, **({"teacher_clients": teacher_info} if teacher_info else {})}
        if canaries is not None:
            info["own_unit_canaries"] = {**D.canary_info(canaries), "mode": "data", "unit": privacy.unit}
        return Release({"model": student.cpu(), "generator": generator.cpu()},
                       {"model": sspec, "generator": gspec}, privacy, info)

    def _fit_ensemble(self, ctx) -> Release:
        """Ensemble transcription (``teachers`` > 1; :func:`bench.lib.distill.transcribe_ensemble`):
        the authors' multi-teacher option (``multiT``: the normalized gradient averaged over
        teachers) on disjoint shards or clients, noised per query, accounted in unit ``example``
        or ``client``."""
        c = self.config
        task = ctx.task
        sspec = spec_for(task, c.student_arch)
        gspec = spec_for(task, {"name": "dafl-generator", "latent_dim": c.latent_dim, "width": c.generator_width,
                                **D.generator_spec_args(task.dataset, c.generator_output)})
        student = D.seeded_init(ctx.seed * 1000 + 21, lambda: build_model(sspec))
        generator = D.seeded_init(ctx.seed * 1000 + 23, lambda: build_model(gspec))
        loop = D.LoopConfig(c.iterations, c.batch_size, c.lr_student, c.lr_generator, c.w_oh, c.w_ie, c.w_act, 0.0,
                            c.eval_every, c.select_on_val, generator_every=c.generator_every, ema=c.ema,
                            query_every=c.query_every, generator_on_replay=c.generator_on_replay)
        hist, privacy, tinfo = D.transcribe_ensemble(
            ctx, c, loop, student=student, generator=generator, rng=torch.Generator().manual_seed(ctx.seed * 1000 + 27),
            noise_rng=torch.Generator().manual_seed(ctx.seed * 1000 + 29), mode="data", loss="kl")
        info = {"history": hist, "selected_by": hist["selected_by"], "selected_iteration": hist["selected_iteration"],
                "teacher": "ensemble", "ensemble": tinfo}
        return Release({"model": student.cpu(), "generator": generator.cpu()},
                       {"model": sspec, "generator": gspec}, privacy, info)
