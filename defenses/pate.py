"""``pate``: PATE with Confident-GNMax (Papernot, Song, Mironov, Raghunathan, Talwar, Erlingsson,
"Scalable Private Learning with PATE", ICLR 2018, Algorithm 1; first PATE: Papernot et al. ICLR 2017).

1. The members are split into ``teachers`` disjoint shards (each member's teacher is a seeded
   function of its own dataset row, so adding or removing one member changes one shard); one
   teacher per shard. All teachers are one set of stacked tensors trained with batched matmuls
   (MLP teachers: the CPU scale-down of the paper's convnets). Shards are padded to the public
   slot capacity ceil(row range / teachers) and every teacher takes ceil(capacity /
   ``teacher_batch_size``) steps per epoch (:func:`teacher_batches_per_epoch`): the schedule never
   depends on the realised shard sizes, so the other teachers do not see a member come or go.
2. Unlabelled public queries are drawn, in a seeded order, from the task's **non-member pool**
   (never the test split): for query x the teachers' vote histogram n(x) is formed and
   Confident-GNMax answers it only if ``max_j n_j + N(0, sigma1^2) >= threshold * teachers``,
   with label ``argmax_j n_j + N(0, sigma2^2)``; otherwise it is left unlabelled.
3. The student is trained (supervised) on the answered queries and their noisy labels; the
   epoch is selected on the validation split (disjoint from the members: no privacy cost).

Privacy (unit ``example``, add/remove one member), **data-independent** (documented choice; the
paper's data-dependent smooth-sensitivity analysis is not implemented): one member changes one
teacher, hence one vote: the max count moves by at most 1 (threshold check = Gaussian mechanism,
multiplier sigma1) and the histogram by at most sqrt(2) in L2 (GNMax = Gaussian mechanism,
multiplier sigma2 / sqrt(2), i.e. RDP lambda / sigma2^2). Every submitted query pays the check,
every answered query also pays GNMax (adaptive composition; whether a query is answered is itself
an output of the check). dp_accounting's RDP accountant composes them; sigma1 = ``sigma_ratio`` x
sigma2 and sigma2 is calibrated so that ``max_queries`` checks and ``answers`` answers spend
exactly the target epsilon; the reported epsilon is the one of what was actually run.

Caveat on the pool: the answered queries become the student's training data, so they are
excluded from nothing downstream: membership attacks that draw their non-members from the same
pool see some of them; their rows are listed in ``info["query_rows"]`` (see docs/methods/pate.md).

``release.info`` holds only DP outputs, public quantities and non-member data (query rows, the
answered rows, the accuracy of the noisy answers against the non-member labels, the student's
curves on the validation split); noise-free statistics of the members (teacher losses, the
noise-free plurality vote's accuracy, the realised shard sizes) are not recorded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense, val_selection
from bench.lib.accounting import calibrate_gaussian_scale, gaussian_rdp_epsilon
from bench.lib.models import build_model, spec_for
from bench.lib.synthetic import partition, row_universe, shard_capacity, train_student
from bench.lib.synthetic.teachers import MLPClassifierEnsemble, teacher_batches_per_epoch
from bench.lib.tasks import Split
from bench.lib.train import seed_everything


def confident_gnmax(counts: torch.Tensor, threshold: float, sigma1: float, sigma2: float,
                    generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Papernot et al. 2018, Algorithm 1, on a batch of vote histograms (Q, K): answered mask
    (max count + N(0, sigma1^2) >= threshold) and labels argmax(counts + N(0, sigma2^2)) (-1 where
    not answered). Noise is drawn for every query whether answered or not (fixed seed usage)."""
    q, k = counts.shape
    n1 = torch.randn(q, generator=generator) * sigma1
    n2 = torch.randn(q, k, generator=generator) * sigma2
    answered = counts.max(1).values + n1 >= threshold
    labels = (counts + n2).argmax(1)
    return answered, torch.where(answered, labels, torch.full_like(labels, -1))


def gnmax_events(sigma2: float, sigma1: float, checks: int, answers: int) -> list[tuple[float, int]]:
    """Gaussian events (noise multiplier, count) of ``checks`` threshold checks (sensitivity 1) and
    ``answers`` GNMax answers (sensitivity sqrt 2)."""
    return [(sigma1, checks), (sigma2 / math.sqrt(2.0), answers)]


@dataclass
class PATEConfig:
    #: 1000 (not the paper's 250): with the data-independent bound the vote margin must be large
    #: against sigma2 in the hundreds (chosen on MNIST validation accuracy, docs/methods/pate.md)
    teachers: int = 1000
    teacher_hidden: int = 64
    teacher_epochs: int = 60
    teacher_batch_size: int = 32
    teacher_lr: float = 1e-3
    partition: Literal["record", "balanced"] = "record"
    #: queries submitted at most (threshold checks) and answers paid for
    max_queries: int = 6000
    answers: int = 2000
    #: threshold as a fraction of the teachers (the paper's T = 200 of 250), sigma1 / sigma2
    threshold: float = 0.8
    sigma_ratio: float = 3.75
    #: fixed sigma2 (then epsilon is whatever it spends, capped by stopping); None = calibrated
    sigma2: Optional[float] = None
    student_arch: str = "cnn"
    student_epochs: int = 30
    student_lr: float = 1e-3
    student_batch_size: int = 64

    def validate(self):
        if self.teachers <= 0 or self.max_queries <= 0 or self.answers <= 0:
            raise BenchError("pate: teachers, max_queries and answers must be positive")
        if not 0 < self.threshold <= 1 or self.sigma_ratio <= 0:
            raise BenchError("pate: threshold must be in (0, 1], sigma_ratio positive")


