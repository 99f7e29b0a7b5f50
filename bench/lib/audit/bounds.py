"""Empirical privacy auditing: lower bounds on epsilon from membership scores.

Two statistics, both pure functions of scores (higher score = "more likely a member"):

:func:`eps_lower_bound` (Clopper–Pearson, hypothesis-testing view of DP)
    For an (epsilon, delta)-DP mechanism every test satisfies ``TPR <= e^eps FPR + delta`` and
    ``TNR <= e^eps FNR + delta`` (Kairouz et al. 2015; used for auditing by Jagielski et al.,
    NeurIPS 2020, and Nasr et al., S&P 2021). Replacing the rates with one-sided Clopper–Pearson
    bounds (TPR from below, FPR from above) gives a bound that holds with probability
    ``1 - alpha``. The thresholds tried are *fixed in advance as ranks*: the k-th largest
    non-member score and the k-th smallest member score for k on a geometric grid, and
    ``alpha`` is split over every bound computed (Bonferroni, two bounds per threshold). A
    threshold placed at the k-th largest non-member score has a true FPR distributed exactly as
    Beta(k, n - k + 1) (order statistics of a continuous distribution), which is the
    Clopper–Pearson upper bound for k - 1 observed false positives, so choosing thresholds this
    way is exact and not a data-snooping argmax; scores are first broken free of ties by an
    independent, seeded jitter smaller than the smallest gap (a randomised test is still a
    test). This avoids the uncorrected argmax over thresholds that the notes flag in
    ML Privacy Meter's one-run bound, and the invalid shortcut fixed in JAX-Privacy PR #270.

:func:`one_run_eps_lower_bound` (Steinke, Nasr & Jagielski, NeurIPS 2023)
    ``m`` canaries, each included independently with probability 1/2, one training run. The
    auditor guesses "in" for its ``k_pos`` highest scores, "out" for its ``k_neg`` lowest and
    abstains on the rest (tied scores are put in a seeded random order independent of the
    inclusion bits, so ties and the input order can never count for the auditor); with ``r`` guesses of which ``v`` are right, under (eps, delta)-DP
    ``P[v' >= v] <= P[Bin(r, q) >= v] + 2 m delta max_i (1/i) P[v > Bin(r, q) >= v - i]``,
    ``q = e^eps / (1 + e^eps)`` (their Theorem 3.1 / Algorithm 2). The bound is the largest eps
    whose p-value stays below ``alpha``; a sweep over (k_pos, k_neg) is Bonferroni-corrected.

Both report, beside the bound, the largest bound the sample size could certify at all (perfect
separation), because with a few hundred or thousand examples no audit can certify much above
eps ~ 5 even against a non-private model (see docs/methods/membership.md).

Caveat: :func:`eps_lower_bound` on the per-example scores of *one* trained model treats the
examples as independent trials, as ML Privacy Meter and most one-model MIA reports do; the
statement that is rigorous for one training run is Steinke et al.'s, which needs independent
inclusion coin flips (canaries). Both are reported; neither replaces the accountant's epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "clopper_pearson", "cp_lower", "cp_upper", "rank_grid", "eps_from_rates", "eps_lower_bound",
    "max_certifiable_eps", "AuditResult", "one_run_p_value", "one_run_eps", "one_run_eps_lower_bound",
    "one_run_max_certifiable_eps",
]


# --------------------------------------------------------------------------------------------
# Clopper–Pearson
# --------------------------------------------------------------------------------------------

def cp_upper(k, n: int, alpha: float):
    """One-sided upper Clopper–Pearson bound for a binomial rate with ``k`` successes of ``n``
    at confidence ``1 - alpha``: ``BetaInv(1 - alpha; k + 1, n - k)``, 1 when ``k == n``."""
    from scipy import stats  # imported here: keeps the CLI start-up torch-only

    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = np.where(k >= n, 1.0, stats.beta.ppf(1.0 - alpha, k + 1, np.maximum(n - k, 1e-300)))
    return out if out.ndim else float(out)


def cp_lower(k, n: int, alpha: float):
    """One-sided lower Clopper–Pearson bound: ``BetaInv(alpha; k, n - k + 1)``, 0 when ``k == 0``."""
    from scipy import stats  # imported here: keeps the CLI start-up torch-only

    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = np.where(k <= 0, 0.0, stats.beta.ppf(alpha, np.maximum(k, 1e-300), n - k + 1))
    return out if out.ndim else float(out)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 - alpha) Clopper–Pearson interval (alpha/2 in each tail)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    return float(cp_lower(k, n, alpha / 2)), float(cp_upper(k, n, alpha / 2))


# --------------------------------------------------------------------------------------------
# Multi-threshold CP audit
# --------------------------------------------------------------------------------------------

def rank_grid(n: int, size: int = 30) -> np.ndarray:
    """Ranks 1..n on a geometric grid of at most ``size`` values (always includes 1 and n)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    g = np.unique(np.round(np.geomspace(1, n, num=min(size, n))).astype(np.int64))
    return np.unique(np.r_[1, g, n])


