"""Uncertainty for membership metrics: stratified bootstrap confidence intervals, and the one
summary every membership attack reports.

:func:`bootstrap_ci` resamples members and non-members separately with replacement (the two
sample sizes stay fixed, as in the evaluation design) and recomputes AUC, balanced accuracy,
advantage and TPR at 0.1 % / 1 % FPR on every resample; the interval is the percentile interval.
It is vectorised: all resamples share one sort of the scores, the ROC of each resample is a
cumulative sum of its resampling counts over the distinct score values, so 1 000 resamples of
2 000 scores take well under a second.

The bootstrap describes sampling variability of the *evaluation set* for a fixed target model;
it says nothing about the variability over target models (train several seeds for that) and is
unreliable for TPR at an FPR below about 10 / n_nonmembers (too few false positives to resample).

:func:`membership_summary` = point estimates (:func:`bench.lib.membership.metrics.membership_metrics`) +
bootstrap intervals (``<metric>_ci_lo`` / ``<metric>_ci_hi``) + the Clopper–Pearson epsilon lower
bound (``eps_lb``, ``eps_lb_max_certifiable``, :func:`bench.lib.audit.bounds.eps_lower_bound`) + the
one-run bound of Steinke et al. on the same guesses (``eps_lb_one_run``).
"""

from __future__ import annotations

import numpy as np

from bench.lib.audit.bounds import eps_lower_bound, one_run_eps_lower_bound
from bench.lib.membership.metrics import membership_metrics

CI_METRICS = ("auc", "balanced_acc", "advantage", "tpr_at_0.1%fpr", "tpr_at_1%fpr")


def _check(scores, labels):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(int).ravel()
    if scores.shape != labels.shape:
        raise ValueError("scores and labels must have the same length")
    if labels.min() == labels.max():
        raise ValueError("need both members (1) and non-members (0)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores, labels


def roc_metrics_from_counts(pos_counts: np.ndarray, neg_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of ROC curves given per-distinct-score counts, scores in **descending** order.

    ``pos_counts``/``neg_counts``: (B, K) member / non-member counts at each of K distinct score
    values (highest first) for B samples. Every threshold is considered (no dropped points).
    """
    pos_counts = np.atleast_2d(pos_counts).astype(np.float64)
    neg_counts = np.atleast_2d(neg_counts).astype(np.float64)
    tp = np.cumsum(pos_counts, axis=1)
    fp = np.cumsum(neg_counts, axis=1)
    tpr = np.concatenate([np.zeros((len(tp), 1)), tp / tp[:, -1:]], axis=1)
    fpr = np.concatenate([np.zeros((len(fp), 1)), fp / fp[:, -1:]], axis=1)
    auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    adv = np.max(tpr - fpr, axis=1)
    out = {"auc": auc, "balanced_acc": 0.5 * (1 + adv), "advantage": adv}
    rows = np.arange(len(fpr))
    for name, t in (("tpr_at_0.1%fpr", 1e-3), ("tpr_at_1%fpr", 1e-2)):
        # the ROC with straight segments at FPR = t (ties split at random: bench.lib.membership.metrics.tpr_at_fpr)
        i = np.sum(fpr <= t, axis=1) - 1  # fpr[:, 0] = 0, so i >= 0
        j = np.minimum(i + 1, fpr.shape[1] - 1)
        f0, f1, t0, t1 = fpr[rows, i], fpr[rows, j], tpr[rows, i], tpr[rows, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(f1 > f0, (t1 - t0) / (f1 - f0), 0.0)
        out[name] = t0 + (t - f0) * slope
    return out


def roc_metrics(scores, labels) -> dict[str, float]:
    """The metrics of :func:`roc_metrics_from_counts` for one score vector (all thresholds)."""
    scores, labels = _check(scores, labels)
    uniq, inv = np.unique(-scores, return_inverse=True)  # ascending in -score = descending score
    pos = np.bincount(inv[labels == 1], minlength=len(uniq))
    neg = np.bincount(inv[labels == 0], minlength=len(uniq))
    return {k: float(v[0]) for k, v in roc_metrics_from_counts(pos, neg).items()}


def bootstrap_ci(scores, labels, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                 chunk: int = 250) -> dict[str, tuple[float, float]]:
    """Stratified percentile-bootstrap intervals for :data:`CI_METRICS`."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    scores, labels = _check(scores, labels)
    uniq, inv = np.unique(-scores, return_inverse=True)
    k = len(uniq)
    gpos, gneg = inv[labels == 1], inv[labels == 0]
    rng = np.random.default_rng(seed)
    vals: dict[str, list] = {m: [] for m in CI_METRICS}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rows = np.arange(b)[:, None] * k
        ip = gpos[rng.integers(0, len(gpos), size=(b, len(gpos)))]
        ineg = gneg[rng.integers(0, len(gneg), size=(b, len(gneg)))]
        pos = np.bincount((rows + ip).ravel(), minlength=b * k).reshape(b, k)
        neg = np.bincount((rows + ineg).ravel(), minlength=b * k).reshape(b, k)
        for name, v in roc_metrics_from_counts(pos, neg).items():
            vals[name].append(v)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    out = {}
    for name, chunks in vals.items():
        v = np.concatenate(chunks)
        out[name] = (float(np.quantile(v, lo_q)), float(np.quantile(v, hi_q)))
    return out


def membership_summary(scores, labels, *, delta: float = 0.0, n_boot: int = 1000, confidence: float = 0.95,
                       seed: int = 0, one_run: bool = True) -> dict[str, float]:
    """Everything a membership attack reports, as floats (see the module docstring)."""
    scores, labels = _check(scores, labels)
    metrics = membership_metrics(scores, labels)
    if n_boot > 0:
        for name, (lo, hi) in bootstrap_ci(scores, labels, n_boot=n_boot, confidence=confidence, seed=seed).items():
            metrics[f"{name}_ci_lo"] = lo
            metrics[f"{name}_ci_hi"] = hi
    alpha = 1 - confidence
    audit = eps_lower_bound(scores[labels == 1], scores[labels == 0], alpha=alpha, delta=delta, seed=seed)
    metrics.update(audit.as_metrics("eps_lb"))
    if one_run:
        one = one_run_eps_lower_bound(scores, labels == 1, alpha=alpha, delta=delta, seed=seed)
        metrics["eps_lb_one_run"] = one.eps_lb
        metrics["eps_lb_one_run_max_certifiable"] = one.eps_max
    return metrics
