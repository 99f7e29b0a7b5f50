"""Privacy accounting: the one place the project calls a library accountant (Opacus for DP-SGD,
Google's ``dp_accounting`` for everything else). Nothing here computes an epsilon by hand, except
the shard-selected Gaussian, an exact binomial mixture (scipy) of dp_accounting's analytic
Gaussian delta, whose epsilon is found by bisection.

* DP-SGD (Opacus): :func:`make_accountant`, :func:`dpsgd_noise_multiplier`, :func:`dpsgd_epsilon`;
* compositions of Gaussian mechanisms (dp_accounting; noise multiplier z = noise std / L2
  sensitivity): :func:`gaussian_epsilon` (one multiplier, PLD or RDP), :func:`gaussian_rdp_epsilon`
  (several multipliers, RDP), :func:`max_gaussian_compositions` (how many fit in a budget),
  :func:`calibrate_gaussian` (the multiplier for a budget) and :func:`calibrate_gaussian_scale`
  (the scale of a family of Gaussian events for a budget);
* DP hyperparameter selection over DP-SGD runs (Papernot & Steinke, ICLR 2022; dp_accounting's
  ``RepeatAndSelectDpEvent``): :func:`tuned_dpsgd_epsilon`, :func:`calibrate_tuned_dpsgd`;
* Poisson-subsampled Gaussian rounds in dp_accounting (DP-FedAvg, client level):
  :func:`poisson_gaussian_epsilon`, :func:`calibrate_poisson_gaussian`;
* rounds that each read one of K fixed disjoint shards, the unit's shard with probability q
  (GS-WGAN's discriminators): :func:`shard_selected_gaussian_delta`,
  :func:`shard_selected_gaussian_epsilon`, :func:`calibrate_shard_selected_gaussian`,
  :func:`max_shard_selected_rounds` (dp_accounting's exact Gaussian privacy loss, mixed over the
  binomial count of rounds that read the shard);
* compositions of a pure epsilon0-DP mechanism: :func:`pure_dp_composition_epsilon`;
* compositions of the Laplace mechanism (dp_accounting; noise multiplier b = Laplace scale / L1
  sensitivity): :func:`laplace_epsilon`, :func:`calibrate_laplace`;
* the PLD memory guard: :data:`PLD_MAX_POINTS`, :func:`pld_points`, :func:`check_pld`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Optional

# ---------------------------------------------------------------------------------------------
# DP-SGD (Opacus)

#: the Opacus accountants DP-SGD may use
ACCOUNTANTS = ("prv", "rdp", "gdp")


def make_accountant(name: str):
    """A fresh Opacus accountant ``name`` (one of :data:`ACCOUNTANTS`)."""
    from opacus.accountants import create_accountant

    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}")
    return create_accountant(mechanism=name)


@functools.lru_cache(maxsize=256)
def dpsgd_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                           accountant: str = "prv") -> float:
    """Opacus' binary search for the sigma that spends ``target_epsilon`` in ``steps`` steps
    (memoised: reference models of one configuration share the calibration)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # Opacus' RDP bound inside the PRV domain search is chatty
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant,
                                          epsilon_tolerance=0.005))


def dpsgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "prv") -> float:
    """Epsilon at ``delta`` of ``steps`` Poisson-subsampled Gaussian steps (Opacus)."""
    acc = make_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))


# ---------------------------------------------------------------------------------------------
# dp_accounting accountants and the PLD memory guard

#: dp_accounting's PLD discretization of the privacy loss (its default)
PLD_INTERVAL = 1e-4
#: a composed PLD larger than this many points (8 bytes each, several copies in the FFT) is refused
PLD_MAX_POINTS = 2e8


def pld_points(noise_multiplier: float, steps: int) -> float:
    """About how many points the PLD of ``steps`` composed Gaussians at ``noise_multiplier`` holds
    (loss support ~ steps * (1/(2z^2) + 10/z), over the 1e-4 grid)."""
    z = max(float(noise_multiplier), 1e-12)
    return max(int(steps), 1) * (0.5 / z**2 + 10.0 / z) / PLD_INTERVAL


