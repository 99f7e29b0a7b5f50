"""``rmia``: the Robust Membership Inference Attack of Zarifzadeh, Liu & Shokri (ICML 2024).

Signal: Pr(x | theta) = softmax probability of the true label (mean over query views).

Reference models: the first ``n_references`` of the cell's shared zoo (``bench/lib/membership/references.py``;
1–4 in the paper's low-cost setting). Population samples z: ``n_population`` images of the test
split (non-members of the target and of every reference; never used to select anything).

* ``offline`` (default): Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2 with Pr_OUT(x) the mean over
  the references that did not train on x; Pr(z) likewise from all references (z is OUT for all).
  Back-conversion: the zoo's keep masks come in complementary pairs (``bench/lib/membership/references.py``),
  so with ``n_references`` >= 2 every evaluated x is OUT for at least one reference and nothing is
  back-converted. Only an x that no reference is OUT for (in practice: ``n_references`` = 1 and x
  in that reference's training half) has its IN references' values back-converted to an OUT
  estimate by inverting the same approximation, Pr_OUT = (p + a - 1) / a (undefined at a = 0,
  where a = 0.3 is used in this inversion), because such an x would otherwise have no OUT signal at all. This rule is this
  project's choice; it is not claimed to match ML Privacy Meter, which applies its own conversion
  in other cases. ``a`` is tuned on the references only: reference 0 plays the target and the
  other references its references, and the ``a`` in {0, 0.1, ..., 1} with the best AUC on the
  candidate pool is kept (no reference is back-converted while tuning). The target's membership
  labels are never used.
* ``online``: Pr(x) = mean over all references (IN and OUT), Pr(z) = mean over all references.

Score(x) = fraction of z with LR(x, z) = [Pr(x|theta)/Pr(x)] / [Pr(z|theta)/Pr(z)] > gamma
(gamma = 1). Ties of this fraction (many x above every z) are broken by Pr(x|theta)/Pr(x) itself,
an increment below 1/|z| that never reorders distinct fractions: for gamma = 1 the fraction is
a monotone function of that ratio, so the tie-break only restores resolution at low FPR.
The other mode is reported as ``<mode>_auc`` etc. at no extra cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.metrics import membership_metrics
from bench.lib.membership.references import (
    SUMMARY_METRICS,
    balanced_eval_sets,
    eval_split,
    fit_references,
    population_split,
    summarize,
    true_class_prob,
    view_logits,
)

A_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class RMIAConfig:
    #: reference models (the paper's low-cost regime is 1-4)
    n_references: int = 2
    mode: Literal["offline", "online"] = "offline"
    #: offline: fixed a in [0, 1]; None tunes it on the references (never on the target)
    offline_a: Optional[float] = None
    gamma: float = 1.0
    #: population samples z drawn from the test split
    n_population: int = 1000
    augment: Literal["none", "shift"] = "none"
    #: members and non-members evaluated (each)
    n_eval: int = 1000
    reference_seed: int = 0
    n_boot: int = 1000

    def validate(self):
        if self.n_references < 1:
            raise BenchError("rmia: n_references must be >= 1")
        if self.mode == "online" and self.n_references < 2:
            raise BenchError("rmia: online mode needs n_references >= 2")
        if self.offline_a is not None and not 0 <= self.offline_a <= 1:
            raise BenchError("rmia: offline_a must be in [0, 1]")
        if self.gamma <= 0:
            raise BenchError("rmia: gamma must be positive")
        if self.n_population < 1:
            raise BenchError("rmia: n_population must be >= 1")


def _backconvert(p: np.ndarray, a: float) -> np.ndarray:
    # ((1 + a) P_out + (1 - a)) / 2 = (P_out + P_in) / 2  =>  P_out = (P_in + a - 1) / a
    return (p + a - 1) / a if a > 0 else (p - 0.7) / 0.3


def pr_x(ref_p: np.ndarray, keep: np.ndarray, *, offline: bool, a: float) -> np.ndarray:
    """Pr(x) from the references' true-class probabilities ``ref_p`` (R, n) and keep (R, n)."""
    if not offline:
        return ref_p.mean(0)
    out = ~keep
    n_out = out.sum(0)
    mean_out = np.where(n_out > 0, (ref_p * out).sum(0) / np.maximum(n_out, 1), 0.0)
    if (n_out == 0).any():  # no OUT reference: back-convert the IN ones
        conv = _backconvert(ref_p, a).mean(0)
        mean_out = np.where(n_out > 0, mean_out, conv)
    return (1 + a) / 2 * mean_out + (1 - a) / 2


def pr_z(ref_pz: np.ndarray, *, offline: bool, a: float) -> np.ndarray:
    m = ref_pz.mean(0)
    return (1 + a) / 2 * m + (1 - a) / 2 if offline else m


