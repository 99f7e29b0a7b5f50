"""DPSD (defenses/dpsd.py) and the shared pieces in bench/lib/distill/.

Fast (tiny configs, 8x8 synthetic tasks or sklearn digits, one CPU thread)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from scipy.stats import chisquare, norm

from bench.core.api import PrivacyReport, Release
from bench.core.config import make_config
from bench.lib import accounting as A
from bench.lib import distill as D
from bench.lib.models import build_model, spec_for
from bench.lib.tasks import Split, Task
from defenses.dpsd import DPSD, DPSDConfig

# ---------------------------------------------------------------------------------------------
# helpers: a small synthetic task whose private split can be locked, and a fake runner context


class LockedSplit(Split):
    """A split that raises on any access to its data once ``locked`` is set."""

    def __init__(self, x, y):
        object.__setattr__(self, "_x", x)
        object.__setattr__(self, "_y", y)
        object.__setattr__(self, "locked", False)
        object.__setattr__(self, "index", np.arange(len(y)))

    def _check(self):
        if self.locked:
            raise AssertionError("the private training set was read during transcription")

    @property
    def x(self):
        self._check()
        return self._x

    @property
    def y(self):
        self._check()
        return self._y

    def __len__(self):
        self._check()
        return int(self._y.shape[0])


def synthetic_task(n=200, size=8, classes=4, seed=0) -> Task:
    g = torch.Generator().manual_seed(seed)

    def make(m):
        y = torch.arange(m) % classes
        x = torch.rand(m, 1, size, size, generator=g) * 0.3
        for c in range(classes):  # a bright row per class: learnable
            x[y == c, 0, 2 * c % size, :] = 1.0
        return Split(x, y, np.arange(m))

    members = make(n)
    task = Task("synthetic", "classification", seed, classes, (1, size, size),
                LockedSplit(members.x, members.y), make(100), make(100), make(50),
                info={"fingerprint": f"synthetic{seed}", "sizes": {}})
    return task


class TeacherNet(torch.nn.Module):
    """A fixed 'teacher' for the synthetic task: reads the bright rows."""

    def __init__(self, classes=4, size=8, scale=1.0):
        super().__init__()
        self.lin = torch.nn.Linear(size * size, classes)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.zero_()
            for c in range(classes):
                self.lin.weight[c, (2 * c % size) * size:(2 * c % size + 1) * size] = 4.0 * scale

    def forward(self, x):
        return self.lin(torch.flatten(x, 1))


class FakeCtx:
    def __init__(self, task, teacher, epsilon=1.0, delta=1e-5, seed=0):
        self.task, self.teacher = task, teacher
        self.epsilon, self.delta, self.seed = epsilon, delta, seed
        self.device = torch.device("cpu")
        self.teacher_requests = []
        self.logs = []

    def fit_defense(self, name, config=None, **kw):
        self.teacher_requests.append((name, config))
        # the teacher was trained on the members; from now on they must not be read again
        object.__setattr__(self.task.members, "locked", True)
        return Release({"model": self.teacher}, {"model": {}}, PrivacyReport.non_private())

    def progress(self, it, **kw):
        return it

    def log(self, m):
        self.logs.append(m)


#: tiny and fast; a fixed noise multiplier (sigma = 20 C, i.e. z = 10 under the replace relation:
#: eps < 1 over 6 iterations) skips the calibration except where it is under test
TINY = {"iterations": 6, "batch_size": 16, "eval_every": 3, "latent_dim": 8, "generator_width": 8,
        "noise_multiplier": 20.0}


def fit(config, ctx):
    cfg = make_config(DPSD.Config, {**TINY, **config}, "dpsd")
    return DPSD(cfg).fit(ctx)


# ---------------------------------------------------------------------------------------------
# accounting


def analytic_gaussian_delta(eps, mu):
    """Balle & Wang (2018): the exact delta(eps) of a Gaussian mechanism with mu = sensitivity/std."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


def test_accountant_epsilon_matches_hand_computation():
    # T compositions of N(0, z^2) (sensitivity 1) = one Gaussian with mu = sqrt(T) / z (GDP)
    z, T, delta = 20.0, 50, 1e-5
    mu = math.sqrt(T) / z
    hand = brentq(lambda e: analytic_gaussian_delta(e, mu) - delta, 1e-6, 50)
    lib = A.gaussian_epsilon(z, T, delta, "pld")
    assert abs(lib - hand) < 0.01 * hand + 1e-3, (lib, hand)
    assert A.gaussian_epsilon(z, T, delta, "rdp") >= lib  # RDP is an upper bound


