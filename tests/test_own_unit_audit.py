"""The own-unit audit (attacks/own_unit_audit.py) and DPSD's authors' noise scaling.

Validity on mechanisms that are exactly eps-DP in the audited unit (a Gaussian mechanism on a
per-query answer of sensitivity 2C, K-ary randomized response on a label), power on a release
without noise, and end to end on sklearn digits: the sound DPSD passes its own-unit audit, the
batch-mean scaling is flagged by the audit table and `bench check`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attacks.own_unit_audit import release_scores
from bench.lib.audit.bounds import one_run_eps_lower_bound, one_run_max_certifiable_eps
from bench.lib.audit.canaries import canary_answer, draw_query_canaries

M, K = 1000, 10


def _gaussian_record(rng, std: float, antipodal: bool = True):
    """A toy data-mode release of M canary queries: answers of norm C = 1 whose in/out candidates
    differ by the full sensitivity 2C (antipodal) or less, Gaussian noise of the given std."""
    s = rng.normal(size=(M, K))
    g_out = rng.normal(size=(M, K))
    g_out /= np.linalg.norm(g_out, axis=1, keepdims=True)
    if antipodal:
        g_in = -g_out
    else:
        g_in = rng.normal(size=(M, K))
        g_in /= np.linalg.norm(g_in, axis=1, keepdims=True)
    inc = rng.random(M) < 0.5
    g = np.where(inc[:, None], g_in, g_out)
    released = s - (g + std * rng.normal(size=(M, K)))
    return {"student_logits": s, "released": released, "clean_out": g_out, "clean_in": g_in, "noise_std": std,
            "target_step": 1.0}, inc


def test_gaussian_mechanism_at_eps_1_is_never_certified_above_1():
    """sigma calibrated to eps = 1 (delta 1e-5, one composition, sensitivity 2C): the own-unit bound
    stays <= 1 in >= 95 % of seeded draws, and is informative (> 0 in most)."""
    from bench.lib.distill import calibrate_gaussian

    z = calibrate_gaussian(1.0, 1e-5, 1, "pld")
    rng = np.random.default_rng(0)
    vals = []
    for _ in range(40):
        rec, inc = _gaussian_record(rng, 2.0 * z)
        vals.append(one_run_eps_lower_bound(release_scores(rec), inc, delta=1e-5, grid_size=4).eps_lb)
    vals = np.array(vals)
    assert np.mean(vals <= 1.0) >= 0.95, vals
    assert np.mean(vals > 0) >= 0.5, vals


@pytest.mark.parametrize("k", [2, 10])
def test_randomized_response_at_eps_1_is_never_certified_above_1(k):
    """k-ary randomized response at eps = 1 on the label (pure DP, delta = 0): valid for every k,
    informative for binary RR (at k = 10 it keeps the true label only 23 % of the time)."""
    rng = np.random.default_rng(1)
    e = math.e
    vals = []
    for _ in range(40):
        y_out = rng.integers(0, k, M)
        y_in = (y_out + 1) % k
        inc = rng.random(M) < 0.5
        true = np.where(inc, y_in, y_out)
        keep = rng.random(M) < e / (e + k - 1)
        other = (true + rng.integers(1, k, M)) % k  # uniform over the other k - 1 labels
        rel = np.where(keep, true, other)
        rec = {"released": rel, "label_in": y_in, "label_out": y_out}
        vals.append(one_run_eps_lower_bound(release_scores(rec), inc, delta=0.0, grid_size=4).eps_lb)
    vals = np.array(vals)
    assert np.mean(vals <= 1.0) >= 0.95, vals
    if k == 2:
        assert np.mean(vals > 0) >= 0.5, vals


@pytest.mark.parametrize("antipodal", [True, False])
def test_release_without_noise_reaches_the_ceiling(antipodal):
    rng = np.random.default_rng(2)
    rec, inc = _gaussian_record(rng, 0.0, antipodal)
    r = one_run_eps_lower_bound(release_scores(rec), inc, delta=1e-5, grid_size=4)
    assert r.eps_lb == pytest.approx(r.eps_max, rel=1e-6)
    assert r.eps_max == pytest.approx(one_run_max_certifiable_eps(M, delta=1e-5, grid_size=4, n_included=int(inc.sum())))


def test_batch_mean_scaling_is_detected_on_the_toy_release():
    """The authors' scaling: std sigma C / B with B = 256: certified far above the claimed 1."""
    from bench.lib.distill import calibrate_gaussian

    z = calibrate_gaussian(1.0, 1e-5, 1, "pld")
    rec, inc = _gaussian_record(np.random.default_rng(3), 2.0 * z / 256)
    assert one_run_eps_lower_bound(release_scores(rec), inc, delta=1e-5, grid_size=4).eps_lb > 3.0


