"""``gen-classifier``: a trained attacker classifier that tells member images from non-members
using features derived from a released generator's output.

The project's generator-privacy protocol (course slides, see ``docs/methods/generator-attacks.md``):
an attacker classifier is trained to tell real member data from other data; with P its accuracy,
privacy loss = (P - 0.5) / 0.5.

Features of an image x: its Euclidean pixel distances to the ``k`` closest of ``n_synthetic``
samples of the released generator, ascending, and their logarithms (2k features; the
distance-based features of the synthetic-data attacks of Hilprecht et al., PETS 2019 and
Chen et al.'s GAN-Leaks, CCS 2020, with the aggregation learned instead of fixed).

Protocol: the shared balanced evaluation set (``n_eval`` members and as many non-members) is
split in two stratified halves. A classifier (scikit-learn logistic regression or a small MLP,
inputs standardised) is trained on one half with its membership labels and scores the other
half, and vice versa (2-fold cross-fitting): every example's score comes from a classifier that
never saw its label. Metrics: the membership summary on the out-of-fold scores (AUC, TPR at low
FPR, bootstrap intervals, epsilon lower bound), ``heldout_balanced_acc`` = P, the mean over the two
folds of the balanced accuracy of the classifier's hard predictions (probability >= 0.5) on its
held-out half, and ``privacy_loss`` = (P - 0.5) / 0.5.

This attacker knows half of the membership labels (the evaluation protocol of the source
documents), a stronger position than the black-box attacks of ``docs/methods/membership.md``.
A release without a generator is skipped with the reason in ``AttackResult.info["skipped"]``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.generators import (
    balanced_accuracy,
    generator_of,
    halves,
    knn_distances,
    sample_synthetic,
    skipped,
    synthetic_seed,
)
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.references import SUMMARY_METRICS, balanced_eval_sets, eval_split, summarize


@dataclass
class GenClassifierConfig:
    #: synthetic samples drawn from the released generator
    n_synthetic: int = 2000
    #: distances to the k closest synthetic samples are the features
    k: int = 5
    attack_model: Literal["logreg", "mlp"] = "logreg"
    n_eval: int = 1000
    n_boot: int = 1000
    sample_seed: int = 0

    def validate(self):
        if self.n_synthetic < 1:
            raise BenchError("gen-classifier: n_synthetic must be >= 1")
        if not 1 <= self.k <= self.n_synthetic:
            raise BenchError("gen-classifier: k must be in [1, n_synthetic]")
        if self.n_eval < 4:
            raise BenchError("gen-classifier: n_eval must be >= 4")


def features(d: np.ndarray) -> np.ndarray:
    """(n, 2k): sorted k-NN distances and their logarithms."""
    return np.concatenate([d, np.log(d + 1e-6)], axis=1)


def make_model(kind: str, seed: int):
    from sklearn.linear_model import LogisticRegression  # imported here: keeps the CLI start-up torch-only
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        clf = LogisticRegression(max_iter=1000)
    else:
        clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=500, early_stopping=False, random_state=seed)
    return make_pipeline(StandardScaler(), clf)


def cross_fit(feats: np.ndarray, labels: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, float]:
    """Out-of-fold member probabilities (2-fold over stratified halves) and P, the mean held-out
    balanced accuracy of the hard predictions."""
    from sklearn.exceptions import ConvergenceWarning

    a, b = halves(labels, seed)
    scores = np.zeros(len(labels))
    accs = []
    for fit, ev in ((a, b), (b, a)):
        model = make_model(kind, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(feats[fit], labels[fit])
        p = model.predict_proba(feats[ev])[:, 1]
        scores[ev] = p
        accs.append(balanced_accuracy(p >= 0.5, labels[ev]))
    return scores, float(np.mean(accs))


@register_attack("gen-classifier")
class GenClassifier(Attack):
    """Attacker classifier on k-NN distances to a released generator's samples; privacy loss (P-0.5)/0.5."""

    Config = GenClassifierConfig
    kind = "generator"
    metrics = (*SUMMARY_METRICS,
               "heldout_balanced_acc", "privacy_loss", "n_synthetic", "k", *CLIENT_VIEW_METRICS)
    summary = ()
    paper = "project protocol (attacker classifier, privacy loss = (P - 0.5)/0.5); features after GAN-Leaks, CCS 2020"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        g = generator_of(release)
        if g is None:
            return skipped(ctx, "gen-classifier", release)
        members, nonmembers = balanced_eval_sets(ctx.task, c.n_eval, ctx.seed)
        ev, labels = eval_split(members, nonmembers)
        synth = sample_synthetic(g, c.n_synthetic, synthetic_seed(ctx.seed, c.sample_seed))
        d = knn_distances(ev.x, synth.x, k=c.k)
        scores, p = cross_fit(features(d), labels.astype(int), c.attack_model, ctx.seed)
        extra = {"heldout_balanced_acc": p, "privacy_loss": (p - 0.5) / 0.5, "n_synthetic": float(len(synth)),
                 "k": float(d.shape[1])}
        info = {"features": f"{d.shape[1]} nearest synthetic distances and their logs",
                "attack_model": c.attack_model, "protocol": "2-fold cross-fitting over stratified halves"}
        return summarize(ctx, release, scores, labels, n_boot=c.n_boot, evaluated=ev, refs=None, started=t0,
                         extra_metrics=extra, extra_arrays={"eval_rows": ev.index.astype(np.int64)}, info=info)
