"""Model-inversion attacks (gmi, kedmi, plgmi, mi-face), their shared judge, GAN priors, metrics
and image grids. Fast: metrics on hand-made inputs, and every attack end to end on sklearn's 8x8
digits with tiny GANs and few iterations (one shared run of a two-cell suite)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.lib import inversion as inv

# --------------------------------------------------------------------------------------------
# metrics on hand-made inputs
# --------------------------------------------------------------------------------------------


def test_topk_accuracy_on_known_labels():
    logits = np.array([[5.0, 1.0, 0.0], [0.0, 2.0, 3.0], [1.0, 0.0, 0.5], [0.0, 0.0, 9.0]])
    labels = np.array([0, 1, 2, 2])
    assert inv.topk_correct(logits, labels, 1).tolist() == [True, False, False, True]
    assert inv.topk_correct(logits, labels, 2).tolist() == [True, True, True, True]
    assert inv.topk_correct(logits, labels, 10).all()  # k larger than the class count


def test_knn_distance_is_zero_for_private_images():
    rng = np.random.default_rng(0)
    priv = rng.normal(size=(40, 6))
    plab = np.repeat(np.arange(4), 10)
    pick = np.array([3, 12, 25, 39])
    d, idx = inv.knn_distance(priv[pick], plab[pick], priv, plab)
    assert np.allclose(d, 0.0) and idx.tolist() == pick.tolist()
    # squared L2 to the nearest *same-class* example, not the nearest overall
    q = priv[0] + np.array([1.0, 0, 0, 0, 0, 0])
    d, _ = inv.knn_distance(q[None], [0], priv, plab)
    assert d[0] <= 1.0 + 1e-9
    d_other, idx_other = inv.knn_distance(priv[0][None], [1], priv, plab)
    assert d_other[0] > 0 and plab[idx_other[0]] == 1
    d_none, idx_none = inv.knn_distance(priv[:1], [7], priv, plab)  # class without private examples
    assert math.isnan(d_none[0]) and idx_none[0] == -1


def test_fid_identical_sets_is_zero_and_grows_with_shift():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(500, 8))
    assert inv.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    shifted = inv.fid_from_features(f, f + 2.0)
    assert shifted == pytest.approx(8 * 4.0, rel=0.05)  # ||mu1 - mu2||^2 = 8 * 2^2, same covariance
    # fewer samples than dimensions (singular covariances) still gives a finite number
    assert math.isfinite(inv.fid_from_features(f[:5], rng.normal(size=(300, 8))))
    assert math.isnan(inv.fid_from_features(f[:1], f))


def test_max_margin_loss():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    out = inv.max_margin_loss(logits, torch.tensor([0, 1]))
    assert out.tolist() == [-2.0, 3.0]


def test_lpips_random_backbone_code_path():
    model, reason = inv.lpips_model(random_backbone=True)
    assert model is not None, reason
    assert "RANDOM" in reason
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    y = torch.rand(3, 1, 8, 8, generator=g)
    same = inv.lpips_distance(model, x, x)
    diff = inv.lpips_distance(model, x, y)
    assert same.shape == (3,) and np.allclose(same, 0.0, atol=1e-6)
    assert (diff > 0).all()


def test_lpips_without_backbone_weights_is_reported_not_downloaded(monkeypatch, tmp_path):
    from bench.lib.inversion import metrics

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    monkeypatch.setattr(metrics, "_LPIPS", {})
    assert metrics.alexnet_weights_path() is None
    model, reason = metrics.lpips_model()
    assert model is None and "unavailable" in reason and "not in the torch hub cache" in reason


def test_evaluator_arch_is_registered_and_differs_from_targets():
    from bench.lib.models import arch_names, build_model

    assert "eval-cnn" in arch_names()
    m = build_model({"name": "eval-cnn", "in_channels": 1, "image_size": 8, "num_classes": 10})
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert m.penultimate(torch.zeros(2, 1, 8, 8)).shape == (2, 128)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


@pytest.mark.parametrize("size", [8, 28, 32])
def test_gan_shapes(size):
    G = inv.DCGenerator(z_dim=10, dim=4, out_channels=1, image_size=size)
    x = G(torch.randn(3, 10))
    assert x.shape == (3, 1, size, size) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert inv.WGANCritic(1, 4, size)(x).shape == (3,)
    f, logits = inv.KPlusOneDiscriminator(1, 4, size, num_classes=5, kernels=4, kernel_dim=3)(x)
    assert logits.shape == (3, 5) and f.shape[0] == 3
    Gc = inv.DCGenerator(z_dim=10, dim=4, out_channels=1, image_size=size, num_classes=5)
    y = torch.tensor([0, 3, 4])
    assert inv.ProjectionDiscriminator(1, 4, size, 5)(Gc(torch.randn(3, 10), y), y).shape == (3,)


def test_top_n_selection_is_disjoint_and_prefers_confident():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.55, 0.45]])
    idx, lab = inv.top_n_selection(probs, 2)
    assert idx[lab == 0].tolist() == [0, 1] and idx[lab == 1].tolist() == [2, 3]
    assert len(set(idx.tolist())) == len(idx)


def test_augment_keeps_shape_range_and_gradient():
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    out = inv.augment(x)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


#: ``dataclasses.asdict(Cls())`` of each config as it was before the GAN configs got one base
#: (GANConfig): the resolved defaults, hence every artifact key built from them, must not move
DEFAULTS = {
    "WGANConfig": {"z_dim": 100, "dim": 16, "epochs": 12, "batch_size": 64, "lr": 0.0002, "beta1": 0.5,
                   "beta2": 0.999, "n_critic": 5, "gp_weight": 10.0},
    "KEDMIGANConfig": {"z_dim": 100, "dim": 16, "epochs": 12, "batch_size": 64, "lr": 0.0002, "beta1": 0.5,
                       "beta2": 0.999, "n_critic": 5, "entropy_weight": 0.0001, "mbd_kernels": 32, "mbd_dim": 8},
    "PLGGANConfig": {"z_dim": 128, "dim": 16, "steps": 1500, "batch_size": 64, "lr": 0.0002, "beta1": 0.0,
                     "beta2": 0.9, "n_dis": 5, "top_n": 200, "alpha": 0.2, "hflip": False},
    "EvaluatorConfig": {"width": 16, "hidden": 128, "epochs": 4, "min_steps": 400, "batch_size": 128, "lr": 0.002,
                        "seed": 0, "protocol": None},
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_config_defaults_are_unchanged(name):
    import dataclasses

    cls = getattr(inv, name)
    assert dataclasses.asdict(cls()) == DEFAULTS[name]
    assert dataclasses.asdict(inv.resolve(cls, None, "x")) == DEFAULTS[name]


def test_gan_configs_share_one_base():
    from bench.core.errors import BenchError

    for cls in (inv.WGANConfig, inv.KEDMIGANConfig, inv.PLGGANConfig):
        assert issubclass(cls, inv.GANConfig)
        assert {"z_dim", "dim", "batch_size", "lr", "beta1", "beta2"} <= set(DEFAULTS[cls.__name__])
    for cls, key in ((inv.WGANConfig, "epochs"), (inv.KEDMIGANConfig, "n_critic"), (inv.PLGGANConfig, "top_n"),
                     (inv.PLGGANConfig, "dim")):
        with pytest.raises(BenchError, match=f"gan.{key} must be positive"):
            inv.resolve(cls, {key: 0}, "gan")
    with pytest.raises(BenchError, match="unknown config key 'gp_weight'"):  # WGAN-only field
        inv.resolve(inv.PLGGANConfig, {"gp_weight": 1.0}, "gan")
    # a config instance passes through resolve (validated), so typed and mapping configs both work
    cfg = inv.WGANConfig(dim=8)
    assert inv.resolve(inv.WGANConfig, cfg, "gan") is cfg
    with pytest.raises(BenchError, match="gan.dim must be positive"):
        inv.resolve(inv.WGANConfig, inv.WGANConfig(dim=0), "gan")


def test_artifact_builds_live_in_the_module_that_determines_them():
    """The harness keys an artifact on the source of the module defining its ``build`` (and that
    module's imports): the judge's and each prior's build are defined in their own module, and no
    key carries a hand-made source hash."""
    from bench.lib.tasks import build_task

    task = build_task("digits", {"kind": "inversion", "members": 100, "val": 50, "nonmembers": 100}, 0)

    class Recorded(Exception):
        pass

    class Ctx:
        device = torch.device("cpu")
        seed = 0

        def __init__(self):
            self.task, self.seen = task, []

        def task_for(self, kind, seed=None, protocol=None):
            return task

        def artifact(self, kind, key, build):
            self.seen.append((kind, key, build.__module__))
            raise Recorded

    target = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, task.num_classes))
    ctx = Ctx()
    for call in (lambda: inv.get_evaluator(ctx, None), lambda: inv.wgan_prior(ctx, None),
                 lambda: inv.kedmi_gan(ctx, target, None), lambda: inv.plg_gan(ctx, target, None)):
        with pytest.raises(Recorded):
            call()
    assert [(k, m) for k, _, m in ctx.seen] == [
        ("inversion-evaluator", "bench.lib.inversion.judge"), ("gan-wgangp", "bench.lib.inversion.prior_wgan"),
        ("gan-kedmi", "bench.lib.inversion.prior_kedmi"), ("gan-plgmi", "bench.lib.inversion.prior_plgmi")]
    for _, key, _ in ctx.seen:
        assert "code" not in key and key["version"] == inv.ARTIFACT_VERSION
    assert not hasattr(inv, "source_hash")


def test_attack_configs_nest_typed_gan_and_evaluator_configs():
    """``gan`` / ``evaluator`` are typed nested configs: a mapping is validated at parse time with
    a dotted path, the defaults are the library's, and ``evaluator.protocol`` keeps None (the
    suite's own protocol) apart from ``{}`` (the dataset's default sizes)."""
    import dataclasses

    from attacks.gmi import GMIConfig
    from attacks.kedmi import KEDMIConfig
    from attacks.mi_face import MIFaceConfig
    from attacks.plgmi import PLGMIConfig
    from bench.core.config import make_config
    from bench.core.errors import BenchError

    for cls, gan in ((GMIConfig, inv.WGANConfig), (KEDMIConfig, inv.KEDMIGANConfig), (PLGMIConfig, inv.PLGGANConfig),
                     (MIFaceConfig, None)):
        cfg = make_config(cls, {}, "attacks.x")
        assert cfg.evaluator == inv.EvaluatorConfig() and cfg.evaluator.protocol is None
        assert inv.common_eval_kwargs(cfg)["evaluator"] is cfg.evaluator
        if gan is not None:
            assert type(cfg.gan) is gan and dataclasses.asdict(cfg.gan) == DEFAULTS[gan.__name__]
            assert make_config(cls, {"gan": {"dim": "8"}}, "attacks.x").gan.dim == 8
            with pytest.raises(BenchError, match=r"^attacks\.x\.gan\.dim: expected an integer"):
                make_config(cls, {"gan": {"dim": "wide"}}, "attacks.x")
    assert make_config(GMIConfig, {"evaluator": {"protocol": {}}}, "a").evaluator.protocol == {}
    with pytest.raises(BenchError, match=r"^attacks\.gmi\.evaluator: unknown config key 'widht'"):
        make_config(GMIConfig, {"evaluator": {"widht": 3}}, "attacks.gmi")
    with pytest.raises(BenchError, match="gan.n_critic must be positive"):
        make_config(KEDMIConfig, {"gan": {"n_critic": 0}}, "attacks.kedmi")


def test_bad_gan_key_fails_at_suite_parse():
    from bench.core.errors import BenchError
    from bench.harness.suite import parse_suite

    data = {**SUITE, "attacks": {"gmi": {"gan": {"widht": 3}}}}
    with pytest.raises(BenchError, match="widht"):
        parse_suite("bad", data)


# --------------------------------------------------------------------------------------------
# every attack end to end (one shared run of a two-cell tiny suite)
# --------------------------------------------------------------------------------------------

#: one judge for all four attacks (same evaluator config), trained briefly on the tiny protocol
JUDGE = {"min_steps": 150}
ATTACKS = {
    "gmi": {"iterations": 25, "restarts": 3, "gan": {"dim": 8, "epochs": 1}, "evaluator": JUDGE},
    "kedmi": {"iterations": 25, "samples": 3, "gan": {"dim": 8, "epochs": 1, "mbd_kernels": 8}, "evaluator": JUDGE},
    "plgmi": {"iterations": 25, "restarts": 3, "gan": {"dim": 8, "steps": 5, "top_n": 20}, "evaluator": JUDGE},
    "mi-face": {"iterations": 40, "restarts": 3, "evaluator": JUDGE},
}

SUITE = {
    "name": "tiny-inversion",
    "datasets": {"digits": {"protocol": {"members": 300, "val": 100, "nonmembers": 300}}},
    "epsilons": [1.0],
    "delta": 1.0e-5,
    "seeds": [0],
    "defenses": {"none": {"arch": "mlp", "epochs": 20, "batch_size": 32, "lr": 0.003},
                 "dpsgd": {"arch": "mlp", "epochs": 3, "batch_size": 64, "lr": 1.0, "max_grad_norm": 1.0}},
    "attacks": ATTACKS,
}


@pytest.fixture(scope="module")
def inversion_run(tmp_path_factory):
    from bench.harness.runner import run_suite
    from bench.harness.suite import parse_suite

    base = tmp_path_factory.mktemp("inversion")
    path = base / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    suite = parse_suite("tiny-inversion", yaml.safe_load(path.read_text()))
    out, cache = base / "out", base / "cache"
    res = run_suite(suite, out, cache_dir=cache, data_dir=base / "data", echo=lambda m: None, progress=False)
    con = sqlite3.connect(out / "results.sqlite")
    con.row_factory = sqlite3.Row
    cells = [dict(r) for r in con.execute("SELECT * FROM cells")]
    metrics = [dict(r) for r in con.execute("SELECT c.defense, m.source, m.name, m.value FROM metrics m "
                                            "JOIN cells c USING (cell_key)")]
    con.close()
    return {"res": res, "out": out, "cache": cache, "cells": cells,
            "metrics": {(m["defense"], m["source"], m["name"]): m["value"] for m in metrics}}


def test_all_attacks_run_end_to_end(inversion_run):
    assert inversion_run["res"]["failed"] == 0, [c["error"] for c in inversion_run["cells"]]
    m = inversion_run["metrics"]
    for defense in ("none", "dpsgd"):
        assert ("inversion-target", "test_acc") in {(s, n) for (d, s, n) in m if d == defense}
        for attack in ATTACKS:
            for name in ("top1", "top1_std", "top2", "top1_all", "top5_all", "top1_selected", "target_acc",
                         "knn_dist", "fid", "eval_test_acc"):
                v = m[(defense, attack, name)]
                assert v is not None and math.isfinite(v), (defense, attack, name, v)
            assert 0.0 <= m[(defense, attack, "top1")] <= 1.0
            assert m[(defense, attack, "knn_dist")] >= 0 and m[(defense, attack, "fid")] >= 0
            # LPIPS: a number with the pretrained backbone, else NaN (stored as NULL) with the reason
            lp = m[(defense, attack, "lpips")]
            assert lp is None or lp >= 0
    # the judge is far better than chance even on the tiny digits protocol
    assert m[("none", "gmi", "eval_test_acc")] > 0.8


def test_attack_arrays_and_info(inversion_run):
    from bench.core.cache import read_bundle

    con = sqlite3.connect(inversion_run["out"] / "results.sqlite")
    rows = con.execute("SELECT name, path FROM artifacts WHERE name LIKE 'attack:%'").fetchall()
    con.close()
    assert {r[0] for r in rows} == {f"attack:{a}" for a in ATTACKS}
    for name, path in rows:
        b = read_bundle(Path(path))
        imgs = b["array.images"]
        n = 3
        assert imgs.shape == (5, n, 1, 8, 8), (name, imgs.shape)
        assert imgs.min() >= 0 and imgs.max() <= 1
        assert b["array.selected"].shape == (5,)
        assert b["array.classes"].tolist() == [0, 1, 2, 3, 4]
        assert "LPIPS" in b["__info__"]["lpips"]


def test_gan_prior_built_once_and_shared(inversion_run):
    cache = inversion_run["cache"]
    # one WGAN-GP prior (target-independent) and one evaluator for both cells; KEDMI and PLG-MI
    # GANs are per target (two targets)
    assert len(list((cache / "artifact-gan-wgangp").rglob("manifest.json"))) == 1
    assert len(list((cache / "artifact-inversion-evaluator").rglob("manifest.json"))) == 1
    assert len(list((cache / "artifact-gan-kedmi").rglob("manifest.json"))) == 2
    assert len(list((cache / "artifact-gan-plgmi").rglob("manifest.json"))) == 2
    logs = {c["defense"]: json.loads(c["info"])["logs"] for c in inversion_run["cells"]}
    first, second = ("none", "dpsgd") if any("miss: artifact-gan-wgangp" in x for x in logs["none"]) else ("dpsgd", "none")
    assert any(x.startswith("cache miss: artifact-gan-wgangp") for x in logs[first])
    assert any(x.startswith("cache hit: artifact-gan-wgangp") for x in logs[second])
    assert not any("miss: artifact-gan-wgangp" in x for x in logs[second])


def test_rerun_is_fully_cached(inversion_run, tmp_path):
    """A second run of the same suite into a new store rebuilds nothing (attacks, GANs, judge)."""
    from bench.harness.runner import run_suite
    from bench.harness.suite import parse_suite

    lines = []
    res = run_suite(parse_suite("tiny-inversion", SUITE), tmp_path / "again", cache_dir=inversion_run["cache"],
                    data_dir=tmp_path / "data", echo=lines.append, progress=False)
    assert res["done"] == 2 and res["failed"] == 0
    assert all("cached]" in x for x in lines if x.startswith("["))


def test_write_grids(inversion_run, tmp_path):
    from reports.inversion_grid import write_grids

    paths = write_grids(inversion_run["out"], tmp_path / "grids")
    names = {p.name for p in paths}
    for a in ATTACKS:
        assert f"inversion_digits_{a}.png" in names
        assert f"digits_none_epsinf_seed0_{a}.png" in names and f"digits_dpsgd_eps1_seed0_{a}.png" in names
    for p in paths:
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cell_grid_accepts_one_image_per_class(tmp_path):
    from reports.inversion_grid import cell_grid

    p = cell_grid(np.random.default_rng(0).random((3, 1, 6, 6)), tmp_path / "g.png", classes=[5, 6, 7])
    assert p.exists()
    with pytest.raises(ValueError):
        cell_grid(np.zeros((3, 6, 6)), tmp_path / "bad.png")


def test_judge_protocol_option_keeps_old_keys_and_reaches_task_for(tmp_path):
    """``evaluator.protocol``: None keeps the judge's cache key as before (no new field) and asks
    for the suite's own protocol; a mapping is passed to ``task_for`` and enters the key."""
    import torch

    from bench.core.config import make_config
    from bench.core.errors import BenchError
    from bench.lib.inversion import EvaluatorConfig, get_evaluator
    from bench.lib.tasks import build_task

    task = build_task("digits", {"members": 200, "val": 100, "nonmembers": 200}, 0)

    class Ctx:
        device = torch.device("cpu")

        def __init__(self):
            self.task, self.asked, self.keys = task, [], []

        def task_for(self, kind, seed=None, protocol=None):
            self.asked.append(protocol)
            return task

        def progress(self, it, **kw):
            return it

        def artifact(self, kind, key, build):
            self.keys.append(key)
            return build()

    for cfg, want in ((None, None), ({"protocol": {}}, {})):
        ctx = Ctx()
        _, info = get_evaluator(ctx, {"min_steps": 5, "epochs": 1, **(cfg or {})})
        assert ctx.asked == [want]
        assert ("protocol" in ctx.keys[0]["config"]) == (want is not None)
        assert 0 <= info["eval_test_acc"] <= 1
    for bad in ({"protocol": [1]}, {"protocol": {"kind": "inversion"}}):
        with pytest.raises(BenchError, match="evaluator.protocol"):
            make_config(EvaluatorConfig, bad, "evaluator")


