"""Ensemble transcription: the data-free distillation defenses (``dpsd``, ``dpdfd``) with N teachers
trained on **disjoint** parts of the members instead of one teacher on all of them, so that the
transcription has a privacy guarantee in a unit that protects people, not queries.

* :func:`fit_teacher_ensemble`: the members cut into N shards (``record``: the PATE / DataLens
  record partition, one member changes one shard, unit ``example``) or N clients (``iid`` /
  ``dirichlet``: :func:`bench.lib.federated.client_partition`, one client's whole data may change,
  unit ``client``); one stacked MLP classifier per part
  (:class:`bench.lib.synthetic.teachers.MLPClassifierEnsemble`, trained on a schedule that does
  not depend on the realised part sizes), wrapped as :class:`EnsembleTeacher` (logits (N, B, K)).
* :class:`EnsembleGaussianAnnotator` (data mode): for each synthetic query the N teachers'
  per-sample normalized logit gradients are **averaged**, then Gaussian noise is added once to
  the average. Replacing one teacher moves the average of query i by at most 2C / N.
* :class:`EnsembleVoteAnnotator` (label mode): the teachers' vote histogram plus Gaussian noise,
  argmax (GNMax, Papernot et al. ICLR 2018). Replacing one teacher moves one vote: sqrt(2) in L2.
* :func:`plan_ensemble` / :class:`EnsembleLedger`: one teacher's change moves **every** answer of
  **every** query iteration, so the B answers of an iteration are one Gaussian mechanism with joint
  L2 sensitivity sqrt(B) x (per-answer sensitivity), and the query iterations compose
  sequentially (no subsampling: every teacher answers every query). The multiplier per
  iteration is calibrated with dp_accounting (PLD or RDP) to the target epsilon over the
  planned query iterations; the noise std is multiplier x joint sensitivity.

The neighbouring relation is the one of the partition's unit: add/remove one member (record
shards) or replace one client's data (clients). Both change one teacher arbitrarily, which is
all the sensitivity argument uses. Caveat for clients: the padding capacity of the client
teachers is the largest realised client, so the other teachers' schedule depends on it when the
largest client is the one that changes (documented in docs/methods/dpsd.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError
from bench.lib.accounting import calibrate_gaussian, gaussian_epsilon
from bench.lib.distill.annotators import normalize_rows, topk_mask
from bench.lib.distill.losses import per_sample_logit_grad

#: partition of the members -> the privacy unit of the ensemble's guarantee
ENSEMBLE_UNITS = {"record": "example", "iid": "client", "dirichlet": "client"}

UNIT_DEFINITIONS = {
    "example": "add/remove one member: the record partition assigns a member to a shard by its own dataset "
               "row, so one member changes one shard and hence one teacher",
    "client": "replace one client's whole data: one client trains one teacher, so one client changes one "
              "teacher (user-level DP)",
}


class EnsembleTeacher(nn.Module):
    """N stacked MLP classifiers as one module: ``forward(x)`` -> logits (N, B, K) of every teacher
    on the shared batch x (images, flattened inside). The weights are buffers (never trained by
    the transcription)."""

    def __init__(self, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor, chunk: int = 250):
        super().__init__()
        for name, t in (("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2)):
            self.register_buffer(name, t.detach().clone().contiguous())
        self.chunk = int(chunk)

    @property
    def n(self) -> int:
        return int(self.W1.shape[0])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1).float().unsqueeze(0)
        out = []
        for a in range(0, self.n, self.chunk):
            sl = slice(a, a + self.chunk)
            h = F.relu(torch.matmul(x, self.W1[sl]) + self.b1[sl])
            out.append(torch.matmul(h, self.W2[sl]) + self.b2[sl])
        return torch.cat(out)


def fit_teacher_ensemble(task, *, teachers: int, partition: str, alpha: float, hidden: int, epochs: int,
                         batch_size: int, lr: float, seed: int, device="cpu",
                         progress=lambda it, **k: it) -> tuple[EnsembleTeacher, dict]:
    """Train one MLP classifier per disjoint part of ``task.members`` and return the ensemble and
    its public description (partition, unit, capacity, fingerprint of the assignment; no
    noise-free statistic of the members such as part sizes, class histograms or losses)."""
    from bench.lib.federated import client_partition, partition_spec, partition_summary
    from bench.lib.synthetic import partition as record_partition
    from bench.lib.synthetic import row_universe, shard_capacity
    from bench.lib.synthetic.teachers import MLPClassifierEnsemble

    if partition not in ENSEMBLE_UNITS:
        raise BenchError(f"teacher_partition must be one of {list(ENSEMBLE_UNITS)}, got {partition!r}")
    members = task.members
    rows = np.asarray(members.index) if members.index is not None else np.arange(len(members))
    labels = members.y.numpy()
    if teachers < 2 or teachers > len(members):
        raise BenchError(f"teachers must be in 2 … {len(members)} (the members), got {teachers}")
    if partition == "record":
        universe = row_universe(task)
        parts = record_partition(rows, labels, teachers, "record", seed, universe)
        capacity = shard_capacity(universe, teachers)
        capacity_from = "public: ceil(training-split rows / teachers)"
    else:
        try:
            parts = client_partition(rows, labels, teachers, partition, alpha, seed)
        except ValueError as err:
            raise BenchError(f"teacher partition: {err}") from None
        capacity = max(len(p) for p in parts)
        capacity_from = "the largest client (data-dependent; see docs/methods/dpsd.md)"
    fingerprint = partition_summary(parts, rows, labels, task.num_classes)["fingerprint"]
    pos = np.zeros((teachers, capacity), dtype=np.int64)
    mask = np.zeros((teachers, capacity), dtype=bool)
    for i, p in enumerate(parts):
        pos[i, :len(p)], mask[i, :len(p)] = p, True
    pos_t = torch.from_numpy(pos)
    x = members.x.reshape(len(members), -1).float()
    gen = torch.Generator().manual_seed(int(seed) * 7919 + 5)
    ens = MLPClassifierEnsemble(teachers, x.shape[1], task.num_classes, hidden, gen, lr)
    ens.fit(x[pos_t], members.y[pos_t], torch.from_numpy(mask), epochs=epochs, batch_size=batch_size,
            generator=gen, progress=progress)
    module = EnsembleTeacher(ens.W1, ens.b1, ens.W2, ens.b2).to(device).eval()
    info = {"teachers": teachers, "partition": partition, "unit": ENSEMBLE_UNITS[partition],
            "alpha": alpha if partition == "dirichlet" else None, "capacity": int(capacity),
            "capacity_from": capacity_from, "assignment_fingerprint": fingerprint,
            "teacher": f"MLP 1x{hidden} ReLU, Adam lr {lr}, {epochs} epochs, batch {batch_size}"}
    if partition != "record":
        # the client split's public recipe and its fingerprint (already above), the record that
        # bench.lib.federated.find_partition looks for: with it every membership attack adds its
        # per-client view on the release (bench.lib.membership.clients), as on DP-FedAvg's
        info["client_split"] = {"spec": partition_spec(teachers, partition, alpha, seed), "fingerprint": fingerprint}
    return module, info


def per_answer_sensitivity(mode: str, teachers: int, bound: float) -> float:
    """L2 change of one query's aggregated answer when one teacher changes arbitrarily: 2C / N for
    the mean of normalized gradients (data), sqrt(2) for the vote histogram (label)."""
    return 2.0 * bound / teachers if mode == "data" else math.sqrt(2.0)


@dataclass
class EnsemblePlan:
    mode: str
    teachers: int
    batch_size: int
    query_iterations: int
    #: noise multiplier of one query iteration (std / joint L2 sensitivity of its B answers)
    z: float
    #: joint L2 sensitivity of one iteration's B aggregated answers
    sensitivity: float
    accountant: str
    unit: str

    @property
    def std(self) -> float:
        return self.z * self.sensitivity


def plan_ensemble(target_epsilon: float, delta: float, *, mode: str, teachers: int, batch_size: int,
                  query_iterations: int, bound: float, accountant: str, unit: str,
                  noise_multiplier: Optional[float] = None) -> EnsemblePlan:
    """Calibrate the per-iteration multiplier to ``target_epsilon`` over ``query_iterations``
    sequentially composed Gaussian mechanisms (or take ``noise_multiplier``)."""
    sens = per_answer_sensitivity(mode, teachers, bound) * math.sqrt(batch_size)
    z = calibrate_gaussian(target_epsilon, delta, query_iterations, accountant) if noise_multiplier is None \
        else float(noise_multiplier)
    return EnsemblePlan(mode, int(teachers), int(batch_size), int(query_iterations), float(z), float(sens),
                        accountant, unit)


class EnsembleLedger:
    """Counts the query iterations (one Gaussian mechanism each) and converts them into epsilon
    in the ensemble's unit with dp_accounting."""

    def __init__(self, plan: EnsemblePlan, delta: float):
        self.plan, self.delta, self.steps = plan, delta, 0

    def step(self, n: int = 1):
        self.steps += n

    def epsilon(self) -> float:
        return gaussian_epsilon(self.plan.z, self.steps, self.delta, self.plan.accountant) if self.steps else 0.0