def check_pld(noise_multiplier: float, steps: int, what: str) -> None:
    """A near-noiseless budget (epsilon = 1e4: z ~ 0.05) would need a PLD of ~1e9 points: the
    process was killed for memory after the teacher had trained. Refuse it in one line instead;
    RDP (an upper bound as well, looser) handles any z."""
    from bench.core.errors import BenchError

    n = pld_points(noise_multiplier, steps)
    if n > PLD_MAX_POINTS:
        raise BenchError(f"{what}: noise multiplier {noise_multiplier:.3g} over {steps} compositions needs a PLD of "
                         f"~{n:.1e} points (more memory than a machine has); set accountant: rdp for such a budget")


def dp_accountant(name: str, relation: str = "add_remove", orders: Optional[Sequence[float]] = None):
    """A fresh dp_accounting accountant: ``pld`` or ``rdp`` (``orders``: the RDP orders, None =
    dp_accounting's defaults), for the neighbouring ``relation`` ``add_remove`` or ``replace``."""
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
    from dp_accounting.privacy_accountant import NeighboringRelation
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    rel = {"add_remove": NeighboringRelation.ADD_OR_REMOVE_ONE, "replace": NeighboringRelation.REPLACE_ONE}[relation]
    if name == "pld":
        return PLDAccountant(neighboring_relation=rel)
    if name == "rdp":
        if orders is None:
            return RdpAccountant(neighboring_relation=rel)
        return RdpAccountant(list(orders), neighboring_relation=rel)
    raise ValueError(f"accountant must be 'pld' or 'rdp', got {name!r}")


# ---------------------------------------------------------------------------------------------
# DP hyperparameter selection (Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential
# Privacy", ICLR 2022)


def _tuned_dpsgd_event(noise_multiplier: float, sample_rate: float, steps: int, mean_runs: float, shape: float):
    from dp_accounting import dp_event

    run = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier)), int(steps))
    return dp_event.RepeatAndSelectDpEvent(run, float(mean_runs), float(shape))


def tuned_dpsgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                        mean_runs: float, shape: float) -> float:
    """Epsilon at ``delta`` of releasing the best of K DP-SGD runs, K random with mean
    ``mean_runs`` from the truncated negative binomial family of ``shape`` eta (``math.inf``:
    Poisson, 1: geometric), each run ``steps`` Poisson-subsampled Gaussian steps with multiplier
    ``noise_multiplier`` (dp_accounting's RDP accountant on ``RepeatAndSelectDpEvent``, the bound of
    Papernot & Steinke 2022, Thm. 2)."""
    acc = dp_accountant("rdp")
    acc.compose(_tuned_dpsgd_event(noise_multiplier, sample_rate, steps, mean_runs, shape))
    return float(acc.get_epsilon(delta))


def calibrate_tuned_dpsgd(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                          mean_runs: float, shape: float) -> float:
    """The smallest per-run noise multiplier with which the whole selection procedure of
    :func:`tuned_dpsgd_epsilon` spends at most ``target_epsilon`` (dp_accounting calibration)."""
    from dp_accounting import mechanism_calibration as mc

    return float(mc.calibrate_dp_mechanism(
        lambda: dp_accountant("rdp"),
        lambda z: _tuned_dpsgd_event(z, sample_rate, steps, mean_runs, shape),
        target_epsilon, delta, mc.LowerEndpointAndGuess(1e-2, 1.0), tol=1e-3))


# ---------------------------------------------------------------------------------------------
# Gaussian mechanisms


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float, accountant: str = "pld") -> float:
    """Epsilon of ``steps`` compositions of the Gaussian mechanism with std / L2-sensitivity =
    ``noise_multiplier`` (dp_accounting; sensitivity-1 ``GaussianDpEvent``)."""
    from dp_accounting import dp_event

    if steps <= 0:
        return 0.0
    if accountant == "pld":
        check_pld(noise_multiplier, steps, "PLD accountant")
    acc = dp_accountant(accountant)
    acc.compose(dp_event.GaussianDpEvent(noise_multiplier), int(steps))
    return float(acc.get_epsilon(delta))


