"""Noise and privacy figures of the data-sensitive (Gaussian) annotation mechanism:
:func:`sensitivity_factor` (the L2 sensitivity of one answer), the ``query`` unit's two readings
(:data:`QUERY_UNITS`, :func:`own_unit_compositions`), how the noise is applied
(:data:`NOISE_SCALES`), the calibrated plan (:class:`GaussianPlan`, :func:`plan_gaussian`), the
running ledger (:class:`GaussianLedger`) and the figures every data-mode report carries
(:func:`gaussian_privacy_extra`). Every epsilon comes from :mod:`bench.lib.accounting`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from bench.lib.accounting import calibrate_gaussian, gaussian_epsilon


def sensitivity_factor(neighbouring: str) -> float:
    """L2 sensitivity of one normalized answer, in units of C."""
    return 2.0 if neighbouring == "replace" else 1.0


#: the two readings of the ``query`` unit for the Gaussian (data-sensitive) mechanism
QUERY_UNITS = {
    "parallel": "neighbouring runs differ in the teacher's answer to one synthetic query; every query is "
                "answered (and noised) exactly once, so the per-query Gaussian mechanisms compose in parallel",
    "per-iteration": "neighbouring runs differ in the teacher's answer to at most one synthetic query in every "
                     "iteration; the iterations compose sequentially",
}


def own_unit_compositions(composition: str, iterations: int) -> int:
    """How many Gaussian mechanisms one neighbouring change touches under the ``query`` unit."""
    if composition not in QUERY_UNITS:
        raise ValueError(f"query_composition must be one of {list(QUERY_UNITS)}, got {composition!r}")
    return min(1, iterations) if composition == "parallel" else iterations


#: how the calibrated noise is applied to each per-sample normalized gradient (data mode)
NOISE_SCALES = {
    "per-sample": "every released per-sample target carries N(0, (sigma C)^2): the std its own "
                  "sensitivity needs (sound)",
    "batch-mean": "the DPDFD authors' snippet: the noise std is divided by the batch size, N(0, (sigma C / B)^2), "
                  "the scale of a Gaussian mechanism on the batch MEAN (one answer moves the mean by at most "
                  "2C/B), while every per-sample target is released with its full per-sample signal",
}


@dataclass
class GaussianPlan:
    """Noise of the data-sensitive mechanism and the three figures it is accounted with.

    ``z`` is calibrated to the target epsilon exactly as for the sound mechanism (std /
    sensitivity on one answer); ``sigma = z * sens`` (std in units of C). ``applied`` is the std
    actually added to each per-sample gradient: ``sigma`` (``per-sample``) or ``sigma / B``
    (``batch-mean``). Claimed: the accountant on ``z`` (for ``batch-mean`` this is the reading of
    the release as a mechanism on the batch mean). Released: the accountant on the per-sample
    multiplier ``applied / sens``, same ``query`` unit. Example level: all B answers of a round
    may change, joint sensitivity ``sens C sqrt(B)``, multiplier ``applied / (sens sqrt(B))``."""

    z: float
    sigma: float
    applied: float
    sens: float
    batch_size: int
    noise_scale: str

    @property
    def z_released(self) -> float:
        return self.applied / self.sens

    @property
    def z_example(self) -> float:
        return self.applied / (self.sens * math.sqrt(self.batch_size))


def plan_gaussian(target_epsilon: float, delta: float, *, iterations: int, batch_size: int, sens: float,
                  query_composition: str, accountant: str, noise_multiplier: Optional[float],
                  noise_scale: str) -> GaussianPlan:
    """Calibrate (or take) the noise multiplier and apply the ``noise_scale`` (:data:`NOISE_SCALES`)."""
    if noise_scale not in NOISE_SCALES:
        raise ValueError(f"noise_scale must be one of {list(NOISE_SCALES)}, got {noise_scale!r}")
    if noise_multiplier is None:
        z = calibrate_gaussian(target_epsilon, delta, own_unit_compositions(query_composition, iterations), accountant)
    else:
        z = noise_multiplier / sens
    sigma = z * sens
    applied = sigma if noise_scale == "per-sample" else sigma / batch_size
    return GaussianPlan(float(z), float(sigma), float(applied), float(sens), int(batch_size), noise_scale)


def gaussian_privacy_extra(plan: GaussianPlan, ledger: GaussianLedger) -> dict:
    """The figures every data-mode report carries (claimed, released, example level), each with
    its unit and accountant."""
    released = ledger.epsilon_released()
    return {
        "noise_scale": plan.noise_scale, "noise_scale_definition": NOISE_SCALES[plan.noise_scale],
        "epsilon_claimed": ledger.epsilon(), "epsilon_claimed_unit": "query",
        "epsilon_released": released, "epsilon_released_unit": "query",
        "epsilon_released_accountant": ledger.released_accountant(),
        "epsilon_example_level": ledger.epsilon_example_level(), "epsilon_example_level_unit": "example",
        "epsilon_example_level_accountant": "RDP (dp_accounting)",
        "noise_multiplier": plan.sigma, "noise_std_applied": plan.applied, "accountant_multiplier": plan.z,
        "released_multiplier": plan.z_released, "example_level_multiplier": plan.z_example,
    }


class GaussianLedger:
    """Counts the Gaussian annotation rounds (one per teacher query batch, recorded right after
    the query) and converts them into epsilon with the accountant on demand: the own-unit epsilon
    (``query``, see :data:`QUERY_UNITS`) and the example-level one (all B answers of every round
    may change: multiplier z_ex per round, composed over the rounds; RDP accountant)."""

    def __init__(self, noise_multiplier: float, example_multiplier: float, delta: float, accountant: str,
                 composition: str, released_multiplier: Optional[float] = None):
        self.z, self.z_ex, self.delta, self.accountant = noise_multiplier, example_multiplier, delta, accountant
        self.composition = composition
        #: the per-sample multiplier of what is actually released (differs from ``z`` only under the
        #: authors' ``batch-mean`` noise scale)
        self.z_rel = noise_multiplier if released_multiplier is None else released_multiplier
        self.steps = 0

    def step(self, n: int = 1):
        self.steps += n

    def epsilon(self) -> float:
        return gaussian_epsilon(self.z, own_unit_compositions(self.composition, self.steps), self.delta,
                                self.accountant)

    def released_accountant(self) -> str:
        """The claim's accountant when the released multiplier is the claimed one; RDP otherwise (a
        PLD of a Gaussian with multiplier ~0.01 takes ~90 s for one composition; RDP is an upper
        bound, so the figure is conservative: 2 701 vs PLD 2 647 at z = 3.73 / 256)."""
        same = self.z_rel == self.z
        return (self.accountant if same else "rdp").upper() + " (dp_accounting)"

    def epsilon_released(self) -> float:
        """Own-unit epsilon of what the mechanism actually releases (per-sample multiplier)."""
        if self.z_rel == self.z:
            return self.epsilon()
        return gaussian_epsilon(self.z_rel, own_unit_compositions(self.composition, self.steps), self.delta, "rdp")

    def epsilon_example_level(self) -> float:
        """Always with the RDP accountant: the example-level multiplier is small (sigma / (2 sqrt B)),
        and a PLD of a low-noise Gaussian composed T times needs gigabytes (it was OOM-killed on
        MNIST); RDP is an upper bound, so the reported figure is conservative."""
        return gaussian_epsilon(self.z_ex, self.steps, self.delta, "rdp")
