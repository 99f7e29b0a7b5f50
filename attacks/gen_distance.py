"""``gen-distance``: membership inference against a released generator by the distance to the
closest synthetic sample.

The attacker draws ``n_synthetic`` samples from the released generator and scores every
candidate image x by ``-min_j ||x - g_j||_2`` (Euclidean distance in pixel space, images in
[0, 1]): a generator that memorised its training images puts samples close to members. This is
the distance-to-closest-record attack of the synthetic-data literature (e.g. Hilprecht, Härterich
& Bernau, PETS 2019, "Monte Carlo and Reconstruction Membership Inference Attacks against
Generative Models"; Chen, Yu, Zhang & Fritz, CCS 2020, "GAN-Leaks", full black-box attack), here
with the project's protocol: an attacker tells member images from non-members using the
generator's output, reporting privacy loss = (P - 0.5) / 0.5.

Evaluation set: the shared balanced set of every membership attack (``n_eval`` members and as
many non-members, ``balanced_eval_sets``). Metrics: the membership summary (AUC, balanced
accuracy and advantage at the best threshold, TPR at 0.1 % / 1 % FPR, bootstrap intervals, the
Clopper-Pearson epsilon lower bound) plus

* ``P`` (``heldout_balanced_acc``): the evaluation set is split in two stratified halves; the
  threshold with the best balanced accuracy on one half is applied to the other, and vice versa
  (2-fold); P is the mean of the two held-out balanced accuracies (TPR + TNR) / 2. No membership
  label of an example is used to pick the threshold applied to it.
* ``privacy_loss`` = (P - 0.5) / 0.5 (0 = chance, 1 = perfect; may be slightly negative by
  chance).

A release without a generator is skipped with the reason in ``AttackResult.info["skipped"]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.generators import (
    generator_of,
    knn_distances,
    privacy_loss_2fold,
    sample_synthetic,
    skipped,
    synthetic_seed,
)
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.references import SUMMARY_METRICS, balanced_eval_sets, eval_split, summarize


@dataclass
class GenDistanceConfig:
    #: synthetic samples drawn from the released generator (N)
    n_synthetic: int = 2000
    #: members and non-members evaluated (each)
    n_eval: int = 1000
    n_boot: int = 1000
    #: seed offset of the synthetic draw (the draw is seeded by the cell seed and this)
    sample_seed: int = 0

    def validate(self):
        if self.n_synthetic < 1:
            raise BenchError("gen-distance: n_synthetic must be >= 1")
        if self.n_eval < 2:
            raise BenchError("gen-distance: n_eval must be >= 2")


@register_attack("gen-distance")
class GenDistance(Attack):
    """Membership inference on a released generator: distance to the closest synthetic sample."""

    Config = GenDistanceConfig
    kind = "generator"
    metrics = (*SUMMARY_METRICS,
               "heldout_balanced_acc", "privacy_loss", "n_synthetic", "mean_distance_members",
               "mean_distance_nonmembers", *CLIENT_VIEW_METRICS)
    summary = ()
    paper = ("Hilprecht, Härterich, Bernau, PETS 2019; Chen, Yu, Zhang, Fritz (GAN-Leaks), CCS 2020: "
             "distance to the closest synthetic sample")

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        g = generator_of(release)
        if g is None:
            return skipped(ctx, "gen-distance", release)
        members, nonmembers = balanced_eval_sets(ctx.task, c.n_eval, ctx.seed)
        ev, labels = eval_split(members, nonmembers)
        synth = sample_synthetic(g, c.n_synthetic, synthetic_seed(ctx.seed, c.sample_seed))
        d = knn_distances(ev.x, synth.x, k=1)[:, 0]
        scores = -d
        extra = privacy_loss_2fold(scores, labels, ctx.seed)
        extra["n_synthetic"] = float(len(synth))
        extra["mean_distance_members"] = float(d[labels == 1].mean())
        extra["mean_distance_nonmembers"] = float(d[labels == 0].mean())
        info = {"score": "-min_j ||x - g_j||_2 (pixels in [0, 1])",
                "P": "mean held-out balanced accuracy, 2-fold over stratified halves"}
        return summarize(ctx, release, scores, labels, n_boot=c.n_boot, evaluated=ev, refs=None, started=t0,
                         extra_metrics=extra, extra_arrays={"eval_rows": ev.index.astype(np.int64)}, info=info)