def test_calibration_spends_the_target_over_the_planned_iterations():
    z = A.calibrate_gaussian(1.0, 1e-5, 40, "pld")
    spent = A.gaussian_epsilon(z, 40, 1e-5, "pld")
    assert 0.97 <= spent <= 1.0 + 1e-6, spent
    mu = math.sqrt(40) / z
    assert analytic_gaussian_delta(1.0, mu) <= 1.1e-5


def test_pure_dp_composition_is_at_least_one_query_and_at_most_basic_composition():
    e1 = A.pure_dp_composition_epsilon(1.0, 1, 1e-5)
    e100 = A.pure_dp_composition_epsilon(1.0, 100, 1e-5)
    assert 0.99 <= e1 <= 1.05
    assert e1 < e100 <= 100.0


@pytest.mark.parametrize("composition,own_steps", [("parallel", 1), ("per-iteration", 6)])
def test_reported_epsilons_data_mode(composition, own_steps):
    task = synthetic_task()
    rel = fit({"mode": "data", "noise_multiplier": None, "query_composition": composition},
              FakeCtx(task, TeacherNet()))
    p = rel.privacy
    assert p.unit == "query" and p.delta == 1e-5
    assert 0.97 <= p.epsilon <= 1.0 + 1e-6  # sigma calibrated to the target
    sigma = p.extra["noise_multiplier"]
    assert sigma == pytest.approx(2 * p.extra["accountant_multiplier"])  # replace relation: sensitivity 2C
    # own unit: own_steps Gaussian mechanisms of sensitivity 2C, std sigma*C -> GDP hand computation
    hand = brentq(lambda e: analytic_gaussian_delta(e, math.sqrt(own_steps) * 2 / sigma) - 1e-5, 1e-6, 50)
    assert p.epsilon == pytest.approx(hand, rel=0.02)
    # example level: sensitivity 2C*sqrt(B) per iteration, 6 iterations
    mu = math.sqrt(6) * 2 * math.sqrt(16) / sigma
    hand = brentq(lambda e: analytic_gaussian_delta(e, mu) - 1e-5, 1e-6, 500)
    # reported with the RDP accountant: an upper bound on the exact value, and not a loose one
    assert hand <= p.extra["epsilon_example_level"] <= 1.3 * hand
    assert p.extra["epsilon_example_level"] > p.epsilon
    assert p.extra["queries"] == 6 * 16
    # the ledger was read after every evaluation round: epsilon curve is non-decreasing
    eps_curve = rel.info["history"]["epsilon"]
    assert all(a <= b + 1e-9 for a, b in zip(eps_curve, eps_curve[1:])) and eps_curve[-1] == pytest.approx(p.epsilon)


def test_reported_epsilons_label_mode():
    task = synthetic_task()
    rel = fit({"mode": "label"}, FakeCtx(task, TeacherNet(), epsilon=2.0))
    assert rel.privacy.unit == "label" and rel.privacy.epsilon == 2.0
    assert rel.privacy.extra["queries"] == 6 * 16
    assert rel.privacy.extra["epsilon_example_level"] > 2.0


# ---------------------------------------------------------------------------------------------
# mechanisms


def test_normalized_per_sample_vectors_have_norm_at_most_C():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(300, 10, generator=g) * 5
    t = torch.randn(300, 10, generator=g) * 5
    for loss in ("dkd", "kl"):
        for k in (None, 1, 3):
            for C in (0.1, 1.0, 7.0):
                ann = D.GaussianAnnotator(0.0, C, 1e-3, k, 1.0, loss, 4.0)
                target = ann(s, t)
                assert (ann.last_norms <= C).all()
                assert ann.last_norms.max() > 0.9 * C  # and they are really normalized, not zeroed
                assert not target.requires_grad
    big = torch.tensor([[1e6, -1e6, 0.0], [0.0, 0.0, 0.0]])
    assert (D.normalize_rows(big, 1.0, 1e-3).norm(dim=1) <= 1.0).all()


def test_topk_uses_only_the_student_logits():
    s = torch.tensor([[0.0, 5.0, 1.0, 3.0]])
    t1, t2 = torch.tensor([[9.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 9.0, 0.0]])
    for t in (t1, t2):
        ann = D.GaussianAnnotator(1.0, 1.0, 1e-3, 2, 1.0, "kl", 1.0, generator=torch.Generator().manual_seed(0))
        diff = ann(s, t) - s
        assert diff[0, 0] == 0 and diff[0, 2] == 0  # only coordinates 1 and 3 (student top-2) move
        assert diff[0, 1] != 0 and diff[0, 3] != 0