@dataclass
class EnsembleGaussianAnnotator:
    """Data mode over N teachers: a_i = (1/N) sum_j C g_ij / (||g_ij|| + e), g_ij the gradient of the
    distillation loss of query i against teacher j w.r.t. the student's logits (top-k from the
    student's logits); released ``target_i = s_i - eta (a_i + n_i)``, n_i ~ N(0, std^2) on the kept
    coordinates. ``teacher_logits``: (N, B, K)."""

    std: float
    bound: float = 1.0
    stability: float = 1e-3
    top_k: Optional[int] = None
    step: float = 1.0
    loss: str = "dkd"
    temperature: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    generator: Optional[torch.Generator] = None

    def clean(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The noise-free aggregate a (B, K)."""
        s = student_logits.detach()
        n, b, k = teacher_logits.shape
        mask = topk_mask(s, self.top_k)
        g = per_sample_logit_grad(s.repeat(n, 1), teacher_logits.reshape(n * b, k), self.loss,
                                  temperature=self.temperature, alpha=self.alpha, beta=self.beta)
        g = normalize_rows(g * mask.repeat(n, 1), self.bound, self.stability)
        return g.view(n, b, k).mean(0)

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        s = student_logits.detach()
        a = self.clean(s, teacher_logits)
        noise = torch.randn(s.shape, generator=self.generator, dtype=s.dtype).to(s.device)
        return (s - self.step * (a + noise * self.std * topk_mask(s, self.top_k))).detach()


def vote_histogram(teacher_logits: torch.Tensor) -> torch.Tensor:
    """(N, B, K) logits -> (B, K) counts of the teachers' argmax votes."""
    n, b, k = teacher_logits.shape
    return F.one_hot(teacher_logits.argmax(-1), k).sum(0).float()


@dataclass
class EnsembleVoteAnnotator:
    """Label mode over N teachers (GNMax): label_i = argmax(votes_i + N(0, std^2 I)); no threshold
    check (every query is answered)."""

    std: float
    generator: Optional[torch.Generator] = None

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        counts = vote_histogram(teacher_logits)
        noise = torch.randn(counts.shape, generator=self.generator) * self.std
        return (counts + noise.to(counts.device)).argmax(1)


def query_iterations(iterations: int, query_every: int) -> int:
    """How many of the loop's iterations query the teachers (iterations 1, 1 + k, 1 + 2k, …)."""
    return -(-int(iterations) // int(query_every))


def setup_ensemble(ctx, c, mode: str, loss: str, noise_rng: torch.Generator):
    """The ensemble path shared by ``dpsd`` and ``dpdfd``: train the teachers on the members (the
    last read of the private data), plan the noise, build the annotator and the ledger. ``c``: a
    :class:`bench.lib.distill.TranscriptionConfig`. Returns (teacher, annotate, ledger, plan, info)."""
    if c.own_unit_canaries:
        raise BenchError("own-unit canaries are not supported with an ensemble of teachers (teachers > 1)")
    if c.noise_scale != "per-sample":
        raise BenchError("an ensemble of teachers takes noise_scale: per-sample only")
    unit = ENSEMBLE_UNITS.get(c.teacher_partition)
    if unit is None:
        raise BenchError(f"teacher_partition must be one of {list(ENSEMBLE_UNITS)}, got {c.teacher_partition!r}")
    teacher, info = fit_teacher_ensemble(ctx.task, teachers=c.teachers, partition=c.teacher_partition,
                                         alpha=c.teacher_alpha, hidden=c.teacher_hidden, epochs=c.teacher_epochs,
                                         batch_size=c.teacher_batch_size, lr=c.teacher_lr, seed=ctx.seed,
                                         device=ctx.device, progress=ctx.progress)
    # ---- from here on the private training set (ctx.task.members) is never read ----
    tq = query_iterations(c.iterations, c.query_every)
    plan = plan_ensemble(ctx.epsilon, ctx.delta, mode=mode, teachers=c.teachers, batch_size=c.batch_size,
                         query_iterations=tq, bound=c.norm_bound, accountant=c.accountant, unit=unit,
                         noise_multiplier=c.noise_multiplier)
    if mode == "data":
        k = c.top_k if 0 < getattr(c, "top_k", 0) < ctx.task.num_classes else None
        annotate = EnsembleGaussianAnnotator(plan.std, c.norm_bound, c.stability, k, c.target_step, loss,
                                             c.temperature, getattr(c, "dkd_alpha", 1.0), getattr(c, "dkd_beta", 8.0),
                                             noise_rng)
    else:
        annotate = EnsembleVoteAnnotator(plan.std, noise_rng)
    return teacher, annotate, EnsembleLedger(plan, ctx.delta), plan, info


def transcribe_ensemble(ctx, c, loop, *, student: nn.Module, generator: nn.Module, rng: torch.Generator,
                        noise_rng: torch.Generator, mode: str, loss: str):
    """Train the ensemble, run :func:`bench.lib.distill.loop.transcribe` with its mechanism and
    account it. Returns (history, PrivacyReport, ensemble info)."""
    from bench.core.api import LAST_ITERATE, PrivacyReport, val_selection
    from bench.lib.distill.loop import transcribe

    teacher, annotate, ledger, plan, tinfo = setup_ensemble(ctx, c, mode, loss, noise_rng)
    # ---- from here on the private training set (ctx.task.members) is never read ----
    hist = transcribe(teacher=teacher, student=student, generator=generator, annotate=annotate, mode=mode,
                      cfg=loop, rng=rng, device=ctx.device, val=ctx.task.val, on_query=lambda it: ledger.step(),
                      on_eval=lambda it: {"epsilon": ledger.epsilon()}, progress=ctx.progress, log=ctx.log)
    mech = (f"ensemble of {plan.teachers} disjoint teachers: "
            + ("mean of per-sample normalized logit gradients + Gaussian noise" if mode == "data"
               else "GNMax (vote histogram + Gaussian noise, argmax)") + " per query, no subsampling")
    privacy = PrivacyReport(
        ledger.epsilon(), ctx.delta, plan.unit, f"{c.accountant.upper()} (dp_accounting)", mech,
        {**ensemble_privacy_extra(plan, ledger, tinfo), "iterations": c.iterations, "query_every": c.query_every,
         "norm_bound": c.norm_bound, "target_epsilon": ctx.epsilon, "selection_on_private_val": c.select_on_val},
        val_selection("the transcription checkpoint") if c.select_on_val else LAST_ITERATE)
    return hist, privacy, tinfo


def ensemble_privacy_extra(plan: EnsemblePlan, ledger: EnsembleLedger, info: dict) -> dict:
    """The figures an ensemble transcription's report carries."""
    per = plan.sensitivity / math.sqrt(plan.batch_size)
    return {"teachers": plan.teachers, "teacher_partition": info["partition"], "teacher_alpha": info["alpha"],
            "assignment_fingerprint": info["assignment_fingerprint"], "teacher_capacity": info["capacity"],
            "teacher_capacity_from": info["capacity_from"], "teacher_model": info["teacher"],
            "unit_definition": UNIT_DEFINITIONS[plan.unit],
            "mechanism_per_query": ("mean of the teachers' normalized logit gradients + Gaussian noise"
                                    if plan.mode == "data" else "GNMax: vote histogram + Gaussian noise, argmax"),
            "per_answer_sensitivity": per, "iteration_sensitivity": plan.sensitivity,
            "iteration_noise_multiplier": plan.z, "noise_std": plan.std,
            "query_iterations": ledger.steps, "queries": ledger.steps * plan.batch_size,
            "planned_query_iterations": plan.query_iterations,
            "composition": "sequential over query iterations, no subsampling"}
