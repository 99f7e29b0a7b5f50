"""Calibration of the loss-threshold membership attack (Yeom et al. 2018), in both directions,
through the whole pipeline (suite -> runner -> defense -> attack -> store) on sklearn digits.

Numbers behind the thresholds (MLP, this code, seeds 0-7, CPU, one thread):

* undefended, 100 members trained 100 epochs without selection (overfit), 100 + 100 evaluated:
  AUC 0.626-0.730 (mean 0.677). Under the null (no leakage) the AUC of 100 vs 100 points has
  std sqrt((n+m+1) / (12 n m)) = 0.041, so AUC > 0.6 is ~2.4 null-sigmas per seed, and the
  3-seed mean > 0.64 is ~6 sigmas: clear leakage.
* DP-SGD at epsilon = 1 (delta = 1e-5, PRV), 600 members, 557 + 557 evaluated: AUC 0.498-0.550
  (mean 0.518), test accuracy 0.36-0.58 (chance 0.10). The null std is 0.017 per seed and 0.010
  for a 3-seed mean; the bound |mean - 0.5| < 0.05 leaves room for that noise plus the small
  leakage the attack still measures at epsilon = 1 (the DP guarantee itself would allow an AUC up
  to ~0.73 at epsilon = 1, so the bound is empirical, not a theorem).
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from conftest import store_rows

SEEDS = [0, 1, 2]


def _run(tmp_path, data: dict) -> dict[int, dict[str, float]]:
    from bench.harness.runner import run_suite
    from bench.harness.suite import parse_suite

    res = run_suite(parse_suite("mia", data), tmp_path / "out", cache_dir=tmp_path / "cache",
                    echo=lambda m: None, progress=False)
    assert res["done"] == len(SEEDS) and res["failed"] == 0, res
    by_seed: dict[int, dict[str, float]] = {}
    for r in store_rows(tmp_path / "out", "SELECT c.seed, m.source, m.name, m.value FROM metrics m "
                                          "JOIN cells c USING (cell_key)"):
        by_seed.setdefault(r["seed"], {})[f"{r['source']}.{r['name']}"] = r["value"]
    return by_seed


@pytest.fixture(scope="module")
def undefended(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("mia-none"), {
        "datasets": {"digits": {"protocol": {"members": 100, "val": 100, "nonmembers": 500}}},
        "seeds": SEEDS,
        "defenses": {"none": {"arch": "mlp", "epochs": 100, "batch_size": 32, "lr": 0.003, "select_on_val": False}},
        "attacks": {"loss-threshold": {"n_eval": 100}},
    })


@pytest.fixture(scope="module")
def dpsgd_eps1(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("mia-dp"), {
        "datasets": {"digits": {"protocol": {"members": 600, "val": 100, "nonmembers": 557}}},
        "seeds": SEEDS, "epsilons": [1.0], "delta": 1e-5,
        "defenses": {"dpsgd": {"arch": "mlp", "epochs": 10, "batch_size": 64, "lr": 1.0, "max_grad_norm": 1.0}},
        "attacks": {"loss-threshold": {"n_eval": 557}},
    })


def test_loss_threshold_detects_an_overfit_undefended_model(undefended):
    aucs = [m["loss-threshold.auc"] for m in undefended.values()]
    assert all(a > 0.6 for a in aucs), aucs
    assert statistics.mean(aucs) > 0.64, aucs
    for m in undefended.values():
        assert m["loss-threshold.n_members"] == 100 and m["loss-threshold.n_nonmembers"] == 100
        assert m["utility.test_acc"] > 0.8  # a real classifier, not noise
        assert m["loss-threshold.yeom_acc"] > 0.55  # Yeom's own threshold rule also beats chance


def test_loss_threshold_is_near_chance_against_dpsgd_eps1(dpsgd_eps1, undefended):
    aucs = [m["loss-threshold.auc"] for m in dpsgd_eps1.values()]
    assert abs(statistics.mean(aucs) - 0.5) < 0.05, aucs
    assert all(abs(a - 0.5) < 0.08 for a in aucs), aucs
    for m in dpsgd_eps1.values():
        assert m["loss-threshold.n_members"] == 557 and m["loss-threshold.n_nonmembers"] == 557
        assert m["privacy.epsilon_spent"] <= 1.0 + 1e-6
        assert m["utility.test_acc"] > 0.25  # well above chance (0.1): low leakage is not a dead model
    assert statistics.mean(aucs) < statistics.mean(m["loss-threshold.auc"] for m in undefended.values()) - 0.1


def test_balanced_eval_sets_are_seeded_capped_and_disjoint():
    from attacks.loss_threshold import balanced_eval_sets
    from bench.lib.tasks import build_task

    t = build_task("digits", {"members": 200, "val": 100, "nonmembers": 150}, 0)
    m1, n1 = balanced_eval_sets(t, 1000, 5)
    assert len(m1) == len(n1) == 150  # capped by the smaller split
    m2, n2 = balanced_eval_sets(t, 1000, 5)
    assert np.array_equal(m1.index, m2.index) and np.array_equal(n1.index, n2.index)
    m3, _ = balanced_eval_sets(t, 100, 6)
    assert len(m3) == 100 and not np.array_equal(m3.index, balanced_eval_sets(t, 100, 5)[0].index)
    assert set(m1.index.tolist()) <= set(t.members.index.tolist())
    assert set(n1.index.tolist()) <= set(t.nonmembers.index.tolist())
    assert not set(m1.index.tolist()) & set(n1.index.tolist())