@register_defense("pate")
class PATE(Defense):
    """PATE: disjoint teachers, Confident-GNMax on non-member queries, student on the answers."""

    Config = PATEConfig
    privacy_unit = "example"
    paper = ("Papernot, Song, Mironov, Raghunathan, Talwar, Erlingsson, Scalable Private Learning with PATE, "
             "ICLR 2018")

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        seed_everything(ctx.seed)
        t0 = time.time()
        K = task.num_classes
        members = task.members
        N = c.teachers
        x = members.x.reshape(len(members), -1).float()
        universe = row_universe(task)
        shards = partition(np.asarray(members.index), members.y.numpy(), N, c.partition, ctx.seed, universe)
        # shards are padded to the public slot capacity (not the realised largest shard): the
        # teachers' schedule must not depend on the other members
        M = shard_capacity(universe, N)
        if max(len(s) for s in shards) > M:  # pragma: no cover - partition guarantees it
            raise BenchError("pate: a shard exceeds the slot capacity")
        pos = np.zeros((N, M), dtype=np.int64)
        mask = np.zeros((N, M), dtype=bool)
        for i, s in enumerate(shards):
            pos[i, :len(s)], mask[i, :len(s)] = s, True
        pos_t = torch.from_numpy(pos)
        gen = torch.Generator().manual_seed(ctx.seed * 7717 + 1)
        ens = MLPClassifierEnsemble(N, x.shape[1], K, c.teacher_hidden, gen, c.teacher_lr)
        ens.fit(x[pos_t], members.y[pos_t], torch.from_numpy(mask), epochs=c.teacher_epochs,
                batch_size=c.teacher_batch_size, generator=gen, progress=ctx.progress)
        t_teach = time.time() - t0
        # ---- from here on only the teachers' noisy votes are used ----
        pool = task.nonmembers
        q_rng = np.random.default_rng([ctx.seed, 7718])
        order = q_rng.permutation(len(pool))[:min(c.max_queries, len(pool))]
        queries = pool.subset(np.sort(order))
        counts = ens.votes(queries.x.reshape(len(queries), -1).float(), K)
        private = not math.isinf(ctx.epsilon)
        if private:
            if c.sigma2 is None:
                sigma2 = calibrate_gaussian_scale(
                    lambda s: gnmax_events(s, c.sigma_ratio * s, len(queries), c.answers), ctx.epsilon, ctx.delta)
            else:
                sigma2 = c.sigma2
            sigma1 = c.sigma_ratio * sigma2
        else:
            sigma1 = sigma2 = 0.0
        noise_rng = torch.Generator().manual_seed(ctx.seed * 7717 + 2)
        answered, labels = confident_gnmax(counts, c.threshold * N, sigma1, sigma2, noise_rng)
        # stop once the paid-for answers are used: later queries are never submitted
        ans_idx = torch.nonzero(answered).flatten()
        if len(ans_idx) > c.answers:
            last = int(ans_idx[c.answers - 1])
            answered[last + 1:] = False
            checks = last + 1
        else:
            checks = len(queries)
        ans_idx = torch.nonzero(answered).flatten().numpy()
        n_ans = len(ans_idx)
        if private:
            spent = gaussian_rdp_epsilon(gnmax_events(sigma2, sigma1, checks, n_ans), ctx.delta)
        else:
            spent = math.inf
        if n_ans < 2:
            raise BenchError(f"pate: only {n_ans} queries answered (sigma1 {sigma1:.1f}, threshold "
                             f"{c.threshold * N:.0f}); lower the threshold or raise the budget")
        train = Split(queries.x[ans_idx], labels[ans_idx].long(), queries.index[ans_idx])
        # diagnostic from DP outputs (answered set, noisy labels) and non-member labels only
        label_acc = float((labels[ans_idx] == queries.y[ans_idx]).float().mean())
        spec = spec_for(task, c.student_arch)
        torch.manual_seed(ctx.seed * 7717 + 3)
        student = build_model(spec)
        student, hist = train_student(student, train, task.val, epochs=c.student_epochs, lr=c.student_lr,
                                      batch_size=c.student_batch_size, device=ctx.device, seed=ctx.seed * 7717 + 4,
                                      progress=ctx.progress)
        privacy = PrivacyReport(
            spent, ctx.delta if private else 0.0, "example",
            "RDP (dp_accounting), data-independent" if private else "none (no noise)",
            "Confident-GNMax (threshold check + Gaussian noisy argmax) over disjoint teachers",
            {"teachers": N, "sigma1": sigma1, "sigma2": sigma2, "threshold": c.threshold * N, "checks": checks,
             "answered": n_ans, "max_queries": len(queries), "answers_budget": c.answers,
             "target_epsilon": ctx.epsilon, "partition": c.partition,
             "neighbouring": "add/remove one member (changes one teacher's vote)",
             "rdp_per_check": "lambda / (2 sigma1^2)", "rdp_per_answer": "lambda / sigma2^2"},
            val_selection("the student's epoch"))
        # only DP outputs, public quantities and non-member data: no noise-free statistic of the
        # members (teacher losses, noise-free vote accuracy, realised shard sizes)
        info = {"history": {"student": hist}, "selected_by": "val_acc",
                "selected_epoch": hist["selected_epoch"], "query_pool": "task.nonmembers (seeded order)",
                "query_rows": [int(r) for r in queries.index[:checks]],
                "answered_rows": [int(r) for r in queries.index[ans_idx]],
                "answer_label_accuracy": label_acc, "teacher_seconds": t_teach, "shard_capacity": M,
                "teacher_batches_per_epoch": teacher_batches_per_epoch(M, c.teacher_batch_size)}
        return Release({"model": student.cpu().eval()}, {"model": spec}, privacy, info)
