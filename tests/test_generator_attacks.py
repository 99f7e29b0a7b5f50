"""Attacks on released generators (gen-distance, gen-classifier, gen-utility), calibrated in both
directions: a generator that outputs the member images leaks (AUC ~ 1), a generator independent
of the member set does not (AUC ~ 0.5); releases without a generator are skipped, not failed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from attacks.gen_classifier import GenClassifier
from attacks.gen_distance import GenDistance
from attacks.gen_utility import GenUtility
from bench.core.api import PrivacyReport, Release
from bench.core.config import make_config
from bench.lib.generators import best_threshold, halves, knn_distances, privacy_loss_2fold, sample_synthetic
from bench.lib.models import build_model, spec_for
from bench.lib.tasks import build_task
from bench.lib.train import fit_classifier

PROTOCOL = {"members": 200, "val": 100, "nonmembers": 200}


class SplitGenerator(nn.Module):
    """A 'generator' that replays the images of a split (cycled); conditional when ``labels``."""

    def __init__(self, split, labels: bool = False):
        super().__init__()
        self.x, self.y, self.labels = split.x.clone(), split.y.clone(), labels

    def sample(self, n, generator=None, device="cpu"):
        perm = torch.randperm(len(self.x), generator=generator)
        idx = perm[torch.arange(n) % len(self.x)]
        return (self.x[idx], self.y[idx]) if self.labels else self.x[idx]


class Ctx:
    def __init__(self, task, seed=0, defense="fake"):
        self.task, self.seed, self.defense, self.defense_config = task, seed, defense, {}
        self.epsilon, self.delta, self.device = float("inf"), 1e-5, torch.device("cpu")
        self.logs: list[str] = []

    def log(self, m):
        self.logs.append(m)

    def progress(self, it, **kw):
        return it


@pytest.fixture(scope="module")
def task():
    return build_task("digits", PROTOCOL, 0)


@pytest.fixture(scope="module")
def student(task):
    torch.manual_seed(0)
    model, _ = fit_classifier(build_model(spec_for(task, "mlp")), task.members, task.val, epochs=15, lr=3e-3,
                              batch_size=32, select_on_val=False)
    return model.eval()


def release(model, generator=None):
    mods = {"model": model} if generator is None else {"model": model, "generator": generator}
    return Release(mods, {}, PrivacyReport.non_private())


def attack(cls, **cfg):
    return cls(make_config(cls.Config, cfg, cls.__name__))


FAST = {"n_boot": 100, "n_synthetic": 400}


@pytest.mark.parametrize("cls", [GenDistance, GenClassifier])
def test_memorising_generator_leaks(task, student, cls):
    res = attack(cls, **FAST).run(Ctx(task), release(student, SplitGenerator(task.members)))
    m = res.metrics
    assert m["auc"] >= 0.97, m
    assert m["privacy_loss"] >= 0.85 and m["heldout_balanced_acc"] >= 0.92, m
    assert m["tpr_at_1%fpr"] >= 0.8
    assert m["eps_lb"] > 1.0  # a generator that copies its members is far from private
    assert res.arrays["scores"].shape == (400,) and res.arrays["labels"].sum() == 200


@pytest.mark.parametrize("cls", [GenDistance, GenClassifier])
def test_generator_independent_of_members_is_at_chance(task, student, cls):
    # same distribution (test-split digits), no member among them
    res = attack(cls, **FAST).run(Ctx(task), release(student, SplitGenerator(task.test)))
    m = res.metrics
    assert abs(m["auc"] - 0.5) < 0.08, m
    assert abs(m["privacy_loss"]) < 0.2, m
    assert m["eps_lb"] < 0.5


def test_distance_attack_is_deterministic(task, student):
    rel = release(student, SplitGenerator(task.test))
    a = attack(GenDistance, **FAST).run(Ctx(task), rel)
    b = attack(GenDistance, **FAST).run(Ctx(task), rel)
    assert np.array_equal(a.arrays["scores"], b.arrays["scores"]) and a.metrics["auc"] == b.metrics["auc"]


@pytest.mark.parametrize("cls", [GenDistance, GenClassifier, GenUtility])
def test_release_without_generator_is_skipped(task, student, cls):
    ctx = Ctx(task, defense="none")
    res = attack(cls).run(ctx, release(student))
    assert res.metrics == {} and "no generator" in res.info["skipped"]
    assert ctx.logs and "skipped" in ctx.logs[0]


def test_utility_matrix(task, student):
    # conditional generator replaying the members: synthetic = real, so p2 ~ p1 and p3 ~ p4 ~ 1
    res = attack(GenUtility, n_train=200, n_test=300, epochs=15, lr=0.01, batch_size=32).run(
        Ctx(task), release(student, SplitGenerator(task.members, labels=True)))
    m = res.metrics
    assert res.info["label_source"] == "conditional generator"
    assert m["p1"] > 0.8 and m["p4"] > 0.9 and m["p3"] > 0.9
    assert m["p1_minus_p2"] == pytest.approx(m["p1"] - m["p2"]) and abs(m["p1_minus_p2"]) < 0.1
    # unconditional noise generator labelled by the student: p2 near chance, p1 unchanged
    noise = nn.Module()
    noise.sample = lambda n, generator=None, device="cpu": torch.rand(n, 1, 8, 8, generator=generator)
    res2 = attack(GenUtility, n_train=200, n_test=300, epochs=15, lr=0.01, batch_size=32).run(
        Ctx(task), release(student, noise))
    m2 = res2.metrics
    assert res2.info["label_source"].startswith("released student")
    assert m2["p1"] == pytest.approx(m["p1"])  # same real classifier recipe and seed
    # (noise labelled by a student still transfers a little: knowledge distillation on noise)
    assert m2["p2"] < m["p2"] - 0.25 and m2["p1_minus_p2"] > 0.25, (m, m2)


def test_helpers():
    q = torch.zeros(3, 1, 2, 2)
    s = torch.stack([torch.full((1, 2, 2), v) for v in (0.5, 1.0, 0.25)])
    d = knn_distances(q, s, k=2)
    assert np.allclose(d, [[0.5, 1.0]] * 3)  # ||0.25 * 1_4|| = 0.5, ||0.5 * 1_4|| = 1
    labels = np.r_[np.ones(50), np.zeros(50)].astype(int)
    a, b = halves(labels, 0)
    assert len(np.intersect1d(a, b)) == 0 and labels[a].sum() == 25 and labels[b].sum() == 25
    scores = np.r_[np.full(50, 2.0), np.full(50, 1.0)]
    assert best_threshold(scores, labels) == 2.0
    assert privacy_loss_2fold(scores, labels, 0)["privacy_loss"] == 1.0
    g = SplitGenerator(build_task("digits", PROTOCOL, 0).members, labels=True)
    x1, x2 = sample_synthetic(g, 30, 5), sample_synthetic(g, 30, 5)
    assert torch.equal(x1.x, x2.x) and torch.equal(x1.y, x2.y)


def test_suite_end_to_end_with_dpsd(tmp_path):
    """Through the runner: DPSD releases a generator (attacked), `none` does not (skipped, done)."""
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    dpsd = {"iterations": 6, "batch_size": 16, "eval_every": 3, "latent_dim": 8, "generator_width": 8,
            "noise_multiplier": 20.0, "teacher": {"arch": "mlp", "epochs": 3}}
    data = {"name": "gen", "datasets": {"digits": {"protocol": PROTOCOL}}, "epsilons": [1.0], "delta": 1e-5,
            "seeds": [0], "defenses": {"none": {"arch": "mlp", "epochs": 3}, "dpsd": dpsd},
            "attacks": {"gen-distance": {"n_synthetic": 300, "n_boot": 50},
                        "gen-classifier": {"n_synthetic": 300, "n_boot": 50},
                        "gen-utility": {"n_train": 200, "n_test": 200, "epochs": 2}}}
    p = tmp_path / "gen.yaml"
    p.write_text(yaml.safe_dump(data))
    res = run_suite(load_suite(str(p)), tmp_path / "run", cache_dir=tmp_path / "cache", data_dir=tmp_path / "d",
                    progress=False, echo=lambda m: None)
    assert res["failed"] == 0, res
    db = sqlite3.connect(Path(tmp_path / "run" / "results.sqlite"))
    rows = db.execute("SELECT c.defense, m.source, m.name, m.value FROM metrics m JOIN cells c USING (cell_key)")
    got = {(d, s, n): v for d, s, n, v in rows}
    db.close()
    for a in ("gen-distance", "gen-classifier"):
        assert ("dpsd", a, "privacy_loss") in got and ("dpsd", a, "auc") in got
        assert not any(k[0] == "none" and k[1] == a for k in got)
    assert 0 <= got[("dpsd", "gen-utility", "p2")] <= 1
    assert ("dpsd", "gen-utility", "p1_minus_p2") in got
    # family-wise bounds: recomputed from the cached scores at alpha / K; with alpha = K x 5 % they
    # are the stored 95 % bounds again (K = 2 bounds in the dpsd row, none in the skipped none row)
    from reports.audit_table import familywise_bounds

    fw = familywise_bounds(tmp_path / "run", alpha=0.1)
    stored = max(got[("dpsd", a, "eps_lb")] for a in ("gen-distance", "gen-classifier"))
    assert fw[("digits", "dpsd", "1")] == pytest.approx(stored, abs=1e-6)
    assert ("digits", "none", "inf") not in fw
    assert familywise_bounds(tmp_path / "run")[("digits", "dpsd", "1")] <= stored + 1e-9
