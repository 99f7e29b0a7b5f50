"""Leakage metrics: pure functions of attack scores (higher score = "more likely a member").

Membership metrics follow Carlini et al. (S&P 2022): AUC, TPR at fixed low FPR (0.1 %, 1 %),
balanced accuracy, and membership advantage TPR - FPR (Yeom et al. 2018). The accuracy and
advantage are the maximum over all thresholds of the ROC curve, i.e. an upper bound for an
attacker who could pick the threshold with knowledge of membership; they are labelled so.
TPR at a fixed FPR is read on the ROC curve with straight segments between its points (a tie
group split at random), so tied scores count as chance (see :func:`tpr_at_fpr`).
"""

from __future__ import annotations

import numpy as np


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """TPR of the ROC curve at FPR = ``target``, the curve drawn through its points with straight
    segments (``fpr`` ascending, as :func:`sklearn.metrics.roc_curve` returns it).

    A segment is what a threshold inside a group of tied scores achieves when it classifies a
    random share of the group as members: ties count as chance, neither for nor against the
    attack. Reading only the ROC's vertices (the largest TPR with FPR <= target) would give a
    TPR below chance whenever a tie group straddles the target FPR (e.g. 0.0 for a model whose
    scores are all tied)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    i = int(np.searchsorted(fpr, target, side="right")) - 1
    if i < 0:
        return 0.0
    base = float(tpr[i])
    if i + 1 < len(fpr) and fpr[i + 1] > fpr[i]:
        base += (target - fpr[i]) * (tpr[i + 1] - tpr[i]) / (fpr[i + 1] - fpr[i])
    return float(base)


def membership_metrics(scores, labels) -> dict[str, float]:
    """AUC, balanced accuracy (best threshold), advantage (best threshold), TPR@0.1%/1% FPR."""
    from sklearn.metrics import roc_auc_score, roc_curve  # imported here: keeps the CLI start-up torch-only

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError("scores and labels must be 1-D arrays of the same length")
    if labels.min() == labels.max():
        raise ValueError("need both members (1) and non-members (0)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    fpr, tpr, _ = roc_curve(labels, scores)
    adv = float(np.max(tpr - fpr))
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "balanced_acc": 0.5 * (1.0 + adv),
        "advantage": adv,
        "tpr_at_0.1%fpr": tpr_at_fpr(fpr, tpr, 1e-3),
        "tpr_at_1%fpr": tpr_at_fpr(fpr, tpr, 1e-2),
        "n_members": float(labels.sum()),
        "n_nonmembers": float((1 - labels).sum()),
    }