def test_data_target_is_detached_and_no_parameter_gradient_leaks():
    student = build_model({"name": "student-cnn", "in_channels": 1, "image_size": 8, "num_classes": 4})
    x = torch.rand(5, 1, 8, 8)
    s = student(x)
    ann = D.GaussianAnnotator(1.0, 1.0, 1e-3, None, 1.0, "dkd", 4.0)
    target = ann(s, torch.randn(5, 4))
    assert not target.requires_grad
    assert all(p.grad is None for p in student.parameters())  # the mechanism touched no parameter


def rr_expected(prior, label, eps):
    K = len(prior)
    order = np.argsort(-prior, kind="stable")
    e = math.exp(eps)
    kstar = int(np.argmax([e / (e + k - 1) * prior[order[:k]].sum() for k in range(1, K + 1)])) + 1
    top = order[:kstar]
    p = np.zeros(K)
    if label in top:
        p[top] = 1 / (e + kstar - 1)
        p[label] = e / (e + kstar - 1)
    else:
        p[top] = 1 / kstar
    return p, kstar


@pytest.mark.parametrize("prior,label,eps", [
    ([0.1] * 10, 3, 1.0),  # uniform prior: plain k-ary RR (k* = K)
    ([0.5, 0.3, 0.1, 0.05, 0.05], 1, 1.0),  # label inside the top-k*
    ([0.5, 0.3, 0.1, 0.05, 0.05], 4, 1.0),  # label outside the top-k*
    ([0.05, 0.05, 0.8, 0.05, 0.05], 2, 0.5),
])
def test_rr_with_prior_frequencies_match_the_formula(prior, label, eps):
    prior = np.asarray(prior, dtype=np.float64)
    prior = prior / prior.sum()
    n = 20000
    P = torch.tensor(prior, dtype=torch.float32).repeat(n, 1)
    out = D.rr_with_prior(torch.full((n,), label), P, eps, torch.Generator().manual_seed(123))
    counts = np.bincount(out.numpy(), minlength=len(prior))
    p, kstar = rr_expected(prior, label, eps)
    assert counts[p == 0].sum() == 0  # never outside the top-k* set
    support = p > 0
    if support.sum() > 1:
        res = chisquare(counts[support], p[support] * n)
        assert res.pvalue > 1e-3, (counts, p * n, kstar)
    else:
        assert counts[support][0] == n