def _log_ratio(num, den):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((num > 0) & (den > 0), np.log(np.maximum(num, 1e-300)) - np.log(np.maximum(den, 1e-300)),
                        -np.inf)


def eps_from_rates(tpr_lb, fpr_ub, delta: float = 0.0):
    """``max(ln((TPR - delta)/FPR), ln((1 - FPR - delta)/(1 - TPR)))`` from bounded rates (>= 0)."""
    tpr_lb = np.asarray(tpr_lb, dtype=np.float64)
    fpr_ub = np.asarray(fpr_ub, dtype=np.float64)
    a = _log_ratio(tpr_lb - delta, fpr_ub)
    b = _log_ratio(1.0 - fpr_ub - delta, 1.0 - tpr_lb)
    out = np.maximum(np.maximum(a, b), 0.0)
    return out if out.ndim else float(out)


def _jitter(members: np.ndarray, nonmembers: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Break ties with an independent jitter below half the smallest gap between distinct scores."""
    allv = np.unique(np.concatenate([members, nonmembers]))
    gap = float(np.min(np.diff(allv))) if len(allv) > 1 else 1.0
    rng = np.random.default_rng(seed)
    w = 0.45 * gap
    return members + rng.uniform(0, w, len(members)), nonmembers + rng.uniform(0, w, len(nonmembers))


@dataclass
class AuditResult:
    #: the lower bound on epsilon at confidence 1 - alpha (0 when nothing is certified)
    eps_lb: float
    #: the largest lower bound this sample size and threshold grid could certify (perfect separation)
    eps_max: float
    alpha: float
    delta: float
    #: thresholds (bounds) the confidence was split over
    n_thresholds: int
    #: the winning threshold's bounded rates and side ("fpr" when the k-th largest non-member
    #: score set it, "fnr" when the k-th smallest member score did)
    tpr_lb: float = float("nan")
    fpr_ub: float = float("nan")
    side: str = ""
    rank: int = 0

    def as_metrics(self, prefix: str = "eps_lb") -> dict[str, float]:
        return {prefix: self.eps_lb, f"{prefix}_max_certifiable": self.eps_max}


def _finite(x, name):
    x = np.asarray(x, dtype=np.float64).ravel()
    if len(x) == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x


def eps_lower_bound(member_scores, nonmember_scores, *, alpha: float = 0.05, delta: float = 0.0,
                    grid_size: int = 30, seed: int = 0) -> AuditResult:
    """Epsilon lower bound at confidence ``1 - alpha`` (see the module docstring).

    Thresholds: the k-th largest non-member score (rule "member iff score > t"; k - 1 in-sample
    false positives) and the k-th smallest member score (rule "member iff score >= t"; k - 1
    in-sample false negatives), k on :func:`rank_grid` (``grid_size`` ranks per side). Two
    one-sided CP bounds per threshold, all at ``alpha / (2 * n_thresholds)``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    mem = _finite(member_scores, "member_scores")
    non = _finite(nonmember_scores, "nonmember_scores")
    mem, non = _jitter(mem, non, seed)
    n_m, n_n = len(mem), len(non)
    non_desc = np.sort(non)[::-1]
    mem_asc = np.sort(mem)
    k_fp = rank_grid(n_n, grid_size)
    k_fn = rank_grid(n_m, grid_size)
    n_thr = len(k_fp) + len(k_fn)
    a = alpha / (2 * n_thr)
    # side 1: t = k-th largest non-member; FP = k - 1; TP = #members > t
    t1 = non_desc[k_fp - 1]
    tp1 = n_m - np.searchsorted(mem_asc, t1, side="right")
    fp1 = k_fp - 1
    # side 2: t = k-th smallest member; FN = k - 1; TN = #non-members < t
    t2 = mem_asc[k_fn - 1]
    fn2 = k_fn - 1
    tn2 = np.searchsorted(np.sort(non), t2, side="left")
    tpr_lb = np.r_[cp_lower(tp1, n_m, a), 1.0 - cp_upper(fn2, n_m, a)]
    fpr_ub = np.r_[cp_upper(fp1, n_n, a), 1.0 - cp_lower(tn2, n_n, a)]
    eps = eps_from_rates(tpr_lb, fpr_ub, delta)
    i = int(np.argmax(eps))
    side, rank = ("fpr", int(k_fp[i])) if i < len(k_fp) else ("fnr", int(k_fn[i - len(k_fp)]))
    return AuditResult(float(eps[i]), max_certifiable_eps(n_m, n_n, alpha=alpha, delta=delta, grid_size=grid_size),
                       alpha, delta, n_thr, float(tpr_lb[i]), float(fpr_ub[i]), side, rank)


def max_certifiable_eps(n_members: int, n_nonmembers: int, *, alpha: float = 0.05, delta: float = 0.0,
                        grid_size: int = 30) -> float:
    """The bound :func:`eps_lower_bound` returns on perfectly separated scores of this size."""
    return _max_cert(int(n_members), int(n_nonmembers), alpha, delta, grid_size)


def _max_cert(n_m: int, n_n: int, alpha: float, delta: float, grid_size: int) -> float:
    n_thr = len(rank_grid(n_n, grid_size)) + len(rank_grid(n_m, grid_size))
    a = alpha / (2 * n_thr)
    # perfect separation: the best thresholds are the extreme ranks (k = 1): no errors on one side,
    # all members (non-members) on the right side of the threshold
    e1 = eps_from_rates(cp_lower(n_m, n_m, a), cp_upper(0, n_n, a), delta)
    e2 = eps_from_rates(1.0 - cp_upper(0, n_m, a), 1.0 - cp_lower(n_n, n_n, a), delta)
    return float(max(e1, e2))


# --------------------------------------------------------------------------------------------
# One-run audit (Steinke, Nasr & Jagielski 2023)
# --------------------------------------------------------------------------------------------

def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """P-value of ``v`` correct guesses out of ``r`` (``m`` canaries) under (eps, delta)-DP."""
    from scipy import special, stats  # imported here: keeps the CLI start-up torch-only

    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError("need eps >= 0 and delta in [0, 1]")
    if v == 0:
        return 1.0
    q = float(special.expit(eps))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    alpha = 0.0
    if delta > 0:
        i = np.arange(1, v + 1)
        cum = np.cumsum(stats.binom.pmf(v - i, r, q))  # P[v > Bin >= v - i]
        alpha = float(np.max(cum / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_eps(m: int, r: int, v: int, *, alpha: float = 0.05, delta: float = 0.0) -> float:
    """Largest eps rejected at level ``alpha`` (0 if none): ``sup{eps : p(eps) < alpha}``."""
    from scipy import optimize  # imported here: keeps the CLI start-up torch-only

    if one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    hi = 1.0
    while one_run_p_value(m, r, v, hi, delta) < alpha:
        hi *= 2
        if hi > 1e3:
            return math.inf
    return float(optimize.brentq(lambda e: one_run_p_value(m, r, v, e, delta) - alpha, 0.0, hi, xtol=1e-7))


def _guess_grid(n: int, size: int) -> np.ndarray:
    return np.unique(np.r_[0, rank_grid(n, size)])


@dataclass
class OneRunResult:
    eps_lb: float
    eps_max: float
    k_pos: int
    k_neg: int
    guesses: int
    correct: int
    n_tries: int


#: the one-run audit's default guess grid: (k+, k-) values per side, Bonferroni over all pairs (a coarse
#: grid keeps the correction small: the largest certifiable bound at m = 500, delta = 1e-5 is 2.98 with
#: 4 values per side and 2.68 with 12; docs/methods/audit.md)
ONE_RUN_GRID_SIZE = 4


def one_run_eps_lower_bound(scores, included, *, alpha: float = 0.05, delta: float = 0.0, grid_size: int = 12,
                            m: int | None = None, seed: int = 0) -> OneRunResult:
    """One-run bound from canary ``scores`` and inclusion bits ``included`` (1 = trained on).

    Sweeps ``k_pos`` (top scores guessed "in") and ``k_neg`` (bottom scores guessed "out") on a
    geometric grid and Bonferroni-corrects over the pairs tried. ``m`` defaults to
    ``len(scores)`` (every canary scored). ``seed``: the random order of tied scores.
    """
    s = _finite(scores, "scores")
    inc = np.asarray(included).astype(bool).ravel()
    if inc.shape != s.shape:
        raise ValueError("scores and included must have the same length")
    m = len(s) if m is None else int(m)
    # Ties never count for the auditor: tied scores are put in a seeded random order drawn
    # independently of the inclusion bits (a randomised test is still a test), so neither the
    # order in which the caller passed the canaries (the attacks pass members first) nor the tie
    # structure can move a guess into the auditor's favour. (Breaking ties worst-case instead,
    # against the auditor, is valid too but leaves no power on two- or three-valued scores such
    # as a released randomized-response label: every cut inside a tie group counts all wrong.)
    tie_break = np.random.default_rng([int(seed), 0x7E5]).random(len(s))
    order = np.lexsort((tie_break, -s))
    inc_sorted = inc[order]
    n = len(s)
    top_correct = np.r_[0, np.cumsum(inc_sorted)]  # correct "in" guesses among the top k
    bot_correct = np.r_[0, np.cumsum(~inc_sorted[::-1])]  # correct "out" guesses among the bottom k
    grid = _guess_grid(n, grid_size)
    pairs = [(kp, kn) for kp in grid for kn in grid if 0 < kp + kn <= n]
    a = alpha / len(pairs)
    best = (0.0, 0, 0, 0, 0)
    # evaluate the largest-v/r candidates first; skip pairs that cannot beat the current best cheaply
    for kp, kn in pairs:
        r = int(kp + kn)
        v = int(top_correct[kp] + bot_correct[kn])
        if v <= r / 2:
            continue
        e = one_run_eps(m, r, v, alpha=a, delta=delta)
        if e > best[0]:
            best = (e, int(kp), int(kn), r, v)
    ceiling = one_run_max_certifiable_eps(n, alpha=alpha, delta=delta, grid_size=grid_size, m=m,
                                          n_included=int(inc.sum()))
    return OneRunResult(best[0], ceiling, best[1], best[2], best[3], best[4], len(pairs))


def one_run_max_certifiable_eps(n: int, *, alpha: float = 0.05, delta: float = 0.0, grid_size: int = 12,
                                m: int | None = None, n_included: int | None = None) -> float:
    """The bound :func:`one_run_eps_lower_bound` returns on perfectly separated scores: the best
    guess pair of the grid that stays inside the included (k+ <= n_included) and the excluded
    (k- <= n - n_included) canaries, every guess right, at the same Bonferroni split.
    ``n_included`` defaults to n // 2 (the expected count under fair coins). Guessing every canary
    (r = n) is not on the grid unless k+ equals the included count, so the ceiling is what this
    grid can reach, not the bound of r = n perfect guesses."""
    n = int(n)
    n_in = n // 2 if n_included is None else int(n_included)
    grid = _guess_grid(n, grid_size)
    pairs = [(kp, kn) for kp in grid for kn in grid if 0 < kp + kn <= n]
    a = alpha / len(pairs)
    best = 0.0
    for r in sorted({int(kp + kn) for kp, kn in pairs if kp <= n_in and kn <= n - n_in}):
        best = max(best, one_run_eps(n if m is None else m, r, r, alpha=a, delta=delta))
    return best
