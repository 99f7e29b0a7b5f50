"""``label-only``: the data-augmentation label-only attack of Choquette-Choo, Tramer, Carlini &
Papernot (ICML 2021).

The attacker sees only the predicted **label**. It queries the target on augmented copies of
(x, y): the image itself, its translations by (dx, dy) with |dx| + |dy| = d for d = 1..``max_shift``
(4 d images per distance, zero fill; the paper's translation set), and, when ``rotation`` > 0, its
rotations by +-``rotation`` degrees. The feature is the binary vector "query classified as y".

* ``n_shadows: 0``: score = the number of correctly classified queries (a threshold attack that
  needs no reference model; the gap attack is the special case of one query).
* ``n_shadows > 0``: a logistic-regression attack model trained on the correctness vectors of
  shadow models (the first releases of the cell's shared reference zoo, on the whole candidate
  pool, labelled by their keep masks), as the paper trains its attack model on shadow models.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.references import (
    SUMMARY_METRICS,
    balanced_eval_sets,
    eval_split,
    fit_references,
    rotate_views,
    shift_views,
    summarize,
)
from bench.lib.train import predict_logits


@dataclass
class LabelOnlyConfig:
    #: translations up to this Manhattan distance (0: none)
    max_shift: int = 2
    #: rotations by +- this many degrees (0: none)
    rotation: float = 10.0
    #: shadow models for a trained attack model (0: count of correct queries, no reference model)
    n_shadows: int = 2
    n_eval: int = 1000
    reference_seed: int = 0
    n_boot: int = 1000

    def validate(self):
        if self.max_shift < 0 or self.rotation < 0 or self.n_shadows < 0:
            raise BenchError("label-only: max_shift, rotation and n_shadows must be >= 0")


def correctness(model, split, device, max_shift: int, rotation: float) -> np.ndarray:
    """(n, queries) 0/1: is each augmented query classified as the true label?"""
    views = shift_views(split.x, max_shift) if max_shift > 0 else [split.x]
    if rotation > 0:
        views += rotate_views(split.x, rotation)
    out = []
    for v in views:
        pred = predict_logits(model, v, device).argmax(1)
        out.append((pred == split.y).numpy())
    return np.stack(out, axis=1).astype(np.float64)


@register_attack("label-only")
class LabelOnly(Attack):
    """Label-only data-augmentation attack (Choquette-Choo et al. 2021)."""

    Config = LabelOnlyConfig
    kind = "membership"
    metrics = (*SUMMARY_METRICS,
               "queries", *CLIENT_VIEW_METRICS)
    summary = ()
    paper = "Choquette-Choo, Tramer, Carlini, Papernot: Label-Only Membership Inference Attacks, ICML 2021"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        members, nonmembers = balanced_eval_sets(ctx.task, c.n_eval, ctx.seed)
        ev, labels = eval_split(members, nonmembers)
        with torch.no_grad():
            feats = correctness(release.model, ev, ctx.device, c.max_shift, c.rotation)
        refs = None
        if c.n_shadows == 0:
            scores = feats.sum(1)
            rule = "count of correctly classified queries"
        else:
            from sklearn.linear_model import LogisticRegression

            refs = fit_references(ctx, c.n_shadows, c.reference_seed)
            pool = ctx.task.candidate_pool()
            x_train = np.concatenate([correctness(r.model, pool, ctx.device, c.max_shift, c.rotation)
                                      for r in refs.releases])
            y_train = np.concatenate([k.astype(int) for k in refs.keep])
            if len(np.unique(y_train)) < 2 or x_train.std() == 0:
                scores = feats.sum(1)
                rule = "count (shadow features constant)"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = LogisticRegression(max_iter=1000).fit(x_train, y_train)
                scores = m.decision_function(feats)
                rule = "logistic regression on shadow correctness vectors"
        info = {"queries": int(feats.shape[1]), "rule": rule, "max_shift": c.max_shift, "rotation": c.rotation}
        return summarize(ctx, release, scores, labels, n_boot=c.n_boot, evaluated=ev, refs=refs, started=t0,
                         extra_metrics={"queries": float(feats.shape[1])},
                         extra_arrays={"eval_rows": ev.index.astype(np.int64)}, info=info)
