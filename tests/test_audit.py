"""Statistics of the privacy audit (bench/lib/audit/bounds.py) and the bootstrap (bench/lib/membership/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.lib.audit.bounds import (
    clopper_pearson,
    cp_lower,
    cp_upper,
    eps_from_rates,
    eps_lower_bound,
    max_certifiable_eps,
    one_run_eps,
    one_run_eps_lower_bound,
    one_run_max_certifiable_eps,
    one_run_p_value,
    rank_grid,
)
from bench.lib.membership.metrics import membership_metrics
from bench.lib.membership.stats import (
    CI_METRICS,
    bootstrap_ci,
    membership_summary,
    roc_metrics,
    roc_metrics_from_counts,
)

# ------------------------------------------------------------------ Clopper–Pearson

def test_cp_edges_and_closed_forms():
    n, a = 200, 0.05
    assert cp_lower(0, n, a) == 0.0
    assert cp_upper(n, n, a) == 1.0
    assert cp_upper(0, n, a) == pytest.approx(1 - a ** (1 / n), rel=1e-9)
    assert cp_lower(n, n, a) == pytest.approx(a ** (1 / n), rel=1e-9)
    for k in (1, 5, 100, 199):
        lo, hi = cp_lower(k, n, a), cp_upper(k, n, a)
        assert 0 <= lo < k / n < hi <= 1
    lo, hi = clopper_pearson(30, 100)
    assert lo < 0.3 < hi
    with pytest.raises(ValueError):
        clopper_pearson(5, 3)


def test_cp_bounds_are_monotone_and_vectorised():
    ks = np.arange(0, 51)
    up, lo = cp_upper(ks, 50, 0.01), cp_lower(ks, 50, 0.01)
    assert np.all(np.diff(up) > 0) and np.all(np.diff(lo) > 0)
    assert np.all(lo <= ks / 50) and np.all(up >= ks / 50)
    # a smaller alpha gives wider bounds
    assert np.all(cp_upper(ks[:-1], 50, 0.001) > up[:-1])


@pytest.mark.parametrize("p", [0.02, 0.3, 0.9])
def test_cp_one_sided_coverage(p):
    rng = np.random.default_rng(1)
    n, a = 60, 0.05
    k = rng.binomial(n, p, size=4000)
    assert np.mean(cp_upper(k, n, a) >= p) >= 0.95
    assert np.mean(cp_lower(k, n, a) <= p) >= 0.95


# ------------------------------------------------------------------ multi-threshold audit

def test_eps_from_rates():
    assert eps_from_rates(0.5, 0.05) == pytest.approx(math.log(10))
    assert eps_from_rates(0.1, 0.1) == 0.0  # never negative
    # the second inequality: (1 - FPR) / (1 - TPR)
    assert eps_from_rates(0.99, 0.5) == pytest.approx(math.log(0.5 / 0.01))
    assert eps_from_rates(0.5, 0.05, delta=0.1) == pytest.approx(math.log(0.4 / 0.05))


def test_rank_grid():
    g = rank_grid(1000, 30)
    assert g[0] == 1 and g[-1] == 1000 and len(g) <= 32 and np.all(np.diff(g) > 0)
    assert list(rank_grid(3, 30)) == [1, 2, 3]


@pytest.mark.parametrize("discrete", [False, True])
def test_null_scores_give_no_epsilon(discrete):
    """Property: members and non-members from one distribution -> eps_hat <= 0.1 in >= 95/100."""
    rng = np.random.default_rng(2024)
    ok = 0
    for i in range(100):
        if discrete:  # heavy ties (e.g. a label-only count score)
            m, n = rng.integers(0, 5, 500).astype(float), rng.integers(0, 5, 500).astype(float)
        else:
            m, n = rng.normal(size=500), rng.normal(size=500)
        ok += eps_lower_bound(m, n, seed=i).eps_lb <= 0.1
    assert ok >= 95


def test_randomized_response_bound_is_valid_and_informative():
    """eps-randomised response (true epsilon exactly 1): the 95 % bound stays below 1 and is > 0."""
    rng = np.random.default_rng(7)
    q = math.exp(1) / (1 + math.exp(1))
    vals = []
    for i in range(40):
        m = (rng.random(3000) < q).astype(float)
        n = (rng.random(3000) < 1 - q).astype(float)
        vals.append(eps_lower_bound(m, n, seed=i).eps_lb)
    vals = np.array(vals)
    assert np.mean(vals <= 1.0) >= 0.95
    assert np.median(vals) > 0.5


def test_separated_scores_reach_the_ceiling():
    m, n = np.arange(500) + 1000.0, np.arange(400, dtype=float)
    r = eps_lower_bound(m, n)
    assert r.eps_lb == pytest.approx(r.eps_max, rel=1e-6)
    assert r.eps_max == pytest.approx(max_certifiable_eps(500, 400))
    # the ceiling grows with the sample size and shrinks with the confidence asked for
    assert max_certifiable_eps(100, 100) < max_certifiable_eps(1000, 1000) < max_certifiable_eps(10000, 10000)
    assert max_certifiable_eps(1000, 1000, alpha=0.01) < max_certifiable_eps(1000, 1000, alpha=0.05)
    assert 4.0 < max_certifiable_eps(1000, 1000) < 6.0


def test_stronger_signal_larger_bound():
    rng = np.random.default_rng(3)
    base = rng.normal(size=2000)
    e = [eps_lower_bound(base[:1000] + s, base[1000:]).eps_lb for s in (0.0, 1.0, 3.0)]
    assert e[0] <= 0.1 < e[1] < e[2]


def test_audit_rejects_bad_input():
    with pytest.raises(ValueError):
        eps_lower_bound([], [1.0])
    with pytest.raises(ValueError):
        eps_lower_bound([np.nan], [1.0])
    with pytest.raises(ValueError):
        eps_lower_bound([1.0], [1.0], alpha=0)


# ------------------------------------------------------------------ one-run audit (Steinke et al.)

def test_one_run_known_values():
    # all r guesses right, delta = 0: q^r = alpha
    for r, expected in ((10, 1.05), (100, 3.49), (1000, 5.81)):
        assert one_run_eps(r, r, r) == pytest.approx(expected, abs=0.01)
    assert one_run_eps(1000, 1000, 700) == pytest.approx(0.73, abs=0.01)
    assert one_run_eps(100, 100, 90) == pytest.approx(1.63, abs=0.01)
    assert one_run_eps(100, 100, 50) == 0.0


def test_one_run_p_value_properties():
    ps = [one_run_p_value(1000, 200, 150, e) for e in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(ps, ps[1:]))  # increasing in epsilon
    assert one_run_p_value(1000, 200, 150, 1.0, 1e-4) > one_run_p_value(1000, 200, 150, 1.0, 0.0)
    assert one_run_p_value(10, 5, 0, 1.0) == 1.0
    with pytest.raises(ValueError):
        one_run_p_value(10, 20, 5, 1.0)
    # delta costs epsilon
    assert one_run_eps(1000, 500, 450, delta=1e-4) < one_run_eps(1000, 500, 450)


def test_one_run_sweep_null_and_signal():
    rng = np.random.default_rng(11)
    ok = 0
    for _ in range(40):
        inc = rng.random(400) < 0.5
        ok += one_run_eps_lower_bound(rng.normal(size=400), inc).eps_lb <= 0.1
    assert ok >= 38
    inc = rng.random(1000) < 0.5
    s = rng.normal(size=1000) + 3 * inc
    r = one_run_eps_lower_bound(s, inc)
    assert 0.5 < r.eps_lb < r.eps_max
    assert r.eps_max == pytest.approx(one_run_max_certifiable_eps(1000, n_included=int(inc.sum())))
    assert r.correct <= r.guesses


# ------------------------------------------------------------------ bootstrap

def _data(n=600, shift=0.6, seed=0):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(shift, 1, n), rng.normal(0, 1, n)]
    return s, np.r_[np.ones(n), np.zeros(n)].astype(int)


def test_roc_metrics_match_harness_metrics():
    s, y = _data()
    a, b = roc_metrics(s, y), membership_metrics(s, y)
    for k in CI_METRICS:
        assert a[k] == pytest.approx(b[k], abs=1e-12), k


def test_vectorised_resample_matches_direct_computation():
    s, y = _data(200)
    rng = np.random.default_rng(5)
    ip = rng.integers(0, 200, 200)
    ineg = rng.integers(0, 200, 200) + 200
    idx = np.r_[ip, ineg]
    direct = membership_metrics(s[idx], y[idx])
    uniq, inv = np.unique(-s, return_inverse=True)
    pos = np.bincount(inv[ip], minlength=len(uniq))
    neg = np.bincount(inv[ineg], minlength=len(uniq))
    vec = roc_metrics_from_counts(pos, neg)
    for k in ("auc", "balanced_acc", "tpr_at_1%fpr"):
        assert vec[k][0] == pytest.approx(direct[k], abs=1e-12), k


def test_bootstrap_ci_contains_point_estimate_and_shrinks():
    s, y = _data(1000)
    point = membership_metrics(s, y)
    ci = bootstrap_ci(s, y, n_boot=500, seed=1)
    for k in CI_METRICS:
        lo, hi = ci[k]
        assert lo <= point[k] <= hi, k
    small = bootstrap_ci(*_data(100), n_boot=500, seed=1)
    assert (ci["auc"][1] - ci["auc"][0]) < (small["auc"][1] - small["auc"][0])
    assert bootstrap_ci(s, y, n_boot=300, seed=4) == bootstrap_ci(s, y, n_boot=300, seed=4)


def test_membership_summary_keys():
    s, y = _data(300)
    m = membership_summary(s, y, n_boot=100, delta=1e-5)
    for k in CI_METRICS:
        assert m[f"{k}_ci_lo"] <= m[k] <= m[f"{k}_ci_hi"]
    for k in ("eps_lb", "eps_lb_max_certifiable", "eps_lb_one_run", "eps_lb_one_run_max_certifiable"):
        assert 0 <= m[k] and math.isfinite(m[k])
    assert m["eps_lb"] <= m["eps_lb_max_certifiable"]


# ------------------------------------------------------------------ claimed vs audited table

def _synthetic_run(run_dir, rows):
    """A run store with one done cell per ``(defense, seed, privacy, metrics)`` row."""
    from bench.core.store import Store

    store = Store(run_dir)
    for i, (defense, seed, privacy, metrics) in enumerate(rows):
        eps = privacy["epsilon"] if privacy["epsilon"] is not None else math.inf
        cell = {"dataset": "digits", "epsilon": eps, "delta": 1e-5, "defense": defense, "seed": seed,
                "attacks": {}}
        store.record_cell(cell_key=f"k{i}", run_id="r", cell=cell, status="done", split={}, privacy=privacy,
                          info={}, error=None, wall_time=1.0, device="cpu", prov={}, metrics=metrics)
    store.close()
    return run_dir


def _priv(eps, unit="example", accountant="PRV (opacus)", extra=None):
    return {"epsilon": eps, "delta": 1e-5 if eps is not None else 0.0, "unit": unit, "accountant": accountant,
            "mechanism": "", "extra": extra or {}}


def _base_rows(dpsgd_rmia_eps_lb):
    return [
        ("none", 0, _priv(None, "none", "none"), [("utility", "test_acc", 0.9), ("rmia", "eps_lb", 3.0),
                                                 ("rmia", "eps_lb_max_certifiable", 4.87)]),
        ("dpsgd", 0, _priv(1.0), [("privacy", "epsilon_spent", 1.0), ("rmia", "eps_lb", 0.0),
                                  ("rmia", "eps_lb_max_certifiable", 4.87),
                                  ("one-run-audit", "eps_lb", 0.2), ("one-run-audit", "eps_lb_max_certifiable", 3.1)]),
        ("dpsgd", 1, _priv(1.0), [("privacy", "epsilon_spent", 1.0), ("rmia", "eps_lb", dpsgd_rmia_eps_lb),
                                  ("rmia", "eps_lb_max_certifiable", 4.87)]),
        # query unit with an example-level epsilon (compared with it), and a label unit without one
        ("dpsd", 0, _priv(1.0, "query", "PLD (dp_accounting)", {"epsilon_example_level": 50.0}),
         [("privacy", "epsilon_spent", 1.0), ("gen-distance", "eps_lb", 2.5)]),
        ("dpsd-label", 0, _priv(1.0, "label", "pure DP"), [("privacy", "epsilon_spent", 1.0),
                                                            ("rmia", "eps_lb", 2.0)]),
        # metric privacy is not a DP claim
        ("vae-metric", 0, {**_priv(1.0, "metric", "none (metric privacy)"), "delta": 0.0},
         [("privacy", "epsilon_spent", 1.0), ("rmia", "eps_lb", 2.0)]),
    ]


def test_audit_table_columns_and_comparisons(tmp_path):
    from reports.audit_table import audit_table, example_level_claims
    from reports.frame import load_frame

    run = _synthetic_run(tmp_path / "run", _base_rows(0.4))
    t = audit_table(load_frame(run), example_level_claims(run)).set_index("defense")
    assert {"claimed_epsilon", "delta", "unit", "accountant", "eps_hat", "eps_max_certifiable", "n_bounds",
            "audited_exceeds_claim", "eps_hat[rmia]", "eps_hat[one-run-audit]"} <= set(t.columns)
    assert t.loc["dpsgd", "eps_hat[rmia]"] == 0.4 and t.loc["dpsgd", "eps_hat[one-run-audit]"] == 0.2
    assert t.loc["dpsgd", "eps_hat"] == 0.4 and t.loc["dpsgd", "n_bounds"] == 3
    assert t.loc["dpsgd", "eps_max_certifiable"] == 4.87 and t.loc["dpsgd", "claimed_epsilon"] == 1.0
    assert t.loc["dpsd", "compared_epsilon"] == 50.0  # the example-level epsilon, not the query-unit one
    assert math.isinf(t.loc["dpsd-label", "compared_epsilon"]) and "label" in t.loc["dpsd-label", "comparison"]
    assert math.isinf(t.loc["vae-metric", "compared_epsilon"])
    assert math.isinf(t.loc["none", "claimed_epsilon"])
    assert not t["audited_exceeds_claim"].any()
    assert t["eps_hat_familywise"].isna().all() and t["exceeds_claim_familywise"].isna().all()
    # with family-wise bounds supplied, the flag columns follow them
    fw = {("digits", "dpsgd", "1"): 1.2, ("digits", "none", "inf"): 2.0}
    t2 = audit_table(load_frame(run), example_level_claims(run), fw).set_index("defense")
    assert bool(t2.loc["dpsgd", "exceeds_claim_familywise"]) and t2.loc["dpsgd", "eps_hat_familywise"] == 1.2
    flag = t2.loc["none", "exceeds_claim_familywise"]
    assert flag is not None and not flag  # not private: never compared


def test_audit_flag_in_report_and_check(tmp_path, cli):
    from reports.check import write_baseline
    from reports.write import write_report

    ok_run = _synthetic_run(tmp_path / "ok", _base_rows(0.4))
    bad_run = _synthetic_run(tmp_path / "bad", _base_rows(1.7))  # a 95 % bound above the claimed eps = 1
    base = write_baseline(ok_run, tmp_path / "base.json")
    for run, flagged in ((ok_run, False), (bad_run, True)):
        write_report(run)
        summary = (run / "report" / "summary.md").read_text()
        audit_md = (run / "report" / "audit.md").read_text()
        assert (run / "report" / "audit.csv").exists()
        assert ("WARNING: AUDITED ε EXCEEDS THE CLAIMED ε" in summary) is flagged
        assert ("WARNING" in audit_md) is flagged
        code, out, err = cli("check", run, "--baseline", base)
        fails = [ln for ln in out.splitlines() if ln.startswith("FAIL AUDIT")]
        if flagged:
            assert code == 1 and len(fails) == 1 and "digits/dpsgd/eps=1" in fails[0] and "1.700" in fails[0], out
            assert "rmia (seed 1)" in fails[0]
            assert "family-wise check unavailable" in fails[0]  # a synthetic store has no cached scores
        else:
            assert code == 0 and not fails, out