def rmia_scores(p_x: np.ndarray, prx: np.ndarray, p_z: np.ndarray, prz: np.ndarray, gamma: float = 1.0,
                tie_break: bool = True) -> np.ndarray:
    """Fraction of z with LR(x, z) > gamma (+ a sub-1/|z| tie-break by the x ratio)."""
    eps = 1e-30
    rx = p_x / np.maximum(prx, eps)
    rz = p_z / np.maximum(prz, eps)
    # LR(x, z) > gamma  <=>  rx > gamma * rz ; count via sorting
    thr = np.sort(gamma * rz)
    frac = np.searchsorted(thr, rx, side="left") / len(thr)
    if not tie_break:
        return frac
    from scipy.stats import rankdata  # imported here: keeps the CLI start-up torch-only

    r = (rankdata(rx) - 1) / len(rx)  # in [0, 1)
    return frac + r / (2 * len(thr))


@register_attack("rmia")
class RMIA(Attack):
    """Robust Membership Inference Attack (Zarifzadeh et al. 2024), 1-4 references, gamma = 1."""

    Config = RMIAConfig
    kind = "membership"
    metrics = (*SUMMARY_METRICS,
               # online_*: only with n_references >= 2
               "offline_a", "offline_auc", "offline_tpr_at_1%fpr", "offline_tpr_at_0.1%fpr", "offline_balanced_acc",
               "online_auc", "online_tpr_at_1%fpr", "online_tpr_at_0.1%fpr", "online_balanced_acc", *CLIENT_VIEW_METRICS)
    summary = ("auc", "tpr_at_1%fpr", "eps_lb")
    paper = "Zarifzadeh, Liu, Shokri: Low-Cost High-Power Membership Inference Attacks, ICML 2024"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        refs = fit_references(ctx, c.n_references, c.reference_seed)
        members, nonmembers = balanced_eval_sets(ctx.task, c.n_eval, ctx.seed)
        ev, labels = eval_split(members, nonmembers)
        pop, holdout = population_split(ctx.task, c.n_population, ctx.seed,
                                        holdout=c.n_population if c.offline_a is None else 0)

        def sig(model, split):
            return true_class_prob(view_logits(model, split, ctx.device, c.augment), split.y).mean(1)

        keep = refs.keep_for(ev.index)
        px = sig(release.model, ev)
        pz = sig(release.model, pop)
        ref_px = np.stack([sig(r.model, ev) for r in refs.releases])
        ref_pz = np.stack([sig(r.model, pop) for r in refs.releases])

        a, tuning = self._a(c, ctx, refs, ref_pz, holdout, sig)
        extra = {"offline_a": float(a)}
        headline = None
        for mode in ("offline", "online"):
            if mode == "online" and c.n_references < 2:
                continue
            off = mode == "offline"
            s = rmia_scores(px, pr_x(ref_px, keep, offline=off, a=a), pz, pr_z(ref_pz, offline=off, a=a), c.gamma)
            if mode == c.mode:
                headline = s
            m = membership_metrics(s, labels)
            for k in ("auc", "tpr_at_1%fpr", "tpr_at_0.1%fpr", "balanced_acc"):
                extra[f"{mode}_{k}"] = m[k]
        info = {"mode": c.mode, "gamma": c.gamma, "offline_a": a, "a_tuning_auc": tuning,
                "population": "test split", "signal": "softmax probability of the true label"}
        return summarize(ctx, release, headline, labels, n_boot=c.n_boot, evaluated=ev, refs=refs, started=t0,
                         extra_metrics=extra, extra_arrays={"eval_rows": ev.index.astype(np.int64)}, info=info)

    @staticmethod
    def _a(c, ctx, refs, ref_pz, holdout, sig) -> tuple[float, dict]:
        """Tune a on references and public data only.

        Reference 0 plays the target; the others are its references. Positives: the pool examples
        reference 0 trained on (its complement partner, reference 1, is OUT on all of them);
        negatives: test-split images held out from z (OUT for every model). No reference is ever
        back-converted here, so the tuning is not biased by which references trained on what.
        """
        if c.offline_a is not None:
            return float(c.offline_a), {}
        if len(refs) < 2 or len(holdout) == 0:
            return 0.3, {"note": "nothing to tune on; a = 0.3 (ML Privacy Meter's default)"}
        pool = ctx.task.candidate_pool()
        pos = pool.subset(np.flatnonzero(refs.keep[0]))
        n_pos = min(len(pos), len(holdout))
        pos = pos.subset(np.arange(n_pos))
        others = refs.releases[1:]
        p_pos = sig(refs.releases[0].model, pos)
        p_neg = sig(refs.releases[0].model, holdout)
        o_pos = np.stack([sig(r.model, pos) for r in others])
        o_neg = np.stack([sig(r.model, holdout) for r in others])
        keep_pos = refs.keep_for(pos.index)[1:]
        keep_neg = np.zeros_like(o_neg, dtype=bool)
        p_x = np.r_[p_pos, p_neg]
        o_x = np.concatenate([o_pos, o_neg], axis=1)
        k_x = np.concatenate([keep_pos, keep_neg], axis=1)
        labels = np.r_[np.ones(len(p_pos)), np.zeros(len(p_neg))].astype(int)
        aucs = {}
        for a in A_GRID:
            s = rmia_scores(p_x, pr_x(o_x, k_x, offline=True, a=a), ref_pz[0],
                            pr_z(ref_pz[1:], offline=True, a=a), c.gamma)
            aucs[str(a)] = membership_metrics(s, labels)["auc"]
        best = max(A_GRID, key=lambda a: (aucs[str(a)], -a))
        return float(best), aucs
