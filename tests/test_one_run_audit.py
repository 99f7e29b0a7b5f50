"""The one-run audit (Steinke, Nasr, Jagielski 2023) with canaries: the canary draw and inclusion
mask, the refit of the target's defense on the derived member set, both directions of the bound
(a memorising model certifies a large epsilon, a data-independent one certifies nothing), and the
attack end to end through the runner (cached, DP-SGD bound below its claim)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from attacks.one_run_audit import OneRunAudit, canary_task, draw_canaries
from bench.core.api import PrivacyReport, Release
from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.lib.audit.bounds import one_run_max_certifiable_eps
from bench.lib.tasks import build_task

PROTOCOL = {"members": 200, "val": 100, "nonmembers": 200}


class NearestMember(nn.Module):
    """Memorises its training set: logit_c = -10 * distance to the nearest training image of class c."""

    def __init__(self, split, num_classes=10):
        super().__init__()
        self.x, self.y, self.k = split.x.flatten(1), split.y, num_classes

    def forward(self, x):
        d = torch.cdist(x.flatten(1), self.x)
        out = torch.full((len(x), self.k), 1e3)
        for c in range(self.k):
            if (self.y == c).any():
                out[:, c] = d[:, self.y == c].min(1).values
        return -10 * out


class Ctx:
    def __init__(self, task, model_for, seed=0):
        self.task, self.seed, self.defense, self.defense_config = task, seed, "fake", {"a": 1}
        self.epsilon, self.delta, self.device = 1.0, 1e-5, torch.device("cpu")
        self.model_for, self.requests, self.logs = model_for, [], []

    def fit_defense(self, name, config=None, *, task=None, epsilon=None, seed=None):
        self.requests.append({"name": name, "config": config, "task": task, "epsilon": epsilon, "seed": seed})
        return Release({"model": self.model_for(task)}, {}, PrivacyReport(1.0, 1e-5, "example", "test"))

    def log(self, m):
        self.logs.append(m)


@pytest.fixture(scope="module")
def task():
    return build_task("digits", PROTOCOL, 0)


def audit(**cfg):
    return OneRunAudit(make_config(OneRunAudit.Config, cfg, "one-run-audit"))


def test_canaries_and_derived_member_set(task):
    pos, inc = draw_canaries(task, 150, 0, 0)
    assert len(np.unique(pos)) == 150 and 40 < inc.sum() < 110
    pos2, inc2 = draw_canaries(task, 150, 0, 0)
    assert np.array_equal(pos, pos2) and np.array_equal(inc, inc2)  # seeded
    assert not np.array_equal(draw_canaries(task, 150, 1, 0)[1], inc)  # another cell seed, another draw
    derived, canaries, included = canary_task(task, 150, 0, 0)
    want = np.sort(np.r_[task.members.index, canaries.index[included]])
    assert np.array_equal(np.sort(derived.members.index), want)
    assert not np.isin(canaries.index, task.members.index).any()
    assert derived.fingerprint != task.fingerprint
    with pytest.raises(BenchError, match="non-member pool"):
        draw_canaries(task, 500, 0, 0)


def test_memorising_model_certifies_a_large_epsilon(task):
    ctx = Ctx(task, lambda t: NearestMember(t.members))
    res = audit(m=200).run(ctx, Release({"model": nn.Identity()}, {}, PrivacyReport(1.0, 1e-5, "example", "test")))
    m = res.metrics
    (req,) = ctx.requests
    assert req["name"] == "fake" and req["config"] == {"a": 1} and req["epsilon"] == 1.0 and req["seed"] == 0
    assert len(req["task"].members) == 200 + int(m["n_included"])
    ceiling = one_run_max_certifiable_eps(200, delta=1e-5, m=200, grid_size=OneRunAudit.Config().grid_size,
                                          n_included=int(m["n_included"]))
    assert m["eps_lb_max_certifiable"] == pytest.approx(ceiling)
    assert m["canary_auc"] > 0.95
    assert m["eps_lb"] > 0.6 * ceiling and m["eps_lb"] <= ceiling + 1e-9, m
    assert res.arrays["labels"].sum() == m["n_included"] and len(res.arrays["scores"]) == 200


def test_data_independent_model_certifies_nothing(task):
    torch.manual_seed(0)
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    for score in ("loss", "logit"):
        res = audit(m=200, score=score).run(Ctx(task, lambda t: fixed),
                                            Release({"model": fixed}, {}, PrivacyReport.non_private()))
        assert res.metrics["eps_lb"] == 0.0, res.metrics


def test_end_to_end_through_the_runner(tmp_path):
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    data = {"name": "audit", "datasets": {"digits": {"protocol": PROTOCOL}}, "epsilons": [1.0], "delta": 1e-5,
            "seeds": [0], "defenses": {
                "none": {"arch": "mlp", "epochs": 20, "batch_size": 32, "lr": 0.003, "select_on_val": False,
                         "lr_schedule": "constant"},
                "dpsgd": {"arch": "mlp", "epochs": 2, "batch_size": 64, "lr": 1.0, "max_grad_norm": 1.0,
                          "accountant": "rdp"}},
            "attacks": {"one-run-audit": {"m": 150}}}
    p = tmp_path / "audit.yaml"
    p.write_text(yaml.safe_dump(data))
    suite = load_suite(str(p))
    kw = {"cache_dir": tmp_path / "cache", "data_dir": tmp_path / "d", "progress": False, "echo": lambda m: None}
    res = run_suite(suite, tmp_path / "run", **kw)
    assert res["failed"] == 0, res
    n_rel = sum(1 for q in (tmp_path / "cache" / "release").glob("*/*") if (q / "manifest.json").exists())
    assert n_rel == 4  # two targets + one canary refit each
    db = sqlite3.connect(Path(tmp_path / "run" / "results.sqlite"))
    got = {(d, n): v for d, n, v in db.execute(
        "SELECT c.defense, m.name, m.value FROM metrics m JOIN cells c USING (cell_key) WHERE m.source='one-run-audit'")}
    db.close()
    for d in ("none", "dpsgd"):
        assert 0 <= got[(d, "eps_lb")] <= got[(d, "eps_lb_max_certifiable")]
        assert got[(d, "m")] == 150
    assert got[("dpsgd", "eps_lb")] <= 1.0  # below the accountant's claim
    assert got[("dpsgd", "audited_model_epsilon")] == pytest.approx(1.0, abs=0.05)
    # the family-wise recomputation from the cached arrays reproduces the stored bound (K = 1 per row)
    from reports.audit_table import audit_table, familywise_bounds
    from reports.frame import load_frame

    fw = familywise_bounds(tmp_path / "run")
    for d in ("none", "dpsgd"):
        assert fw[("digits", d, "inf" if d == "none" else "1")] == pytest.approx(got[(d, "eps_lb")], abs=1e-6)
    t = audit_table(load_frame(tmp_path / "run"), familywise=fw).set_index("defense")
    flag = t.loc["dpsgd", "exceeds_claim_familywise"]
    assert flag is not None and not flag and t.loc["dpsgd", "n_bounds"] == 1
    # a second run of another suite on the same cells reuses the cached canary refit
    res2 = run_suite(suite, tmp_path / "run2", **kw)
    assert res2["failed"] == 0 and res2["done"] == 2
    n_rel2 = sum(1 for q in (tmp_path / "cache" / "release").glob("*/*") if (q / "manifest.json").exists())
    assert n_rel2 == n_rel