def test_report_with_inversion_from_another_run(inversion_run, finished_run, tmp_path):
    """``bench report RUN --inversion-from RUN2``: RUN2's inversion metrics join RUN's rows (same
    dataset, defense, eps, seed) and nothing else of RUN2 does; the grids come from RUN2."""
    import pandas as pd

    from reports.frame import load_frame
    from reports.write import write_report

    out = tmp_path / "rep"
    write_report(finished_run["out"], out, inversion_from=inversion_run["out"])
    study = pd.read_csv(out / "study.csv")
    base = load_frame(finished_run["out"])
    merged_cols = [c for c in study.columns if c.startswith("gmi_")]
    assert merged_cols, study.columns
    none = study[study.defense == "none"].iloc[0]
    assert 0 <= none["gmi_top1"] <= 1
    md = (out / "study.md").read_text()
    assert "gmi: attack acc top-1 (%)" in md and "(seed 0)" in md  # the membership run has seeds 0 and 1
    assert list((out / "inversion").glob("inversion_digits_gmi*.png"))
    # utility and membership numbers are RUN's alone
    acc = base[(base.source == "utility") & (base.metric == "test_acc") & (base.defense == "none")]["value"]
    assert abs(study[study.defense == "none"].iloc[0]["test_acc_mean"] - acc.mean()) < 1e-12
