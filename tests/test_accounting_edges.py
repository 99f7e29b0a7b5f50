"""Edges of the privacy accounting that the DP proofs rely on (review "Numbers you can trust",
items 5-9): a mechanism's structure must not depend on private quantities, the release must not
carry noise-free statistics of the members, every claim has the right unit, and the docs state the
defaults the code runs.

Tiny settings on sklearn's embedded ``digits`` (no download), one CPU thread (conftest)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.api import PRIVACY_UNITS, PrivacyReport
from bench.core.cache import Cache
from bench.core.config import make_config
from bench.harness.context import CellContext, Env
from bench.lib.synthetic import partition, row_universe, shard_capacity
from bench.lib.synthetic.gan import CondDCGANGenerator
from bench.lib.tasks import build_task
from defenses import datalens as DL
from defenses import pate as P
from defenses import vae_metric as VM
from defenses.dpsgd import DPSGD, DPSGDConfig

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = {"members": 300, "val": 100, "nonmembers": 100}


def _task(seed=0):
    return build_task("digits", PROTOCOL, seed)


def _ctx(tmp_path, task, eps, seed=0, logs=None):
    env = Env(str(tmp_path / "run"), str(tmp_path / "cache"), "", "cpu", "test", progress=False)
    return CellContext(env, Cache(env.cache_dir), task, eps, 1e-5, seed, [] if logs is None else logs, {}, {})


def _neighbours(task, n_teachers, seed):
    """(A, B, changed teacher): B is A without one member of A's unique largest ``record`` shard,
    so the realised largest shard shrinks by one; the public row range is the same for both."""
    universe = row_universe(task)
    rows = np.asarray(task.members.index)
    shards = partition(rows, task.members.y.numpy(), n_teachers, "record", seed, universe)
    sizes = np.array([len(s) for s in shards])
    big = np.flatnonzero(sizes == sizes.max())
    # break ties: drop one member of every other largest shard (never the dataset's last row)
    top = int(max(task.members.index.max(), task.val.index.max(), task.nonmembers.index.max()))
    drop_a = [int(rows[shards[t]][0]) for t in big[1:]]
    a_rows = np.setdiff1d(rows, drop_a)
    t_big = int(big[0])
    victim = next(int(r) for r in rows[shards[t_big]] if int(r) != top)
    b_rows = np.setdiff1d(a_rows, [victim])
    a, b = task.derive(a_rows, "edge-a"), task.derive(b_rows, "edge-b")
    assert row_universe(a) == row_universe(b) == universe
    sa = partition(np.asarray(a.members.index), a.members.y.numpy(), n_teachers, "record", seed, universe)
    sb = partition(np.asarray(b.members.index), b.members.y.numpy(), n_teachers, "record", seed, universe)
    assert max(map(len, sa)) == max(map(len, sb)) + 1  # the realised largest shard changed
    return a, b, t_big


# ---------------------------------------------------------------------------------------------
# 5. PATE: the teachers' schedule depends on public quantities only

PATE_TINY = {"teachers": 10, "teacher_hidden": 8, "teacher_epochs": 2, "teacher_batch_size": 1, "max_queries": 100,
             "answers": 30, "threshold": 0.5, "student_arch": "mlp", "student_epochs": 1}


def _pate_teachers(monkeypatch, tmp_path, task, eps=8.0):
    """Fit PATE on ``task``; returns (optimizer steps of the stacked teachers, their parameters)."""
    record = {}
    orig = P.MLPClassifierEnsemble.fit

    def fit(self, *a, **k):
        steps = [0]
        step = self.opt.step

        def counted(*sa, **sk):
            steps[0] += 1
            return step(*sa, **sk)

        self.opt.step = counted
        out = orig(self, *a, **k)
        record["steps"] = steps[0]
        record["params"] = [p.detach().clone() for p in self.params]
        return out

    monkeypatch.setattr(P.MLPClassifierEnsemble, "fit", fit)
    P.PATE(make_config(P.PATEConfig, PATE_TINY, "pate")).fit(_ctx(tmp_path, task, eps))
    return record["steps"], record["params"]


def test_pate_teacher_schedule_ignores_the_realised_largest_shard(monkeypatch, tmp_path):
    a, b, changed = _neighbours(_task(), PATE_TINY["teachers"], seed=0)
    steps_a, params_a = _pate_teachers(monkeypatch, tmp_path / "a", a)
    steps_b, params_b = _pate_teachers(monkeypatch, tmp_path / "b", b)
    # every teacher (one stacked optimizer) takes the same number of steps on both member sets
    assert steps_a == steps_b
    # and one member changes one teacher: every other teacher is bitwise the same
    others = [i for i in range(PATE_TINY["teachers"]) if i != changed]
    for pa, pb in zip(params_a, params_b):
        assert torch.equal(pa[others], pb[others])
    assert any(not torch.equal(pa[changed], pb[changed]) for pa, pb in zip(params_a, params_b))


def test_pate_schedule_function_is_public():
    # the schedule is a function of the public slot capacity and the batch size alone
    assert P.teacher_batches_per_epoch(60, 32) == 2
    assert P.teacher_batches_per_epoch(15, 32) == 1
    task = _task()
    cap = shard_capacity(row_universe(task), 10)
    assert cap == math.ceil(row_universe(task) / 10)
    rows = np.asarray(task.members.index)
    shards = partition(rows, task.members.y.numpy(), 10, "record", 0, row_universe(task))
    assert max(map(len, shards)) <= cap


# ---------------------------------------------------------------------------------------------
# 6. DataLens: batch size, steps and queries do not depend on the private member count

DL_TINY = {"teachers": 30, "topk": 4, "sigma": 150.0, "thresh": 0.2, "z_dim": 8, "gf_dim": 8, "gfc_dim": 32,
           "teacher_hidden": 8, "n_synthetic": 600, "student_epochs": 1, "steps_at_inf": 4}


def _structure(task, seed=0, **cfg):
    c = make_config(DL.DataLensConfig, {**DL_TINY, **cfg}, "datalens")
    out = DL.train_generator(task.members, task.num_classes, c, epsilon=1.0, delta=1e-5, dataset="digits",
                             seed=seed, log=lambda m: None, universe=row_universe(task))
    return {k: out[k] for k in ("batch", "steps", "queries", "budget_queries", "noise_multiplier")}


def test_datalens_structure_is_independent_of_n():
    task = _task()
    n = len(task.members)
    assert n // DL_TINY["teachers"] != (n - 1) // DL_TINY["teachers"]  # the old rule would move
    rows = np.asarray(task.members.index)
    top = int(max(rows.max(), task.val.index.max(), task.nonmembers.index.max()))
    smaller = task.derive(np.setdiff1d(rows, [int(next(r for r in rows if r != top))]), "n-1")
    assert row_universe(smaller) == row_universe(task)
    sa, sb = _structure(task), _structure(smaller)
    assert sa == sb
    assert sa["batch"] == DL.DataLensConfig().batch_size


def test_datalens_default_batch_is_the_mnist_value():
    # the old rule min(30, n // teachers) gave 12 at MNIST's 48 000 members and 4000 teachers; the
    # fixed default keeps the MNIST default setting's numbers
    c = DL.DataLensConfig()
    assert c.batch_size == min(30, 48000 // c.teachers) == 12


def test_datalens_teacher_fakes_use_the_public_capacity(monkeypatch):
    # the latents drawn per step (one per shard slot) follow the public capacity, not the
    # realised largest shard
    task = _task()
    a, b, _ = _neighbours(task, DL_TINY["teachers"], seed=0)
    seen = {}
    orig = CondDCGANGenerator.sample_latent

    def sample_latent(self, n, generator=None):
        seen.setdefault(tag[0], []).append(n)
        return orig(self, n, generator)

    monkeypatch.setattr(CondDCGANGenerator, "sample_latent", sample_latent)
    tag = ["a"]
    _structure(a, max_steps=2)
    tag[0] = "b"
    _structure(b, max_steps=2)
    assert seen["a"] == seen["b"]
    assert seen["a"][0] >= shard_capacity(row_universe(task), DL_TINY["teachers"])


# ---------------------------------------------------------------------------------------------
# 7. no noise-free statistic of the members in release.info

def _walk(d, path=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield (*path, k), v
            yield from _walk(v, (*path, k))


def _released_keys(info):
    return {p for p, _ in _walk(info) if "not_released" not in p}


def test_dpsgd_info_has_no_member_loss(tmp_path):
    c = make_config(DPSGDConfig, {"arch": "mlp", "epochs": 1, "batch_size": 50, "lr": 0.5, "max_grad_norm": 1.0,
                                  "accountant": "rdp"}, "dpsgd")
    rel = DPSGD(c).fit(_ctx(tmp_path, _task(), 2.0))
    keys = _released_keys(rel.info)
    assert ("history", "train_loss") not in keys
    assert ("history", "val_acc") in keys  # accuracy of the DP model on the (non-member) val split


def test_pate_info_has_no_noise_free_member_statistic(tmp_path):
    rel = P.PATE(make_config(P.PATEConfig, PATE_TINY, "pate")).fit(_ctx(tmp_path, _task(), 8.0))
    keys = _released_keys(rel.info)
    for bad in [("history", "teacher_loss"), ("plurality_accuracy",), ("shard_sizes",)]:
        assert bad not in keys, bad
    # computed from DP outputs (the answered set and its noisy labels) and non-member data only
    assert ("answer_label_accuracy",) in keys and ("answered_rows",) in keys


def test_datalens_info_and_logs_have_no_noise_free_member_statistic(tmp_path):
    logs = []
    cfg = {**DL_TINY, "max_steps": 3}
    rel = DL.DataLens(make_config(DL.DataLensConfig, cfg, "datalens")).fit(_ctx(tmp_path, _task(), 1.0, logs=logs))
    keys = _released_keys(rel.info)
    for bad in [("history", "generator", "d_loss"), ("shard_sizes",)]:
        assert bad not in keys, bad
    assert ("history", "generator", "agreed") in keys  # a function of the noisy aggregate
    # the cell log is stored next to the release info: no realised shard sizes, no teacher loss
    text = "\n".join(logs)
    assert "teacher loss" not in text and "(shards " not in text


# ---------------------------------------------------------------------------------------------
# 8. vae-metric claims metric privacy, not example-level DP

def test_metric_unit():
    assert "metric" in PRIVACY_UNITS
    PrivacyReport(1.0, 0.0, "metric", "none (metric privacy)")
    with pytest.raises(ValueError):
        PrivacyReport(1.0, 0.0, "metrics", "none")
    assert VM.VAEMetric.privacy_unit == "metric"


def test_vae_metric_report_unit_is_metric(tmp_path):
    c = make_config(VM.VAEMetricConfig, {"latent_dim": 4, "hidden": 16, "vae_epochs": 1, "student_arch": "mlp",
                                         "student_epochs": 1}, "vae-metric")
    rel = VM.VAEMetric(c).fit(_ctx(tmp_path, _task(), 2.0))
    p = rel.privacy
    assert p.unit == "metric" and p.delta == 0.0 and p.epsilon == 2.0
    assert "metric" in p.mechanism.lower()
    assert "L2" in p.extra["metric"] and p.extra["metric_scale"] == pytest.approx(math.sqrt(2 * 4))
    assert p.extra.get("dp_epsilon") is None and "epsilon_example_level" not in p.extra
    again = PrivacyReport.from_dict(p.to_dict())
    assert again.unit == "metric"


# ---------------------------------------------------------------------------------------------
# 9. docs state the defaults the code runs

def _settings_table(md: str) -> dict[str, str]:
    sec = md.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in sec.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] not in ("parameter", "") and not set(cells[0]) <= set("-"):
            rows[cells[0]] = cells[1]
    return rows


def test_pate_doc_settings_match_config():
    rows = _settings_table((REPO / "docs/methods/pate.md").read_text())
    c = P.PATEConfig()
    assert int(rows["teachers"]) == c.teachers
    t = rows["teacher"]
    assert f"–{c.teacher_hidden}–" in t
    assert int(re.search(r"(\d+) epochs", t).group(1)) == c.teacher_epochs
    assert int(re.search(r"batch (\d+)", t).group(1)) == c.teacher_batch_size
    assert float(re.search(r"Adam ([0-9.e-]+)", t).group(1)) == c.teacher_lr
    assert float(rows["threshold"].split()[0]) == c.threshold
    assert float(rows["sigma_ratio"]) == c.sigma_ratio
    q, a = (int(v) for v in rows["max_queries, answers"].split(","))
    assert (q, a) == (c.max_queries, c.answers)
    s = rows["student"]
    assert f"`{c.student_arch}`" in s
    assert int(re.search(r"(\d+) epochs", s).group(1)) == c.student_epochs
    assert int(re.search(r"batch (\d+)", s).group(1)) == c.student_batch_size
    assert float(re.search(r"Adam ([0-9.e-]+)", s).group(1)) == c.student_lr


def test_row_universe_does_not_depend_on_the_member_set():
    """The shards' row range is the training split's size, not the largest row present: removing
    the member with the largest row index leaves it unchanged (failed before: it shrank)."""
    task = build_task("digits", {"members": 300, "val": 100, "nonmembers": 100}, 3)
    rows = np.asarray(task.members.index)
    last = int(rows.max())
    others = (task.val.index, task.nonmembers.index)
    if last < max(int(o.max()) for o in others):  # make the member hold the largest row
        task = task.derive(np.r_[rows, int(task.nonmembers.index.max())], "edge-top")
        rows = np.asarray(task.members.index)
        last = int(rows.max())
    without = task.derive(np.setdiff1d(rows, [last]), "edge-no-top")
    assert row_universe(task) == row_universe(without) == task.info["train_split_size"]


# ---------------------------------------------------------------------------------------------
# 10. the accountants' outputs are pinned: moving them into bench.lib.accounting (issue 16) kept
#     every number bit for bit (values computed before the move, same libraries)

def test_accountant_outputs_are_pinned():
    from bench.lib import accounting as A
    from bench.lib import distill as D

    assert A.gaussian_rdp_epsilon([(17.677, 1908)], 1e-5) == 13.929994182177289
    assert A.gaussian_rdp_epsilon([(3.0, 100), (1.5, 20), (7.0, 0)], 1e-6) == 32.23843939256122
    assert A.gaussian_rdp_epsilon([(3.0, 100)], 1e-5, orders=[1.5, 2, 4, 8, 16, 32]) == 21.23774221496145
    assert A.max_gaussian_compositions(17.677, 1.0, 1e-5) == 19
    assert A.max_gaussian_compositions(2.0, 8.0, 1e-5) == 9
    assert A.max_gaussian_compositions(5.0, 0.1, 1e-5) == 0
    assert A.calibrate_gaussian_scale(lambda s: [(3.75 * s, 4000), (s / math.sqrt(2), 1000)], 1.0,
                                      1e-5) == 193.36629136010515
    # PLD figures: pinned to 1e-12 relative (their last bits moved with a fresh install of the same
    # package versions on 2026-12-02: 1.271087773716238 vs 1.2710877737162374)
    assert A.gaussian_epsilon(3.0, 1, 1e-5, "pld") == pytest.approx(1.2710877737162374, rel=1e-12, abs=0)
    assert A.gaussian_epsilon(3.0, 1, 1e-5, "rdp") == 1.3862750468052074
    assert A.gaussian_epsilon(1.5, 400, 1e-5, "rdp") == 151.13281454682163
    assert A.gaussian_epsilon(2.0, 0, 1e-5, "pld") == 0.0
    assert A.calibrate_gaussian(1.0, 1e-5, 1, "pld") == pytest.approx(3.7309136899133675, rel=1e-12, abs=0)
    assert A.calibrate_gaussian(4.0, 1e-5, 400, "rdp") == 23.151472905821556
    assert A.pure_dp_composition_epsilon(1.0, 6400, 1e-5) == 3313.108166046599
    assert A.pure_dp_composition_epsilon(0.5, 10, 1e-6) == 5.001118042376184
    assert A.pld_points(0.05, 400) == 1.6e9 > A.PLD_MAX_POINTS
    assert A.dpsgd_epsilon(1.1, 0.01, 500, 1e-5, "rdp") == 1.3208673116394032
    assert A.dpsgd_noise_multiplier(2.0, 1e-5, 0.01, 500, "rdp") == 0.927734375
    # the distillation mechanism's plan and its three figures, through the same accountants
    plan = D.plan_gaussian(1.0, 1e-5, iterations=40, batch_size=16, sens=2.0, query_composition="per-iteration",
                           accountant="rdp", noise_multiplier=None, noise_scale="batch-mean")
    assert (plan.z, plan.applied) == (25.585363550444207, 3.198170443805526)
    led = D.GaussianLedger(plan.z, plan.z_example, 1e-5, "rdp", "per-iteration", released_multiplier=plan.z_released)
    led.step(40)
    extra = D.gaussian_privacy_extra(plan, led)
    assert (extra["epsilon_claimed"], extra["epsilon_released"], extra["epsilon_example_level"]) == (
        0.9999957013703089, 25.538091253682943, 198.72150737729046)