def gaussian_rdp_epsilon(events: Sequence[tuple[float, int]], delta: float,
                         orders: Optional[Sequence[float]] = None) -> float:
    """Epsilon at ``delta`` of the composition of Gaussian mechanisms, ``events`` = [(noise
    multiplier z = std / L2 sensitivity, count), ...], by dp_accounting's RDP accountant
    (conversion: Canonne-Kamath-Steinke 2020, Prop. 12, as implemented there)."""
    from dp_accounting import dp_event

    acc = dp_accountant("rdp", orders=orders)
    for z, count in events:
        if count > 0:
            acc.compose(dp_event.GaussianDpEvent(float(z)), int(count))
    return float(acc.get_epsilon(delta))


def max_gaussian_compositions(noise_multiplier: float, target_epsilon: float, delta: float,
                              orders: Optional[Sequence[float]] = None, upper: int = 10**9) -> int:
    """Largest T such that T self-compositions of the Gaussian mechanism with multiplier
    ``noise_multiplier`` spend at most ``target_epsilon`` at ``delta`` (bisection on the library
    RDP accountant; epsilon is monotone in T)."""
    if gaussian_rdp_epsilon([(noise_multiplier, 1)], delta, orders) > target_epsilon:
        return 0
    lo, hi = 1, 2
    while hi < upper and gaussian_rdp_epsilon([(noise_multiplier, hi)], delta, orders) <= target_epsilon:
        lo, hi = hi, hi * 2
    hi = min(hi, upper)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if gaussian_rdp_epsilon([(noise_multiplier, mid)], delta, orders) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def calibrate_gaussian(target_epsilon: float, delta: float, steps: int, accountant: str = "pld") -> float:
    """The smallest noise multiplier z (std / sensitivity) whose ``steps``-fold composition spends
    at most ``target_epsilon`` at ``delta``, by dp_accounting's calibration (bisection on the
    accountant, on the composed event itself). The bracket comes from the RDP accountant (fast;
    RDP over-estimates epsilon, so its z is an upper end) and is refined with ``accountant``."""
    from dp_accounting import dp_event
    from dp_accounting import mechanism_calibration as mc

    def event(z):
        return dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(z), int(steps))

    z_rdp = mc.calibrate_dp_mechanism(lambda: dp_accountant("rdp"), event, target_epsilon, delta,
                                      mc.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4)
    if accountant == "rdp":
        return float(z_rdp)
    check_pld(0.5 * z_rdp, steps, f"target epsilon {target_epsilon:g} (PLD accountant)")
    z = mc.calibrate_dp_mechanism(lambda: dp_accountant(accountant), event, target_epsilon, delta,
                                  mc.ExplicitBracketInterval(0.5 * z_rdp, z_rdp), tol=1e-3 * z_rdp)
    return float(z)


def calibrate_gaussian_scale(make_events: Callable[[float], Sequence[tuple[float, int]]], target_epsilon: float,
                             delta: float, lo: float = 1e-3, hi: float = 1e6, rel_tol: float = 1e-4) -> float:
    """Smallest scale s (bisection in log space) with ``epsilon(make_events(s)) <= target_epsilon``
    (:func:`gaussian_rdp_epsilon`); ``make_events(s)`` returns the Gaussian events of a run whose
    noise grows with s."""
    def eps(s):
        return gaussian_rdp_epsilon(make_events(s), delta)

    if eps(hi) > target_epsilon:
        raise ValueError(f"no noise scale up to {hi} reaches epsilon {target_epsilon}")
    while eps(lo) <= target_epsilon and lo > 1e-12:
        lo /= 10
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------
# Poisson-subsampled Gaussian mechanisms in dp_accounting (DP-FedAvg's rounds, for any unit)


@contextmanager
def _quiet_absl():
    """dp_accounting's RDP series logs (through absl) each order it drops for non-convergence at
    small multipliers: expected, and the order is excluded, which only loosens the bound."""
    import logging

    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _poisson_gaussian_event(noise_multiplier: float, sample_rate: float, steps: int):
    from dp_accounting import dp_event

    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(float(sample_rate), dp_event.GaussianDpEvent(float(noise_multiplier))),
        int(steps))


