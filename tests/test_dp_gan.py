"""DP-GAN (defenses/dp_gan.py): the members reach the model only through the DP-SGD loader of the
discriminator, the accountant's epsilon agrees with an independent accountant (dp_accounting) for
the same sigma, sample rate and steps and meets the target, the discriminator's optimizer is
Opacus' DP optimizer with the planned noise and clip, the generator's step leaves the
discriminator alone, the same seed gives the same generator, and the non-private reference
(epsilon = inf) learns the synthetic task."""

from __future__ import annotations

import math

import pytest
import torch
from test_dense import Ctx
from test_dpsd import synthetic_task

import defenses.dp_gan as dpgan_mod
from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.lib.accounting import poisson_gaussian_epsilon
from bench.lib.tasks import Split
from defenses.dp_gan import DPGAN, DPGANConfig, train_dp_gan

TINY = {"steps": 30, "batch_size": 32, "z_dim": 8, "gf_dim": 8, "gfc_dim": 32, "df_dim": 8, "n_synthetic": 400,
        "student_epochs": 2, "student_batch_size": 32, "accountant": "rdp"}


class CountingSplit(Split):
    """Counts every read of the members' images and labels."""

    def __init__(self, x, y):
        object.__setattr__(self, "_x", x)
        object.__setattr__(self, "_y", y)
        object.__setattr__(self, "reads", {"x": 0, "y": 0})
        object.__setattr__(self, "index", None)

    @property
    def x(self):
        self.reads["x"] += 1
        return self._x

    @property
    def y(self):
        self.reads["y"] += 1
        return self._y

    def __len__(self):
        return int(self._y.shape[0])


def ctx(task, seed=0, epsilon=math.inf):
    c = Ctx(task, seed)
    c.epsilon, c.delta = epsilon, 1e-5
    return c


def cfg(**kw):
    return make_config(DPGANConfig, {**TINY, **kw}, "dp-gan")


def test_members_are_read_once_into_the_dp_loader_and_never_again():
    task = synthetic_task(n=200)
    members = CountingSplit(task.members._x, task.members._y)
    out = train_dp_gan(members, 4, cfg(), epsilon=2.0, delta=1e-5, seed=0, device="cpu")
    # one read of each for the TensorDataset behind Opacus' Poisson loader (plus the shape probe)
    assert members.reads["y"] == 1 and members.reads["x"] == 2, members.reads
    assert out["epsilon"] <= 2.0 + 1e-6


def test_epsilon_agrees_with_dp_accounting_and_meets_the_target():
    task = synthetic_task(n=200)
    out = train_dp_gan(task.members, 4, cfg(steps=40), epsilon=1.0, delta=1e-5, seed=0, device="cpu")
    assert out["accountant_history"] == [(out["sigma"], out["sample_rate"], 40)]
    assert out["sample_rate"] == pytest.approx(1 / math.ceil(200 / 32))
    hand = poisson_gaussian_epsilon(out["sigma"], out["sample_rate"], 40, 1e-5, "rdp")
    assert out["epsilon"] == pytest.approx(hand, rel=0.05)  # Opacus' RDP vs dp_accounting's RDP
    assert 0.9 <= out["epsilon"] <= 1.0 + 1e-6  # sigma calibrated to spend the target


def test_discriminator_optimizer_is_opacus_dp_sgd_with_the_planned_noise_and_clip(monkeypatch):
    from opacus import PrivacyEngine
    from opacus.optimizers import DPOptimizer

    seen = {}
    orig = PrivacyEngine.make_private

    def spy(self, **kw):
        out = orig(self, **kw)
        seen.update(optimizer=out[1], loader=out[2], kw=kw)
        return out

    monkeypatch.setattr(PrivacyEngine, "make_private", spy)
    task = synthetic_task(n=200)
    out = train_dp_gan(task.members, 4, cfg(max_grad_norm=0.5), epsilon=3.0, delta=1e-5, seed=0, device="cpu")
    opt = seen["optimizer"]
    assert isinstance(opt, DPOptimizer) and opt.max_grad_norm == 0.5
    assert opt.noise_multiplier == pytest.approx(out["sigma"]) and out["sigma"] > 0
    assert seen["kw"]["poisson_sampling"] is True
    assert opt.expected_batch_size == 200 // math.ceil(200 / 32)


def test_generator_step_moves_the_generator_only():
    torch.manual_seed(0)
    c = cfg()
    G = dpgan_mod.CondDCGANGenerator(1, 8, 4, c.z_dim, c.gf_dim, c.gfc_dim)
    D = dpgan_mod.CondDiscriminator(1, 8, 4, c.df_dim)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-2)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-2)
    d0 = [p.detach().clone() for p in D.parameters()]
    g0 = [p.detach().clone() for p in G.parameters()]
    dpgan_mod._generator_step(G, D, opt_g, opt_d, c, 4, torch.Generator().manual_seed(1), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    assert all(p.grad is None for p in D.parameters()) and all(p.requires_grad for p in D.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g0, G.parameters()))


def test_same_seed_same_generator_and_the_report():
    task = synthetic_task(n=200)
    r1 = DPGAN(cfg()).fit(ctx(task, 0, 4.0))
    r2 = DPGAN(cfg()).fit(ctx(task, 0, 4.0))
    g1, g2 = r1.modules["generator"].state_dict(), r2.modules["generator"].state_dict()
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    assert r1.privacy.unit == "example" and r1.privacy.epsilon <= 4.0 + 1e-6 and "Opacus" in r1.privacy.accountant
    assert r1.privacy.extra["noise_multiplier"] > 0 and "synthetic" in r1.privacy.selection
    r3 = DPGAN(cfg()).fit(ctx(task, 1, 4.0))
    assert not torch.equal(r3.modules["generator"].state_dict()["fc0.weight"], g1["fc0.weight"])


def test_non_private_reference_learns_the_task():
    task = synthetic_task(n=400)
    rel = DPGAN(cfg(steps=300, lr_d=2e-3, lr_g=2e-3, n_synthetic=800, student_epochs=5)).fit(ctx(task))
    assert math.isinf(rel.privacy.epsilon) and rel.privacy.extra["noise_multiplier"] == 0.0
    assert max(rel.info["history"]["student"]["real_val_acc"]) > 0.6  # chance 0.25


def test_bad_dp_gan_configs_are_one_line_errors():
    with pytest.raises(BenchError, match="steps, batch_size"):
        make_config(DPGANConfig, {"steps": 0}, "dp-gan")
    with pytest.raises(BenchError, match="max_grad_norm"):
        make_config(DPGANConfig, {"max_grad_norm": 0}, "dp-gan")
    with pytest.raises(BenchError, match="synthetic_val_frac"):
        make_config(DPGANConfig, {"synthetic_val_frac": 1.0}, "dp-gan")
