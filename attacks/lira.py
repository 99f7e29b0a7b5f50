"""``lira``: the Likelihood Ratio Attack of Carlini et al. (S&P 2022).

Signal: the logit-scaled confidence phi = log p_y - log(1 - p_y) (computed as
z_y - logsumexp_{j != y} z_j in float64), per query view (the image, and with ``augment: shift``
its four one-pixel translations; no mirror on digits).

References: the cell's shared zoo (``bench/lib/membership/references.py``): ``n_references`` releases of the
target's defense/config/epsilon on random halves of the candidate pool, each candidate IN for
half of them. For every evaluated example, its IN references give N(mu_in, s_in^2) and its OUT
references N(mu_out, s_out^2) per view (mu = median, as in the reference code).

* ``online``: score = mean over views of log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2).
* ``offline`` (OUT references only): the one-sided test against N(mu_out, s_out^2); with several
  views the score is the mean z-score (phi - mu_out) / s_out, which for one view ranks exactly as
  the paper's p-value 1 - Pr[Z > phi].
* ``fixed_variance``: one variance per view and side, pooled over examples (the mean of the
  per-example variances; the demo code's ``np.std(dat_in)`` also mixes in the spread *between*
  examples' means, which we do not), for few references.

All four variants come from the same references at no extra cost; the configured one is the
headline (``auc``, ``tpr_at_1%fpr``, ... with bootstrap CIs and epsilon lower bounds), the others are
reported as ``<variant>_auc``, ``<variant>_tpr_at_1%fpr``, ``<variant>_tpr_at_0.1%fpr``,
``<variant>_balanced_acc`` with variant in ``online``, ``online_fixed``, ``offline``,
``offline_fixed``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.metrics import membership_metrics
from bench.lib.membership.references import (
    SUMMARY_METRICS,
    balanced_eval_sets,
    eval_split,
    fit_references,
    logit_scaled_confidence,
    summarize,
    view_logits,
)


@dataclass
class LiRAConfig:
    #: reference (shadow) models; each candidate is IN for half of them
    n_references: int = 8
    mode: Literal["online", "offline"] = "online"
    #: one pooled variance instead of per-example variances (better with few references)
    fixed_variance: bool = True
    #: query views: the image only, or the image and its 4 one-pixel shifts (which hurt on the
    #: non-convolutional calibration MLP: 0.65 vs 0.71 AUC; they are for convolutional targets)
    augment: Literal["none", "shift"] = "none"
    #: members and non-members evaluated (each)
    n_eval: int = 1000
    #: selects the zoo (masks and training seeds); attacks with the same value share references
    reference_seed: int = 0
    #: bootstrap resamples for the confidence intervals (0: none)
    n_boot: int = 1000

    def validate(self):
        if self.n_references < 1:
            raise BenchError("lira: n_references must be >= 1")
        if self.mode == "online" and self.n_references < 2:
            raise BenchError("lira: online mode needs n_references >= 2 (IN and OUT models per example)")


def _masked(vals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """vals (R, n, V), mask (R, n) -> array with NaN where mask is False."""
    return np.where(mask[:, :, None], vals, np.nan)


def _gauss(vals: np.ndarray, mask: np.ndarray, fixed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (n, V) median and std over the references selected by ``mask``."""
    v = _masked(vals, mask)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmedian(v, axis=0)
        var = np.nanvar(v, axis=0)
    if fixed:
        pooled = np.nanmean(var, axis=0, keepdims=True)  # (1, V)
        var = np.broadcast_to(pooled, var.shape)
    sd = np.sqrt(np.maximum(var, 0)) + 1e-6
    return mu, sd


def lira_scores(target_phi: np.ndarray, ref_phi: np.ndarray, keep: np.ndarray, *, online: bool,
                fixed_variance: bool) -> np.ndarray:
    """LiRA scores from the target's phi (n, V), the references' phi (R, n, V) and keep (R, n).

    Online examples that no reference trained on (possible with an odd number of references)
    fall back to their offline statistic; examples with no usable reference at all score 0.
    """
    from scipy import stats  # imported here: keeps the CLI start-up torch-only
    mu_out, sd_out = _gauss(ref_phi, ~keep, fixed_variance)
    z_out = (target_phi - mu_out) / sd_out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if not online:
            s = np.nanmean(z_out, axis=1)
        else:
            mu_in, sd_in = _gauss(ref_phi, keep, fixed_variance)
            llr = stats.norm.logpdf(target_phi, mu_in, sd_in) - stats.norm.logpdf(target_phi, mu_out, sd_out)
            s = np.nanmean(llr, axis=1)
            miss = ~np.isfinite(s)
            if miss.any():
                s[miss] = np.nanmean(z_out[miss], axis=1)
    return np.where(np.isfinite(s), s, 0.0)


VARIANTS = {"online": (True, False), "online_fixed": (True, True), "offline": (False, False),
            "offline_fixed": (False, True)}


@register_attack("lira")
class LiRA(Attack):
    """Likelihood Ratio Attack (Carlini et al. 2022): online/offline, fixed-variance option."""

    Config = LiRAConfig
    kind = "membership"
    metrics = (*SUMMARY_METRICS,
               # online_*: only with n_references >= 2
               "online_auc", "online_tpr_at_1%fpr", "online_tpr_at_0.1%fpr", "online_balanced_acc",
               "online_fixed_auc", "online_fixed_tpr_at_1%fpr", "online_fixed_tpr_at_0.1%fpr",
               "online_fixed_balanced_acc", "offline_auc", "offline_tpr_at_1%fpr", "offline_tpr_at_0.1%fpr",
               "offline_balanced_acc", "offline_fixed_auc", "offline_fixed_tpr_at_1%fpr",
               "offline_fixed_tpr_at_0.1%fpr", "offline_fixed_balanced_acc",
               "in_refs_per_example", *CLIENT_VIEW_METRICS)
    summary = ("auc", "tpr_at_1%fpr")
    paper = "Carlini, Chien, Nasr, Song, Terzis, Tramer: Membership Inference Attacks From First Principles, S&P 2022"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        refs = fit_references(ctx, c.n_references, c.reference_seed)
        members, nonmembers = balanced_eval_sets(ctx.task, c.n_eval, ctx.seed)
        ev, labels = eval_split(members, nonmembers)
        keep = refs.keep_for(ev.index)  # (R, n)
        target_phi = logit_scaled_confidence(view_logits(release.model, ev, ctx.device, c.augment), ev.y)
        ref_phi = np.stack([logit_scaled_confidence(view_logits(r.model, ev, ctx.device, c.augment), ev.y)
                            for r in refs.releases])
        extra = {}
        headline = None
        for name, (online, fixed) in VARIANTS.items():
            if online and c.n_references < 2:
                continue
            s = lira_scores(target_phi, ref_phi, keep, online=online, fixed_variance=fixed)
            if online == (c.mode == "online") and fixed == c.fixed_variance:
                headline = s
            m = membership_metrics(s, labels)
            for k in ("auc", "tpr_at_1%fpr", "tpr_at_0.1%fpr", "balanced_acc"):
                extra[f"{name}_{k}"] = m[k]
        extra["in_refs_per_example"] = float(keep.sum(0).mean())
        info = {"variant": f"{c.mode}{'_fixed' if c.fixed_variance else ''}", "augment": c.augment,
                "signal": "logit-scaled confidence"}
        return summarize(ctx, release, headline, labels, n_boot=c.n_boot, evaluated=ev, refs=refs, started=t0,
                         extra_metrics=extra, extra_arrays={"eval_rows": ev.index.astype(np.int64)}, info=info)
