"""DPDFD (defenses/dpdfd.py): the three faults of the official snippet are fixed, the release is
data-free, the accounting matches a hand computation, and the same seed gives the same student.
Shares the helpers of test_dpsd.py (synthetic task with a lockable private split, fake context)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from scipy.optimize import brentq
from test_dpsd import FakeCtx, RecordingTeacher, TeacherNet, analytic_gaussian_delta, synthetic_task

from bench.core.config import make_config
from bench.lib import distill as D
from bench.lib.models import build_model
from defenses.dpdfd import DPDFD, DPDFDConfig

TINY = {"iterations": 6, "batch_size": 16, "eval_every": 3, "latent_dim": 8, "generator_width": 8,
        "noise_multiplier": 20.0}


def fit(config, ctx):
    return DPDFD(make_config(DPDFD.Config, {**TINY, **config}, "dpdfd")).fit(ctx)


def test_fault1_target_is_detached_so_the_student_gets_a_gradient():
    student = build_model({"name": "student-cnn", "in_channels": 1, "image_size": 8, "num_classes": 4})
    s = student(torch.rand(6, 1, 8, 8))
    ann = D.GaussianAnnotator(0.0, 1.0, 1e-3, None, 1.0, "kl", 1.0)
    target = ann(s, torch.randn(6, 4))
    assert not target.requires_grad
    loss = D.student_loss_fn("data")(s, target)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in student.parameters()) > 0
    # the snippet's bug, for contrast: a non-detached target gives an identically zero gradient
    s2 = student(torch.rand(6, 1, 8, 8))
    g = torch.randn(6, 4)
    bad_target = s2 - 1.0 * g  # keeps the graph of s2
    (bad,) = torch.autograd.grad(((s2 - bad_target) ** 2).sum(), s2)
    assert torch.count_nonzero(bad) == 0


def test_fault2_no_non_private_gradient_reaches_the_student_parameters():
    student = build_model({"name": "student-cnn", "in_channels": 1, "image_size": 8, "num_classes": 4})
    s = student(torch.rand(6, 1, 8, 8))
    D.GaussianAnnotator(1.0, 1.0, 1e-3, None, 1.0, "kl", 1.0)(s, torch.randn(6, 4))
    assert all(p.grad is None for p in student.parameters())


def test_fault3_normalization_is_per_sample_and_bounded_by_C():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(64, 10, generator=g)
    t = torch.randn(64, 10, generator=g) * 10
    t[0] *= 1e-4  # a near-agreeing row next to large ones: per-sample normalization still scales it to ~C
    for C in (0.5, 2.0):
        ann = D.GaussianAnnotator(0.0, C, 1e-3, None, 1.0, "kl", 1.0)
        target = ann(s, t)
        assert (ann.last_norms <= C).all()
        assert ann.last_norms.min() > 0.5 * C
        rows = (s - target) / C  # with sigma = 0 and eta = 1: gbar / C
        assert not torch.allclose(rows, rows.mean(0, keepdim=True).expand_as(rows))  # no batch-mean overwrite


def test_kl_logit_gradient_has_the_closed_form():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    for T in (1.0, 3.0):
        g = D.per_sample_logit_grad(s, t, "kl", temperature=T)
        assert torch.allclose(g, T * (torch.softmax(s / T, 1) - torch.softmax(t / T, 1)), atol=1e-5)


def test_accounting_and_both_epsilons():
    rel = fit({"noise_multiplier": None, "query_composition": "per-iteration"}, FakeCtx(synthetic_task(), TeacherNet()))
    p = rel.privacy
    assert p.unit == "query" and 0.97 <= p.epsilon <= 1.0 + 1e-6
    sigma = p.extra["noise_multiplier"]
    hand = brentq(lambda e: analytic_gaussian_delta(e, math.sqrt(6) * 2 / sigma) - 1e-5, 1e-6, 50)
    assert p.epsilon == pytest.approx(hand, rel=0.02)
    hand_ex = brentq(lambda e: analytic_gaussian_delta(e, math.sqrt(6) * 2 * 4 / sigma) - 1e-5, 1e-6, 500)
    assert hand_ex <= p.extra["epsilon_example_level"] <= 1.3 * hand_ex  # RDP upper bound


def test_data_free_teacher_isolation_and_shared_teacher():
    task = synthetic_task()
    ctx = FakeCtx(task, RecordingTeacher(TeacherNet()))
    seen = []
    orig = D.GaussianAnnotator.__call__

    def spy(self, s, t):
        seen.append(t)
        return orig(self, s, t)

    D.GaussianAnnotator.__call__ = spy
    try:
        rel = fit({}, ctx)  # the LockedSplit raises on any read of the members after fit_defense
    finally:
        D.GaussianAnnotator.__call__ = orig
    assert ctx.teacher_requests == [("none", {})]
    assert len(seen) == len(ctx.teacher.outputs) == TINY["iterations"]
    assert all(a is b for a, b in zip(seen, ctx.teacher.outputs))
    assert set(rel.archs) == {"model", "generator"}


def test_same_seed_same_student():
    a, b, c = (fit({}, FakeCtx(synthetic_task(), TeacherNet(), seed=s)).model.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


#: ``dataclasses.asdict(DPDFDConfig())`` before the shared base class (issue 16)
DPDFD_DEFAULTS = {
    'accountant': 'pld',
    'batch_size': 256,
    'ema': 0.0,
    'eval_every': 20,
    'generator_every': 1,
    'generator_output': 'tanh',
    'generator_width': 32,
    'iterations': 400,
    'latent_dim': 100,
    'lr_generator': 0.01,
    'lr_student': 0.003,
    'neighbouring': 'replace',
    'noise_multiplier': None,
    'noise_scale': 'per-sample',
    'norm_bound': 1.0,
    'own_unit_canaries': {},
    'query_composition': 'parallel',
    'select_on_val': True,
    'stability': 0.001,
    'student_arch': 'student-cnn',
    'target_step': 1.0,
    'teacher': {},
    # the ensemble fields (issue 17): teachers = 1 is the single shared teacher of before
    'teachers': 1,
    'teacher_clients': {},
    'teacher_partition': 'record',
    'teacher_alpha': 0.5,
    'teacher_hidden': 64,
    'teacher_epochs': 60,
    'teacher_batch_size': 32,
    'teacher_lr': 1e-3,
    'query_every': 1,
    'generator_on_replay': False,
    'temperature': 1.0,
    'w_act': 0.1,
    'w_ie': 5.0,
    'w_oh': 1.0,
}


def test_config_defaults_are_unchanged_by_the_shared_base():
    assert issubclass(DPDFDConfig, D.TranscriptionConfig)
    assert dataclasses.asdict(DPDFDConfig()) == DPDFD_DEFAULTS
    assert {f.name for f in dataclasses.fields(D.TranscriptionConfig)} == set(DPDFD_DEFAULTS)


@pytest.mark.parametrize("bad,msg", [
    ({"batch_size": 0}, "dpdfd: iterations, batch_size, norm_bound and eval_every must be positive"),
    ({"ema": 1.0}, "dpdfd: generator_every must be >= 1 and ema in [0, 1)"),
    ({"generator_output": "auto"}, "generator_output"),  # DPSD's ``auto`` is not DPDFD's
])
def test_config_validation_messages(bad, msg):
    from bench.core.errors import BenchError

    with pytest.raises(BenchError, match=re.escape(msg)):
        make_config(DPDFDConfig, bad, "dpdfd")
