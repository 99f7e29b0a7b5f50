"""Privacy accounting helpers on top of library accountants (Opacus; dp-accounting where
Opacus lacks the mechanism). Nothing here computes an epsilon by hand."""

from __future__ import annotations

import functools
import warnings

ACCOUNTANTS = ("prv", "rdp", "gdp")


def make_accountant(name: str):
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
    acc = make_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))
