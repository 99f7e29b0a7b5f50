"""PATE-GAN (defenses/pate_gan.py): the members reach the model only through the teachers' shards
(read once, before training; one member changes one shard), the Laplace accountant against the
closed form of the Laplace mechanism, the vote noise is the scale calibrated for the planned
queries and the reported epsilon meets the target, the same seed gives the same generator, and the
trained teachers tell held-out real examples from the generator's fakes (the signal the noisy
votes release)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_dense import Ctx
from test_dp_gan import CountingSplit
from test_dpsd import synthetic_task

import defenses.pate_gan as pg
from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.lib.accounting import calibrate_laplace, laplace_epsilon
from bench.lib.synthetic.partition import padded_shards
from defenses.pate_gan import PATEGAN, PATEGANConfig, laplace, noisy_vote, train_pate_gan

TINY = {"teachers": 20, "teacher_hidden": 8, "steps": 20, "batch_size": 16, "z_dim": 8, "gf_dim": 8, "gfc_dim": 32,
        "df_dim": 8, "n_synthetic": 400, "student_epochs": 2, "student_batch_size": 32, "accountant": "rdp",
        "pretrain_teacher": 2}


def ctx(task, seed=0, epsilon=math.inf):
    c = Ctx(task, seed)
    c.epsilon, c.delta = epsilon, 1e-5
    return c


def cfg(**kw):
    return make_config(PATEGANConfig, {**TINY, **kw}, "pate-gan")


def test_members_are_read_once_before_training_whatever_the_step_count():
    task = synthetic_task(n=200)
    reads = []
    for steps in (3, 12):
        members = CountingSplit(task.members._x, task.members._y)
        out = train_pate_gan(members, 4, cfg(steps=steps), epsilon=3.0, delta=1e-5, seed=0)
        reads.append(dict(members.reads))
        assert out["epsilon"] <= 3.0 + 1e-6
    # the shape probe, the padded shard table's images; the partition's labels and the shards' labels
    assert reads[0] == reads[1] == {"x": 2, "y": 2}, reads


def test_one_member_changes_exactly_one_shard():
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(1000, 600, replace=False))
    labels = rng.integers(0, 10, 600)

    def shard_rows(r, lab):
        pos, mask, M = padded_shards(r, lab, 25, "record", seed=3, universe=1000)
        assert M == 40 and mask.sum() == len(r)
        return [frozenset(r[pos[i][mask[i]]]) for i in range(25)]

    full = shard_rows(rows, labels)
    drop = 137
    keep = np.arange(600) != drop
    fewer = shard_rows(rows[keep], labels[keep])
    changed = [i for i in range(25) if full[i] != fewer[i]]
    assert len(changed) == 1 and full[changed[0]] - fewer[changed[0]] == {rows[drop]}


def test_laplace_accountant_matches_the_closed_form():
    # one Laplace mechanism, scale b / sensitivity 1: delta(eps) = 1 - exp((eps - 1/b) / 2), so
    # eps(delta) = 1/b + 2 ln(1 - delta)
    for b, delta in [(1.0, 0.1), (2.0, 0.05)]:
        assert laplace_epsilon(b, 1, delta) == pytest.approx(1 / b + 2 * math.log(1 - delta), abs=2e-3)
    # T compositions never exceed the pure composition T / b, and RDP is looser than PLD
    pld, rdp = laplace_epsilon(50.0, 400, 1e-5), laplace_epsilon(50.0, 400, 1e-5, "rdp")
    assert pld < rdp < 400 / 50.0
    b = calibrate_laplace(1.0, 1e-5, 400)
    assert 0.99 <= laplace_epsilon(b, 400, 1e-5) <= 1.0


def test_votes_use_the_calibrated_noise_and_the_report_meets_the_target(monkeypatch):
    seen = []
    orig = pg.noisy_vote

    def spy(votes, n, scale, gen):
        seen.append((n, scale))
        return orig(votes, n, scale, gen)

    monkeypatch.setattr(pg, "noisy_vote", spy)
    task = synthetic_task(n=200)
    c = cfg(steps=10, student_steps=2)
    rel = PATEGAN(c).fit(ctx(task, 0, 2.0))
    q = 10 * 2 * 16
    assert c.queries == q and len(seen) == 20
    b = calibrate_laplace(2.0, 1e-5, 2 * q, "rdp")
    assert all(n == 20 and s == pytest.approx(b) for n, s in seen)
    p = rel.privacy
    assert p.unit == "example" and p.extra["queries"] == q and p.extra["laplace_scale"] == pytest.approx(b)
    assert p.epsilon == pytest.approx(laplace_epsilon(b, 2 * q, 1e-5, "rdp")) and 1.9 <= p.epsilon <= 2.0 + 1e-6
    assert "data-independent" in p.accountant and "synthetic" in p.selection


def test_noisy_vote_and_laplace_draws():
    g = torch.Generator().manual_seed(0)
    x = laplace((200000,), 3.0, g)
    assert abs(float(x.mean())) < 0.05 and float(x.var()) == pytest.approx(2 * 9.0, rel=0.03)
    votes = torch.tensor([0, 4, 6, 10, 5])
    assert noisy_vote(votes, 10, 0.0, g).tolist() == [0, 0, 1, 1, 0]  # noise-free majority, tie -> fake
    many = noisy_vote(torch.full((20000,), 10), 10, 1e4, g)  # unanimous "real", drowned in noise
    assert 0.45 < float(many.mean()) < 0.55
    assert float(noisy_vote(torch.full((20000,), 10), 10, 2.0, g).mean()) > 0.9


def test_same_seed_same_generator_other_seed_another():
    task = synthetic_task(n=200)
    r1 = PATEGAN(cfg()).fit(ctx(task, 0, 4.0))
    r2 = PATEGAN(cfg()).fit(ctx(task, 0, 4.0))
    g1, g2 = r1.modules["generator"].state_dict(), r2.modules["generator"].state_dict()
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    r3 = PATEGAN(cfg()).fit(ctx(task, 1, 4.0))
    assert not torch.equal(r3.modules["generator"].state_dict()["fc0.weight"], g1["fc0.weight"])


def test_teachers_carry_the_signal_the_votes_release():
    # noise-free votes of the trained teachers: held-out real examples (never in a shard) are
    # called real by most teachers, the generator's current fakes by few
    task = synthetic_task(n=400)
    out = train_pate_gan(task.members, 4, cfg(steps=100, pretrain_teacher=10), epsilon=math.inf, delta=1e-5, seed=0)
    T, G = out["teachers"], out["generator"]
    real = (T.logits(task.val.x.reshape(len(task.val), -1), task.val.y) > 0).float().mean(0)
    with torch.no_grad():
        y = task.val.y
        fake = (T.logits(G(G.sample_latent(len(y), torch.Generator().manual_seed(0)), y).reshape(len(y), -1), y)
                > 0).float().mean(0)
    assert float(real.mean()) > 0.8 and float(fake.mean()) < 0.2
    assert float((noisy_vote((real * 20).round(), 20, 0.0, torch.Generator()) == 1).float().mean()) > 0.8


def test_bad_pate_gan_configs_are_one_line_errors():
    with pytest.raises(BenchError, match="teachers, teacher_hidden"):
        make_config(PATEGANConfig, {"teachers": 0}, "pate-gan")
    with pytest.raises(BenchError, match="accountant"):
        make_config(PATEGANConfig, {"accountant": "prv"}, "pate-gan")
    with pytest.raises(BenchError, match="cannot fill"):
        train_pate_gan(synthetic_task(n=10).members, 4, cfg(), epsilon=1.0, delta=1e-5, seed=0)