def test_rr_prior_mix_one_is_plain_k_ary_randomized_response():
    # a sharp student prior alone would give k* = 1 (the student's own class, the teacher ignored);
    # mixing in the uniform distribution with weight 1 gives plain K-ary RR whatever the student says
    K, eps, n, label = 5, 1.0, 20000, 3
    student = torch.tensor([[9.0, 0.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
    teacher = F.one_hot(torch.full((n,), label), K).float()
    sharp = D.RRAnnotator(eps, torch.Generator().manual_seed(5))(student, teacher)
    assert (sharp == 0).all()
    out = D.RRAnnotator(eps, torch.Generator().manual_seed(5), prior_mix=1.0)(student, teacher)
    counts = np.bincount(out.numpy(), minlength=K)
    p = np.full(K, 1.0 / (math.exp(eps) + K - 1))
    p[label] = math.exp(eps) / (math.exp(eps) + K - 1)
    assert chisquare(counts, p * n).pvalue > 1e-3, counts


def test_rr_prior_warmup_uses_plain_rr_first_then_the_student_prior():
    # LP-2ST schedule: the first `prior_warmup` query batches are plain K-ary RR (the sharp
    # student prior is ignored, the teacher's label is kept with probability e^eps/(e^eps+K-1));
    # afterwards the student's prediction is the prior again (k* = 1: the student's class)
    K, eps, n, label = 5, 1.0, 20000, 3
    student = torch.tensor([[9.0, 0.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
    teacher = F.one_hot(torch.full((n,), label), K).float()
    ann = D.RRAnnotator(eps, torch.Generator().manual_seed(5), prior_warmup=2)
    for _ in range(2):
        counts = np.bincount(ann(student, teacher).numpy(), minlength=K)
        p = np.full(K, 1.0 / (math.exp(eps) + K - 1))
        p[label] = math.exp(eps) / (math.exp(eps) + K - 1)
        assert chisquare(counts, p * n).pvalue > 1e-3, counts
    assert (ann(student, teacher) == 0).all()


def test_rr_with_prior_is_eps_dp_for_every_pair_of_labels():
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    eps = 0.7
    rows = np.array([rr_expected(prior, y, eps)[0] for y in range(4)])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = rows[:, None, :] / rows[None, :, :]
    finite = np.isfinite(ratio) & (rows[None, :, :] > 0)
    assert (ratio[finite] <= math.exp(eps) + 1e-9).all()


# ---------------------------------------------------------------------------------------------
# data-free property, teacher isolation, determinism


@pytest.mark.parametrize("mode", ["data", "label"])
def test_private_set_is_never_read_after_the_teacher(mode):
    task = synthetic_task()
    ctx = FakeCtx(task, TeacherNet())
    rel = fit({"mode": mode}, ctx)  # LockedSplit raises on any access after fit_defense
    assert task.members.locked
    assert ctx.teacher_requests == [("none", {})]  # NoneConfig defaults: the shared teacher
    assert set(rel.modules) == {"model", "generator"}


class RecordingTeacher(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.outputs = []

    def forward(self, x):
        out = self.inner(x)
        self.outputs.append(out)
        return out


@pytest.mark.parametrize("mode", ["data", "label"])
def test_every_teacher_output_goes_through_the_mechanism(mode, monkeypatch):
    seen = []
    for cls in (D.GaussianAnnotator, D.RRAnnotator):
        orig = cls.__call__

        def spy(self, s, t, orig=orig):
            seen.append(t)
            return orig(self, s, t)

        monkeypatch.setattr(cls, "__call__", spy)
    teacher = RecordingTeacher(TeacherNet())
    fit({"mode": mode}, FakeCtx(synthetic_task(), teacher))
    assert len(teacher.outputs) == TINY["iterations"]
    assert len(seen) == len(teacher.outputs)
    assert all(a is b for a, b in zip(teacher.outputs, seen))


@pytest.mark.parametrize("mode", ["data", "label"])
def test_no_path_from_teacher_except_the_mechanism(mode, monkeypatch):
    """With the mechanism replaced by one that ignores the teacher, two very different teachers
    give bit-identical students and generators: nothing else of the teacher reaches them."""

    def blind_data(self, s, t):
        return (s - 0.1).detach()

    def blind_label(self, s, t):
        return s.argmax(1)

    monkeypatch.setattr(D.GaussianAnnotator, "__call__", blind_data)
    monkeypatch.setattr(D.RRAnnotator, "__call__", blind_label)
    rels = [fit({"mode": mode}, FakeCtx(synthetic_task(), TeacherNet(scale=s))) for s in (1.0, -3.0)]
    for name in ("model", "generator"):
        a, b = rels[0].modules[name].state_dict(), rels[1].modules[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # ...while the real mechanism does carry the teacher's information
    monkeypatch.undo()
    rels = [fit({"mode": mode}, FakeCtx(synthetic_task(), TeacherNet(scale=s))) for s in (1.0, -3.0)]
    a, b = rels[0].model.state_dict(), rels[1].model.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["data", "label"])
def test_same_seed_same_student_other_seed_other_student(mode):
    rels = [fit({"mode": mode}, FakeCtx(synthetic_task(), TeacherNet(), seed=s)) for s in (3, 3, 4)]
    a, b, c = (r.model.state_dict() for r in rels)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ema_student_is_released_and_lags_the_live_student():
    # the EMA of the student's weights is what gets released: with a decay close to 1 it stays near
    # the first iterate, while the live student (ema = 0) keeps moving
    init = D.seeded_init(11, lambda: build_model(spec_for(synthetic_task(), "student-cnn"))).state_dict()
    rels = {e: fit({"ema": e, "select_on_val": False, "lr_student": 0.05}, FakeCtx(synthetic_task(), TeacherNet()))
            for e in (0.0, 0.999)}

    def dist(sd):
        return sum(float((sd[k] - init[k]).norm()) for k in init)

    assert dist(rels[0.999].model.state_dict()) < 0.5 * dist(rels[0.0].model.state_dict())


def test_generator_every_skips_generator_steps():
    task = synthetic_task()
    g0 = D.seeded_init(13, lambda: build_model(spec_for(task, {"name": "dafl-generator", "latent_dim": 8,
                                                                  "width": 8})))
    params0 = {k: v.clone() for k, v in g0.named_parameters()}
    same = fit({"generator_every": 100, "select_on_val": False}, FakeCtx(synthetic_task(), TeacherNet()))
    moved = fit({"generator_every": 2, "select_on_val": False}, FakeCtx(synthetic_task(), TeacherNet()))
    gs, gm = dict(same.modules["generator"].named_parameters()), dict(moved.modules["generator"].named_parameters())
    assert all(torch.equal(gs[k], params0[k]) for k in params0)
    assert not all(torch.equal(gm[k], params0[k]) for k in params0)


def test_release_archs_rebuild_and_generator_range():
    rel = fit({"mode": "data"}, FakeCtx(synthetic_task(), TeacherNet()))
    for name, module in rel.modules.items():
        clone = build_model(rel.archs[name])
        clone.load_state_dict(module.state_dict())
    g = rel.modules["generator"].eval()
    x = g.sample(10, torch.Generator().manual_seed(0))
    assert x.shape == (10, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert rel.info["selected_by"].startswith("val_acc")
    assert rel.privacy.extra["selection_on_private_val"] is True


@pytest.mark.parametrize("mode,expected", [("data", "tanh"), ("label", "dataset-stats")])
def test_auto_generator_output_depends_on_the_mode(mode, expected):
    rel = fit({"mode": mode, "iterations": 2, "eval_every": 1}, FakeCtx(synthetic_task(), TeacherNet()))
    assert rel.info["generator_output"] == expected
    forced = fit({"mode": mode, "iterations": 2, "eval_every": 1, "generator_output": "tanh"},
                 FakeCtx(synthetic_task(), TeacherNet()))
    assert forced.info["generator_output"] == "tanh"


def test_generator_matches_task_shape_for_odd_sizes():
    spec = spec_for(synthetic_task(size=8), {"name": "dafl-generator", "latent_dim": 4})
    for size, ch in ((28, 1), (32, 3), (10, 1)):
        g = build_model({**spec, "image_size": size, "in_channels": ch})
        assert g(torch.randn(3, 4)).shape == (3, ch, size, size)


def test_generator_dataset_stats_output_matches_the_normalization_constants():
    # DAFL's BatchNorm output layer in pixel space: per-channel batch mean ~ out_mean, std ~ out_std
    # (before the [0, 1] clamp), for a randomly initialised generator and a large batch
    args = D.generator_spec_args("cifar10", "dataset-stats")
    mean, std = torch.tensor(args["out_mean"]), torch.tensor(args["out_std"])
    g = D.seeded_init(0, lambda: build_model({"name": "dafl-generator", "in_channels": 3, "image_size": 32,
                                              "num_classes": 10, "latent_dim": 16, "width": 16,
                                              "out_mean": args["out_mean"], "out_std": args["out_std"]}))
    x = g(torch.randn(256, 16, generator=torch.Generator().manual_seed(0)))
    assert x.min() >= 0 and x.max() <= 1
    m = x.mean((0, 2, 3))
    assert torch.allclose(m, mean, atol=0.06), (m, mean)
    assert (x.std((0, 2, 3)) <= std + 1e-4).all()  # clamping only shrinks the spread
    assert D.generator_spec_args("digits", "dataset-stats") == {}  # no published constants: tanh
    assert D.generator_spec_args("unregistered-task", "dataset-stats") == {}  # a task built by hand
    assert D.generator_spec_args("mnist", "tanh") == {}
    with pytest.raises(ValueError):
        D.generator_spec_args("mnist", "bogus")


def test_dkd_matches_its_definition_and_vanishes_when_student_equals_teacher():
    s = torch.randn(4, 5)
    t = torch.randn(4, 5)
    y = t.argmax(1)
    assert torch.allclose(D.dkd_per_sample(t, t, y), torch.zeros(4), atol=1e-4)
    # alpha=1, beta=1, one class only "non-target" mass -> both terms are KLs, hence >= 0
    assert (D.dkd_per_sample(s, t, y, 1.0, 1.0, 2.0) >= -1e-6).all()
    g = D.per_sample_logit_grad(s, t, "kl", temperature=1.0)
    assert torch.allclose(g, torch.softmax(s, 1) - torch.softmax(t, 1), atol=1e-5)  # closed form


# ---------------------------------------------------------------------------------------------
# end to end through the runner


def test_dpsd_end_to_end_through_the_runner(tmp_path):
    from bench.harness.runner import run_suite
    from bench.harness.suite import parse_suite

    data = {"name": "dpsd-tiny", "datasets": {"digits": {"protocol": {"members": 300, "val": 100, "nonmembers": 100}}},
            "epsilons": [1.0], "delta": 1.0e-5, "seeds": [0],
            "defenses": {"none": {"epochs": 2}, "dpsd": {**TINY, "teacher": {"epochs": 2}},
                         "dpdfd": {**TINY, "teacher": {"epochs": 2}}},
            "attacks": {}}
    res = run_suite(parse_suite("dpsd-tiny", data), tmp_path / "out", cache_dir=tmp_path / "cache",
                    data_dir=tmp_path / "data", echo=lambda m: None, progress=False)
    assert res["failed"] == 0 and res["done"] == 3, res
    from conftest import store_rows

    rows = store_rows(tmp_path / "out", "SELECT c.defense, m.name, m.value FROM metrics m JOIN cells c USING "
                                        "(cell_key) WHERE c.status='done'")
    got = {(r["defense"], r["name"]): r["value"] for r in rows}
    for d in ("dpsd", "dpdfd"):
        assert 0.0 <= got[(d, "test_acc")] <= 1.0
        assert got[(d, "epsilon_spent")] <= 1.0 + 1e-6
    # one teacher for none, dpsd and dpdfd: exactly 4 releases were built (none, dpsd, dpdfd) +
    # nothing else -> count release cache entries
    entries = list((tmp_path / "cache").rglob("manifest.json"))
    assert len([e for e in entries if "release" in str(e)]) == 3


# ---------------------------------------------------------------------------------------------
# config


#: ``dataclasses.asdict(DPSDConfig())`` before the shared base class (issue 16: every resolved
#: default stays the same)
DPSD_DEFAULTS = {
    'accountant': 'pld',
    'batch_size': 256,
    'dkd_alpha': 1.0,
    'dkd_beta': 8.0,
    'ema': 0.0,
    'eval_every': 20,
    'generator_every': 1,
    'generator_output': 'auto',
    'generator_width': 32,
    'iterations': 400,
    'latent_dim': 100,
    'loss': 'dkd',
    'lr_generator': 0.01,
    'lr_student': 0.003,
    'mode': 'data',
    'neighbouring': 'replace',
    'noise_multiplier': None,
    'noise_scale': 'per-sample',
    'norm_bound': 1.0,
    'own_unit_canaries': {},
    'query_composition': 'parallel',
    'rr_prior_mix': 0.0,
    'rr_prior_temperature': 1.0,
    'rr_prior_warmup': 200,
    'select_on_val': True,
    'stability': 0.001,
    'student_arch': 'student-cnn',
    'target_step': 1.0,
    'teacher': {},
    # the ensemble fields (issue 17): teachers = 1 is the single shared teacher of before
    'teacher_clients': {},
    'teachers': 1,
    'teacher_partition': 'record',
    'teacher_alpha': 0.5,
    'teacher_hidden': 64,
    'teacher_epochs': 60,
    'teacher_batch_size': 32,
    'teacher_lr': 1e-3,
    'query_every': 1,
    'generator_on_replay': False,
    'temperature': 1.0,
    'top_k': 0,
    'w_act': 0.1,
    'w_adv': 1.0,
    'w_ie': 5.0,
    'w_oh': 1.0,
}


def test_config_defaults_are_unchanged_by_the_shared_base():
    assert issubclass(DPSDConfig, D.TranscriptionConfig)
    assert dataclasses.asdict(DPSDConfig()) == DPSD_DEFAULTS
    shared = {f.name for f in dataclasses.fields(D.TranscriptionConfig)}
    assert shared <= set(DPSD_DEFAULTS) and "mode" not in shared and "w_adv" not in shared


@pytest.mark.parametrize("bad,msg", [
    ({"iterations": 0}, "dpsd: iterations, batch_size, norm_bound and eval_every must be positive"),
    ({"top_k": -1}, "dpsd: top_k must be >= 0"),
    ({"generator_every": 0}, "dpsd: generator_every must be >= 1"),
    ({"rr_prior_mix": 2.0}, "dpsd: ema must be in [0, 1) and rr_prior_mix in [0, 1]"),
    ({"rr_prior_warmup": -1}, "dpsd: rr_prior_warmup must be >= 0"),
    ({"generator_output": "bogus"}, "generator_output"),
])
def test_config_validation_messages(bad, msg):
    from bench.core.errors import BenchError

    with pytest.raises(BenchError, match=re.escape(msg)):
        make_config(DPSDConfig, bad, "dpsd")