def test_canaries_are_seeded_and_independent_of_any_teacher():
    x1, i1 = draw_query_canaries(50, (1, 8, 8), cell_seed=0, seed=0)
    x2, i2 = draw_query_canaries(50, (1, 8, 8), cell_seed=0, seed=0)
    x3, _ = draw_query_canaries(50, (1, 8, 8), cell_seed=1, seed=0)
    assert torch.equal(x1, x2) and torch.equal(i1, i2) and not torch.equal(x1, x3)
    assert 10 < int(i1.sum()) < 40
    t = torch.randn(5, K)
    assert torch.equal(canary_answer(t).argmax(1), (t.argmax(1) + 1) % K)


# ------------------------------------------------------------------ plan: the three figures

def test_batch_mean_plan_claims_the_sound_epsilon_and_releases_far_more():
    from bench.lib import distill as D

    sound = D.plan_gaussian(1.0, 1e-5, iterations=400, batch_size=256, sens=2.0, query_composition="parallel",
                            accountant="pld", noise_multiplier=None, noise_scale="per-sample")
    bm = D.plan_gaussian(1.0, 1e-5, iterations=400, batch_size=256, sens=2.0, query_composition="parallel",
                         accountant="pld", noise_multiplier=None, noise_scale="batch-mean")
    assert bm.z == sound.z and bm.sigma == sound.sigma and bm.applied == pytest.approx(sound.sigma / 256)
    led = D.GaussianLedger(bm.z, bm.z_example, 1e-5, "pld", "parallel", released_multiplier=bm.z_released)
    led.step(400)
    extra = D.gaussian_privacy_extra(bm, led)
    assert extra["epsilon_claimed"] == pytest.approx(1.0, abs=0.01)
    assert extra["epsilon_released"] > 1000  # the per-sample multiplier is z / 256
    assert extra["epsilon_example_level"] > extra["epsilon_released"]
    assert "RDP" in extra["epsilon_released_accountant"]
    led_s = D.GaussianLedger(sound.z, sound.z_example, 1e-5, "pld", "parallel",
                             released_multiplier=sound.z_released)
    led_s.step(400)
    ex_s = D.gaussian_privacy_extra(sound, led_s)
    assert ex_s["epsilon_released"] == ex_s["epsilon_claimed"]  # the sound mechanism releases what it claims
    with pytest.raises(ValueError):
        D.plan_gaussian(1.0, 1e-5, iterations=4, batch_size=4, sens=2.0, query_composition="parallel",
                        accountant="pld", noise_multiplier=None, noise_scale="per-batch")


# ------------------------------------------------------------------ end to end on digits

