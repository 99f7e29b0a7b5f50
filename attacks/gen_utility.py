"""``gen-utility``: the utility matrix p1..p4 of a released generator, and p1 - p2.

The project's generator protocol (course slides, see ``docs/methods/generator-attacks.md``):
train a classifier on real (private) or generated data, test it on real or generated data:

======  ====================  =====================
metric  trained on            tested on
======  ====================  =====================
p1      real (members)        real (test split)
p2      synthetic             real (test split)
p3      real (members)        synthetic (held out)
p4      synthetic             synthetic (held out)
======  ====================  =====================

``p1_minus_p2`` = p1 - p2 is the accuracy lost to the generative process; p3 (does real data
explain the synthetic data?) and p4 (is the synthetic data internally consistent?) complete the
matrix. It is a report metric of the generator, not a membership attack (no scores, no epsilon
bound); it runs where the membership attacks run (classification-protocol release).

Labels of synthetic samples (``labels``): ``auto`` (default) uses a conditional generator's own
labels where it returns them (DataLens) and otherwise the **released student's** arg-max
prediction (``release.model``; DPSD, DPDFD, VAE-metric), the labels a downstream user of the
release would assign; ``student`` always uses the student. The source is recorded in
``info["label_source"]``. Both are post-processing of the release.

Classifier: one fixed recipe for all four cells (``arch``, default the 2-layer ``mlp``, Adam,
``epochs``, last epoch, no selection), trained on ``n_train`` real members (capped by the member
set) or as many synthetic samples; real test data = the official test split (capped by
``n_test``), synthetic test data = ``n_test`` further samples of a separate seed. Nothing is
selected on any test set. A release without a generator is skipped with the reason in
``AttackResult.info["skipped"]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.generators import generator_of, sample_synthetic, skipped, synthetic_seed
from bench.lib.models import build_model, spec_for
from bench.lib.tasks import Split
from bench.lib.train import accuracy, fit_classifier, predict_logits


@dataclass
class GenUtilityConfig:
    #: training-set size of both classifiers (real: members, capped by the member set)
    n_train: int = 5000
    #: test-set size (real: the official test split, capped; synthetic: fresh samples)
    n_test: int = 2000
    labels: Literal["auto", "student"] = "auto"
    arch: str = "mlp"
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 128
    sample_seed: int = 0

    def validate(self):
        if self.n_train < 10 or self.n_test < 10:
            raise BenchError("gen-utility: n_train and n_test must be >= 10")
        if self.epochs < 1:
            raise BenchError("gen-utility: epochs must be >= 1")


def _labelled(g, release, n: int, seed: int, mode: str, device) -> tuple[Split, str]:
    s = sample_synthetic(g, n, seed)
    if mode == "auto" and bool((s.y >= 0).all()):
        return s, "conditional generator"
    y = predict_logits(release.model, s.x, device).argmax(1).cpu().long()
    return Split(s.x, y, None), "released student (arg-max)"


def _train(task, train: Split, c: GenUtilityConfig, seed: int, device):
    torch.manual_seed(seed)
    model = build_model(spec_for(task, c.arch))
    gen = torch.Generator().manual_seed(seed)
    model, _ = fit_classifier(model, train, train.subset(np.arange(min(len(train), 200))), epochs=c.epochs, lr=c.lr,
                              batch_size=c.batch_size, device=device, generator=gen, select_on_val=False)
    return model


@register_attack("gen-utility")
class GenUtility(Attack):
    """Utility matrix of a released generator: p1..p4 (train real/synthetic x test real/synthetic), p1 - p2."""

    Config = GenUtilityConfig
    kind = "generator"
    metrics = ("p1", "p2", "p3", "p4", "p1_minus_p2", "n_train", "n_test_real", "n_test_synthetic",
               "synthetic_label_max_share", "attack_seconds")
    summary = ()
    paper = "project protocol (utility matrix p1..p4 of generated data, p1 - p2)"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        g = generator_of(release)
        if g is None:
            return skipped(ctx, "gen-utility", release)
        task = ctx.task
        rng = np.random.default_rng([int(ctx.seed), 0x0717])
        n_real = min(c.n_train, len(task.members))
        real_train = task.members.subset(np.sort(rng.choice(len(task.members), n_real, replace=False)))
        real_test = task.test.subset(np.sort(rng.choice(len(task.test), min(c.n_test, len(task.test)),
                                                        replace=False)))
        base = synthetic_seed(ctx.seed, c.sample_seed)
        syn_train, source = _labelled(g, release, n_real, base + 1, c.labels, ctx.device)
        syn_test, _ = _labelled(g, release, c.n_test, base + 2, c.labels, ctx.device)
        m_real = _train(task, real_train, c, ctx.seed * 31 + 1, ctx.device)
        m_syn = _train(task, syn_train, c, ctx.seed * 31 + 2, ctx.device)
        p = {"p1": accuracy(m_real, real_test, ctx.device), "p2": accuracy(m_syn, real_test, ctx.device),
             "p3": accuracy(m_real, syn_test, ctx.device), "p4": accuracy(m_syn, syn_test, ctx.device)}
        counts = np.bincount(syn_train.y.numpy(), minlength=task.num_classes) / len(syn_train)
        metrics = {**p, "p1_minus_p2": p["p1"] - p["p2"], "n_train": float(n_real), "n_test_real": float(len(real_test)),
                   "n_test_synthetic": float(len(syn_test)),
                   "synthetic_label_max_share": float(counts.max()),
                   "attack_seconds": float(time.time() - t0)}
        info = {"label_source": source, "classifier": c.arch, "epochs": c.epochs,
                "matrix": {"p1": "real->real", "p2": "synthetic->real", "p3": "real->synthetic",
                           "p4": "synthetic->synthetic"}}
        return AttackResult(metrics, {"synthetic_label_counts": counts.astype(np.float32)}, info)
