"""Membership attacks end to end on sklearn digits (tiny protocol, few references), through the
runner: leakage on an overfit undefended model, near chance under DP-SGD at a small epsilon,
shared cached references, recorded keep masks, bootstrap intervals and epsilon bounds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.harness.runner import run_suite
from bench.harness.suite import load_suite
from bench.lib.membership.references import logit_scaled_confidence, reference_masks, shift_views

PROTOCOL = {"members": 200, "val": 150, "nonmembers": 200}
# calibrated with a constant learning rate (the cosine default overfits less on 8x8 digits)
NONE = {"arch": "mlp", "epochs": 60, "batch_size": 32, "lr": 0.003, "select_on_val": False, "lr_schedule": "constant"}
#: RDP keeps the noise calibration instant at this size (PRV's search takes tens of seconds here)
DPSGD = {"arch": "mlp", "epochs": 15, "batch_size": 200, "lr": 2.0, "max_grad_norm": 1.0, "accountant": "rdp"}
ATTACKS = {
    "lira": {"n_references": 4, "n_boot": 200},
    "rmia": {"n_references": 2, "n_population": 150, "n_boot": 200},
    "shadow": {"n_shadows": 2, "attack_model": "logreg", "n_boot": 200},  # the MLP path runs in suite 2
    "label-only": {"n_shadows": 2, "max_shift": 1, "rotation": 10.0, "n_boot": 200},
}


def _suite(tmp: Path, name: str, defenses: dict, attacks: dict, eps=(1.0,)):
    data = {"name": name, "datasets": {"digits": {"protocol": PROTOCOL}}, "epsilons": list(eps), "delta": 1e-5,
            "seeds": [0], "defenses": defenses, "attacks": attacks}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_suite(str(p))


def _metrics(run_dir: Path) -> dict:
    db = sqlite3.connect(run_dir / "results.sqlite")
    rows = db.execute("SELECT c.defense, m.source, m.name, m.value FROM metrics m JOIN cells c USING (cell_key)")
    out: dict = {}
    for d, s, n, v in rows:
        out.setdefault(d, {}).setdefault(s, {})[n] = v
    status = db.execute("SELECT defense, status, error FROM cells").fetchall()
    db.close()
    for d, st, err in status:
        assert st == "done", f"{d}: {err}"
    return out


def _arrays(run_dir: Path, defense: str, attack: str) -> dict:
    db = sqlite3.connect(run_dir / "results.sqlite")
    (path,) = db.execute("SELECT a.path FROM artifacts a JOIN cells c USING (cell_key) WHERE c.defense=? AND a.name=?",
                         (defense, f"attack:{attack}")).fetchone()
    db.close()
    with np.load(Path(path) / "arrays.npz") as z:
        return {k[len("array."):]: z[k] for k in z.files}


def _n_releases(cache: Path) -> int:
    return sum(1 for p in (cache / "release").glob("*/*") if (p / "manifest.json").exists())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mia")
    cache = tmp / "cache"
    suite = _suite(tmp, "mia-tiny", {"none": NONE, "dpsgd": DPSGD}, ATTACKS)
    data = tmp / "data"  # digits ships with scikit-learn: nothing is read from here
    res = run_suite(suite, tmp / "run", cache_dir=cache, data_dir=data, progress=False, echo=lambda m: None)
    assert res["failed"] == 0
    releases_after_first = _n_releases(cache)
    # a second suite on the same cell: ML-Leaks (one shadow) and LiRA offline reuse the cached zoo
    suite2 = _suite(tmp, "mia-tiny-2", {"none": NONE},
                    {"shadow": {"variant": "ml-leaks", "n_boot": 100},
                     "lira": {"n_references": 4, "mode": "offline", "fixed_variance": False, "n_boot": 100}})
    res2 = run_suite(suite2, tmp / "run2", cache_dir=cache, data_dir=data, progress=False, echo=lambda m: None)
    assert res2["failed"] == 0
    return {"tmp": tmp, "cache": cache, "m": _metrics(tmp / "run"), "m2": _metrics(tmp / "run2"),
            "releases": releases_after_first, "releases2": _n_releases(cache)}


def test_reference_zoo_is_shared_and_cached(runs):
    # per defense: 1 target + 4 references (LiRA's four include RMIA's, shadow's and label-only's two)
    assert runs["releases"] == 2 * (1 + 4)
    assert runs["releases2"] == runs["releases"]  # the second suite trained nothing


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_leaks_on_overfit_undefended_model(runs, attack):
    m = runs["m"]["none"][attack]
    floor = {"lira": 0.6, "rmia": 0.6, "shadow": 0.55, "label-only": 0.52}[attack]
    assert m["auc"] > floor, m
    assert m["auc_ci_lo"] <= m["auc"] <= m["auc_ci_hi"]
    assert m["tpr_at_1%fpr_ci_lo"] <= m["tpr_at_1%fpr"] <= m["tpr_at_1%fpr_ci_hi"]
    assert 0 <= m["eps_lb"] <= m["eps_lb_max_certifiable"]
    assert m["n_members"] == m["n_nonmembers"] == PROTOCOL["members"]
    assert m["n_references"] == ATTACKS[attack].get("n_references", ATTACKS[attack].get("n_shadows", 0))


@pytest.mark.parametrize("attack", ["lira", "rmia"])
def test_near_chance_under_dpsgd_small_epsilon(runs, attack):
    m = runs["m"]["dpsgd"][attack]
    assert abs(m["auc"] - 0.5) < 0.08, m
    assert m["eps_lb"] < 1.0


def test_variants_and_second_suite(runs):
    lira = runs["m"]["none"]["lira"]
    for v in ("online", "online_fixed", "offline", "offline_fixed"):
        assert 0 <= lira[f"{v}_auc"] <= 1
    assert lira["auc"] == lira["online_fixed_auc"]  # the defaults' headline
    m2 = runs["m2"]["none"]
    assert m2["lira"]["auc"] == pytest.approx(lira["offline_auc"])  # same references, same numbers
    # one shadow and top-3 probabilities: the weakest attack here, so only "better than chance"
    assert m2["shadow"]["n_references"] == 1 and m2["shadow"]["auc"] > 0.5
    rmia = runs["m"]["none"]["rmia"]
    assert 0 <= rmia["offline_a"] <= 1 and "online_auc" in rmia


def test_keep_masks_recorded(runs):
    arr = _arrays(runs["tmp"] / "run", "none", "lira")
    keep, rows = arr["ref_keep"].astype(bool), arr["ref_pool_rows"]
    assert keep.shape == (4, PROTOCOL["members"] + PROTOCOL["nonmembers"]) and len(rows) == keep.shape[1]
    assert np.all(keep.sum(0) == 2)  # every candidate IN for exactly half of the references
    assert np.all(keep[0] ^ keep[1])  # complementary pairs
    assert arr["scores"].shape == arr["labels"].shape == (2 * PROTOCOL["members"],)
    rm = _arrays(runs["tmp"] / "run", "none", "rmia")
    assert np.array_equal(rm["ref_keep"], arr["ref_keep"][:2])  # the same zoo


def test_reference_masks_are_prefix_stable():
    a, b = reference_masks(101, 3, 0, 0), reference_masks(101, 8, 0, 0)
    assert np.array_equal(a, b[:3])
    assert not np.array_equal(reference_masks(101, 2, 1, 0), a[:2])


def test_signals():
    import torch

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 50.0, -50.0]])
    y = torch.tensor([0, 1])
    phi = logit_scaled_confidence(logits, y)
    p = torch.softmax(logits.double(), 1)
    assert phi[0] == pytest.approx(float(torch.log(p[0, 0] / (1 - p[0, 0]))))
    assert phi[1] == pytest.approx(50.0, abs=1e-6)  # stable where 1 - p underflows
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1
    views = shift_views(x, 2)
    assert len(views) == 1 + 4 + 8 and all(float(v.sum()) == 1 for v in views)


def test_roc_plots(runs, tmp_path):
    from reports.roc import plot_roc, plot_run, roc_points

    arr = _arrays(runs["tmp"] / "run", "none", "rmia")
    fpr, tpr = roc_points(arr["scores"], arr["labels"])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    p = plot_roc((arr["scores"], arr["labels"]), tmp_path / "one.png", title="rmia")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paths = plot_run(runs["tmp"] / "run", tmp_path / "plots")
    assert len(paths) == 2 and all(q.stat().st_size > 10_000 for q in paths)


def test_lira_and_rmia_scores_on_synthetic_signals():
    from attacks.lira import lira_scores
    from attacks.rmia import pr_x, rmia_scores
    from bench.lib.membership.metrics import membership_metrics

    rng = np.random.default_rng(0)
    n, r = 400, 8
    keep = reference_masks(n, r, 0, 0)
    base = rng.normal(0, 2, n)  # per-example difficulty
    ref_phi = (base + 1.5 * keep + rng.normal(0, 0.5, (r, n)))[:, :, None]
    member = rng.random(n) < 0.5
    target = (base + 1.5 * member + rng.normal(0, 0.5, n))[:, None]
    for online in (True, False):
        for fixed in (True, False):
            s = lira_scores(target, ref_phi, keep, online=online, fixed_variance=fixed)
            assert membership_metrics(s, member.astype(int))["auc"] > 0.85
    # RMIA: probabilities, a member's target probability is boosted
    p_ref = 1 / (1 + np.exp(-ref_phi[:, :, 0]))
    p_t = 1 / (1 + np.exp(-target[:, 0]))
    pz = rng.uniform(0.2, 0.9, 300)
    s = rmia_scores(p_t, pr_x(p_ref, keep, offline=True, a=0.3), pz, pz)
    assert membership_metrics(s, member.astype(int))["auc"] > 0.8
    frac = rmia_scores(p_t, pr_x(p_ref, keep, offline=False, a=1.0), pz, pz, tie_break=False)
    tb = rmia_scores(p_t, pr_x(p_ref, keep, offline=False, a=1.0), pz, pz)
    assert np.all((tb - frac >= 0) & (tb - frac < 1 / len(pz)))  # tie-break never reorders fractions