AUDIT_SUITE = {
    "name": "own-unit",
    "description": "own-unit audit test",
    "datasets": {"digits": {"protocol": {"members": 300, "val": 100, "nonmembers": 300}}},
    "epsilons": [1.0],
    "delta": 1.0e-5,
    "seeds": [0],
    "defenses": {
        "none": {"arch": "mlp", "epochs": 10, "batch_size": 32, "lr": 0.003},
        "dpsd": {"mode": "data", "iterations": 8, "batch_size": 64, "eval_every": 4, "latent_dim": 8,
                 "generator_width": 8},
        "dpsd-bm": {"method": "dpsd", "mode": "data", "iterations": 8, "batch_size": 64, "eval_every": 4,
                    "latent_dim": 8, "generator_width": 8, "noise_scale": "batch-mean"},
        "dpsd-label": {"method": "dpsd", "mode": "label", "iterations": 8, "batch_size": 64, "eval_every": 4,
                       "latent_dim": 8, "generator_width": 8, "rr_prior_warmup": 4},
    },
    "attacks": {"own-unit-audit": {"m": 400}},
}


@pytest.fixture(scope="module")
def audit_run(tmp_path_factory):
    from conftest import write_suite

    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    base = tmp_path_factory.mktemp("own-unit")
    path = write_suite(base / "suite.yaml", AUDIT_SUITE)
    out = base / "out"
    res = run_suite(load_suite(str(path)), out, cache_dir=base / "cache", data_dir=base / "data",
                    echo=lambda m: None, progress=False)
    return out, res


def test_own_unit_audit_end_to_end(audit_run, cli, tmp_path):
    from reports.audit_table import audit_table, familywise_own_unit
    from reports.check import write_baseline
    from reports.frame import load_frame

    out, res = audit_run
    assert res["done"] == 4, res
    df = load_frame(out)
    t = audit_table(df, familywise_own=familywise_own_unit(out)).set_index("defense")
    # the sound mechanism: bound <= its claim; the authors' scaling: far above, flagged
    assert t.loc["dpsd", "n_bounds_own_unit"] == 2
    assert t.loc["dpsd", "eps_hat_own_unit"] <= t.loc["dpsd", "claimed_epsilon"] + 1e-9
    assert not t.loc["dpsd", "own_unit_flagged"]
    assert t.loc["dpsd-bm", "eps_hat_own_unit"] > 2.0 and bool(t.loc["dpsd-bm", "own_unit_flagged"])
    assert t.loc["dpsd-bm", "eps_hat_own_unit_familywise"] > 1.0
    assert not t.loc["dpsd-label", "own_unit_flagged"]
    # the claimed epsilon of the authors' scaling is the sound one; its release figure is not
    bm = df[(df.defense == "dpsd-bm") & (df.source == "privacy") & (df.metric == "epsilon_spent")]["value"]
    assert float(bm.iloc[0]) <= 1.0 + 1e-6
    base = write_baseline(out, tmp_path / "base.json")
    code, o, e = cli("check", out, "--baseline", base)
    fails = [ln for ln in o.splitlines() if ln.startswith("FAIL AUDIT")]
    assert code == 1 and len(fails) == 1 and "dpsd-bm" in fails[0] and "own-unit" in fails[0], o + e


def test_study_table_shows_the_three_figures(audit_run):
    """study.md: claimed, released and example-level epsilon per row, the own-unit bound beside
    them; the authors' scaling releases far more than it claims, the sound mechanism does not."""
    from reports.write import write_report

    out, _ = audit_run
    write_report(out)
    md = (out / "report" / "study.md").read_text()
    assert "released ε (unit)" in md and "example-level ε" in md and "ε̂ own unit (95 %)" in md
    import pandas as pd

    data = pd.read_csv(out / "report" / "study.csv").set_index("defense")
    assert data.loc["dpsd-bm", "released_epsilon"] > 100 * data.loc["dpsd-bm", "claimed_epsilon"]
    assert data.loc["dpsd", "released_epsilon"] == pytest.approx(data.loc["dpsd", "claimed_epsilon"])
    assert data.loc["dpsd-bm", "eps_hat_own_unit"] > data.loc["dpsd-bm", "claimed_epsilon"]
    assert data.loc["dpsd", "eps_hat_own_unit"] <= data.loc["dpsd", "claimed_epsilon"]
    assert data.loc["none", "example_level_epsilon"] == float("inf")
    assert "Privacy study" in (out / "report" / "report.html").read_text()
