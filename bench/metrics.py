"""Leakage metrics: pure functions of attack scores (higher score = "more likely a member").

Membership metrics follow Carlini et al. (S&P 2022): AUC, TPR at fixed low FPR (0.1 %, 1 %),
balanced accuracy, and membership advantage TPR - FPR (Yeom et al. 2018). The accuracy and
advantage are the maximum over all thresholds of the ROC curve, i.e. an upper bound for an
attacker who could pick the threshold with knowledge of membership; they are labelled so.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR reachable with FPR <= target (0 if no threshold achieves it)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_metrics(scores, labels) -> dict[str, float]:
    """AUC, balanced accuracy (best threshold), advantage (best threshold), TPR@0.1%/1% FPR."""
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