def poisson_gaussian_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                             accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``steps`` rounds of a Poisson-subsampled (rate ``sample_rate``)
    Gaussian mechanism with multiplier ``noise_multiplier``, add/remove neighbours of whatever unit
    is sampled (dp_accounting, ``rdp`` or ``pld``). ``sample_rate`` 1 is the plain Gaussian."""
    if steps <= 0:
        return 0.0
    if accountant == "pld":
        check_pld(noise_multiplier, steps, "PLD accountant")
    acc = dp_accountant(accountant)
    with _quiet_absl():
        acc.compose(_poisson_gaussian_event(noise_multiplier, sample_rate, steps))
        return float(acc.get_epsilon(delta))


def calibrate_poisson_gaussian(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               accountant: str = "rdp") -> float:
    """The smallest multiplier with which :func:`poisson_gaussian_epsilon` spends at most
    ``target_epsilon`` (dp_accounting's calibration on the composed event)."""
    from dp_accounting import mechanism_calibration as mc

    with _quiet_absl():
        return float(mc.calibrate_dp_mechanism(
            lambda: dp_accountant(accountant), lambda z: _poisson_gaussian_event(z, sample_rate, steps),
            target_epsilon, delta, mc.LowerEndpointAndGuess(1e-2, 1.0), tol=1e-4))


# ---------------------------------------------------------------------------------------------
# rounds that read one of K fixed disjoint shards (GS-WGAN): no amplification of epsilon
#
# Each round picks one shard uniformly (the unit's with probability q = 1/K, independently across
# rounds) and releases a Gaussian mechanism (multiplier z) of that shard's state. For a member of
# shard k the round's output is (1-q) P + q A against (1-q) P + q B, where A, B are the Gaussian on
# shard k with and without the member and P is the other shards' mixture, the same on both sides.
# By joint convexity of the hockey-stick divergence this pair is dominated by (1-q) * bot + q A
# against (1-q) * bot + q B, where bot is an outcome that tells the observer the unit's shard was
# not read: the other shards are arbitrary data, so in the worst case their answers do give that
# away. Dominating pairs compose adaptively (Zhu, Dong & Wang, AISTATS 2022), and the composition
# of T such pairs reveals the number m ~ Binomial(T, q) of rounds that read the shard, in which the
# output is m composed Gaussians, i.e. one Gaussian of sensitivity sqrt(m): exactly
#     delta(eps) = sum_m Binomial(m; T, q) * delta_Gauss(eps; std z, sensitivity sqrt m),
# the Gaussian term from dp_accounting's exact (analytic) Gaussian privacy loss. Unlike Poisson
# subsampling of records, picking a fixed shard does not shrink epsilon, only how often it is paid.

#: binomial mass left out of the sum is counted as delta 1 (conservative); this is its size
_SHARD_TAIL = 1e-14


def shard_selected_gaussian_delta(noise_multiplier: float, selection_prob: float, rounds: int,
                                  epsilon: float) -> float:
    """delta at ``epsilon`` of ``rounds`` rounds, each reading the unit's shard with probability
    ``selection_prob`` through a Gaussian mechanism of multiplier ``noise_multiplier`` (std / L2
    sensitivity), add/remove neighbours (see the section comment: exact for the dominating pair)."""
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
    from scipy.stats import binom

    z, q, T = float(noise_multiplier), float(selection_prob), int(rounds)
    if not (z > 0 and 0 < q <= 1):
        raise ValueError(f"noise multiplier must be > 0 and selection probability in (0, 1], got {z}, {q}")
    if T <= 0:
        return 0.0
    top = int(min(T, binom.isf(_SHARD_TAIL, T, q) + 1))
    delta = float(binom.sf(top, T, q))  # m > top: counted as delta 1
    for m in range(1, top + 1):
        p = float(binom.pmf(m, T, q))
        if p > 0:
            delta += p * float(GaussianPrivacyLoss(z, sensitivity=math.sqrt(m)).get_delta_for_epsilon(epsilon))
    return min(delta, 1.0)


def shard_selected_gaussian_epsilon(noise_multiplier: float, selection_prob: float, rounds: int,
                                    delta: float) -> float:
    """The smallest epsilon with :func:`shard_selected_gaussian_delta` <= ``delta`` (bisection;
    delta is decreasing in epsilon), to 1e-6 relative."""
    if rounds <= 0:
        return 0.0

    def d(e):
        return shard_selected_gaussian_delta(noise_multiplier, selection_prob, rounds, e)

    if d(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while d(hi) > delta:
        lo, hi = hi, hi * 2
        if hi > 1e7:
            return math.inf
    while hi - lo > 1e-6 * max(hi, 1e-3):
        mid = (lo + hi) / 2
        if d(mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def calibrate_shard_selected_gaussian(target_epsilon: float, delta: float, selection_prob: float,
                                      rounds: int) -> float:
    """The smallest multiplier (to 1e-4 relative) with which ``rounds`` shard-selected rounds spend
    at most ``target_epsilon`` at ``delta`` (bisection on the multiplier; delta decreases in it)."""
    def fits(z):
        return shard_selected_gaussian_delta(z, selection_prob, rounds, target_epsilon) <= delta

    lo, hi = 1e-3, 1.0
    while not fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1e8:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon} in {rounds} rounds")
    while hi / lo > 1 + 1e-4:
        mid = math.sqrt(lo * hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def max_shard_selected_rounds(noise_multiplier: float, selection_prob: float, target_epsilon: float,
                              delta: float, upper: int = 10**8) -> int:
    """The most rounds that spend at most ``target_epsilon`` at ``delta`` (0 if not one does)."""
    def fits(t):
        return shard_selected_gaussian_delta(noise_multiplier, selection_prob, t, target_epsilon) <= delta

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi < upper and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, upper)
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------------
# pure DP mechanisms


def pure_dp_composition_epsilon(epsilon0: float, count: int, delta: float) -> float:
    """Epsilon of ``count`` compositions of an epsilon0-DP mechanism (replace-one relation),
    through the event that dominates every epsilon0-DP mechanism: binary randomized response with
    keep probability e^eps0 / (e^eps0 + 1) (Kairouz, Oh & Viswanath 2015). dp_accounting RDP
    accountant (PLD cannot hold hundreds of thousands of self-compositions in memory)."""
    from dp_accounting import dp_event

    if count <= 0:
        return 0.0
    acc = dp_accountant("rdp", "replace")
    p = 2.0 / (math.exp(epsilon0) + 1.0)  # dp_accounting's noise parameter: prob. of a uniform draw
    acc.compose(dp_event.RandomizedResponseDpEvent(p, 2), int(count))
    return float(acc.get_epsilon(delta))


# ---------------------------------------------------------------------------------------------
# Laplace mechanisms in dp_accounting (PATE-GAN's noisy votes)


def _laplace_event(scale: float, count: int):
    from dp_accounting import dp_event

    return dp_event.SelfComposedDpEvent(dp_event.LaplaceDpEvent(float(scale)), int(count))


def laplace_epsilon(scale: float, count: int, delta: float, accountant: str = "pld") -> float:
    """Epsilon at ``delta`` of ``count`` compositions of the Laplace mechanism whose scale is
    ``scale`` times its L1 sensitivity (add/remove neighbours; dp_accounting, ``pld`` (tight for
    Laplace) or ``rdp``)."""
    if count <= 0:
        return 0.0
    acc = dp_accountant(accountant)
    acc.compose(_laplace_event(scale, count))
    return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def calibrate_laplace(target_epsilon: float, delta: float, count: int, accountant: str = "pld") -> float:
    """The smallest Laplace noise multiplier (scale / L1 sensitivity) with which ``count``
    compositions spend at most ``target_epsilon`` at ``delta`` (dp_accounting's calibration on the
    composed event). The bracket comes from the RDP accountant (fast; RDP over-estimates epsilon,
    so its scale is an upper end) and is refined with ``accountant``."""
    from dp_accounting import mechanism_calibration as mc

    b_rdp = mc.calibrate_dp_mechanism(lambda: dp_accountant("rdp"), lambda b: _laplace_event(b, count),
                                      target_epsilon, delta, mc.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4)
    if accountant == "rdp":
        return float(b_rdp)
    return float(mc.calibrate_dp_mechanism(lambda: dp_accountant(accountant), lambda b: _laplace_event(b, count),
                                           target_epsilon, delta, mc.ExplicitBracketInterval(0.5 * b_rdp, b_rdp),
                                           tol=2e-3 * b_rdp))
