"""G-PATE (defenses/g_pate.py, bench.lib.synthetic.aggregation's projected voting): the members
reach the model only through the teachers' shards (read once, before training), one teacher moves
each coordinate's histogram by at most one vote (the sensitivity the accountant charges), the
per-query noise multiplier against dp_accounting's composition of the two Gaussian parts, the run
length is the most steps the budget pays for, the noise-free rule and the bin geometry, the same
seed gives the same generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_dense import Ctx
from test_dp_gan import CountingSplit
from test_dpsd import synthetic_task

import defenses.g_pate as gp
from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.lib.accounting import gaussian_rdp_epsilon, max_gaussian_compositions
from bench.lib.synthetic.aggregation import (
    back_project,
    confident_gnmax,
    confident_gnmax_noise_multiplier,
    projected_bin_votes,
)
from defenses.g_pate import GPATE, GPATEConfig, train_g_pate

TINY = {"teachers": 20, "sigma": 30.0, "sigma_thresh": 60.0, "z_dim": 8, "gf_dim": 8, "gfc_dim": 32,
        "batch_size": 8, "proj_dim": 4, "pretrain_teacher": 2, "steps_at_inf": 6, "n_synthetic": 400,
        "student_epochs": 1, "student_batch_size": 32, "student_arch": "mlp"}


def ctx(task, seed=0, epsilon=math.inf):
    c = Ctx(task, seed)
    c.epsilon, c.delta = epsilon, 1e-5
    return c


def cfg(**kw):
    return make_config(GPATEConfig, {**TINY, **kw}, "g-pate")


class FixedGrads:
    """A stand-in teacher ensemble whose image gradients are given."""

    def __init__(self, g):
        self.g, self.n = g, g.shape[0]

    def image_grads(self, x, y, sl=slice(None)):
        return self.g[sl]


def test_bins_histograms_and_back_projection():
    # identity projection, clip 1, 4 bins of width 0.5: edges -1, -0.5, 0, 0.5, 1 (1 in the last bin)
    g = torch.tensor([[[-1.0, 0.2]], [[-0.6, 0.9]], [[0.0, 1.0]], [[5.0, -0.25]]])  # (N=4, B=1, d=2)
    counts = projected_bin_votes(FixedGrads(g), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.eye(2),
                                 clip=1.0, nbins=4, chunk=3)
    for j in range(2):
        ref, _ = np.histogram(g[:, 0, j].clamp(-1, 1).numpy(), bins=np.linspace(-1, 1, 5))
        assert counts[0, j].tolist() == ref.tolist()
    assert counts.sum(-1).eq(4).all()
    # noise-free Confident-GNMax: answered only where the top bin holds >= thresh * N votes
    ans = confident_gnmax(counts, 4, thresh=0.5, sigma=0.0, sigma_thresh=0.0)
    assert ans.tolist() == [[0, 3]]  # coordinate 0: bins (2, 0, 1, 1) -> bin 0; coordinate 1: (0, 1, 1, 2) -> bin 3
    assert confident_gnmax(counts, 4, thresh=0.75, sigma=0.0, sigma_thresh=0.0).tolist() == [[-1, -1]]
    out = back_project(torch.tensor([[0, -1]]), torch.eye(2), clip=1.0, nbins=4)
    assert out.tolist() == [[-0.75, 0.0]]  # bin 0's centre; unanswered -> 0


def test_one_teacher_moves_each_histogram_by_at_most_one_vote():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        N, B, d, P = 9, 3, 12, 5
        g = torch.randn(N, B, d, generator=gen) * 0.3
        proj = torch.randn(d, P, generator=gen) / math.sqrt(P)
        g2 = g.clone()
        g2[int(torch.randint(0, N, (1,), generator=gen))] = torch.randn(B, d, generator=gen) * 3
        args = (torch.zeros(B, d), torch.zeros(B, dtype=torch.long), proj)
        a = projected_bin_votes(FixedGrads(g), *args, clip=0.5, nbins=6)
        b = projected_bin_votes(FixedGrads(g2), *args, clip=0.5, nbins=6)
        diff = b - a
        assert diff.abs().sum(-1).le(2).all() and diff.norm(dim=-1).le(math.sqrt(2) + 1e-6).all()
        assert (b.amax(-1) - a.amax(-1)).abs().le(1).all()


def test_noise_multiplier_is_the_composition_of_both_gaussian_parts():
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    sigma, sigma_t, n = 100.0, 600.0, 5000
    z = confident_gnmax_noise_multiplier(sigma, sigma_t)
    assert z == pytest.approx((1 / sigma_t ** 2 + 2 / sigma ** 2) ** -0.5)
    acc = rdp.RdpAccountant()
    # the threshold test: std sigma_t on a sensitivity-1 count; the answer: std sigma on a
    # histogram of L2 sensitivity sqrt 2, i.e. multiplier sigma / sqrt 2
    acc.compose(dp_event.GaussianDpEvent(sigma_t), n)
    acc.compose(dp_event.GaussianDpEvent(sigma / math.sqrt(2)), n)
    assert gaussian_rdp_epsilon([(z, n)], 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    with pytest.raises(ValueError):
        confident_gnmax_noise_multiplier(0.0, 1.0)


def test_run_length_is_what_the_budget_pays_for():
    task = synthetic_task(n=200)
    rel = GPATE(cfg()).fit(ctx(task, 0, 2.0))
    p = rel.privacy
    z = confident_gnmax_noise_multiplier(30.0, 60.0)
    per_step = 8 * 4
    budget = max_gaussian_compositions(z, 2.0, 1e-5)
    assert p.unit == "example" and p.extra["generator_steps"] == budget // per_step > 0
    assert p.extra["queries"] == budget // per_step * per_step
    assert p.epsilon == pytest.approx(gaussian_rdp_epsilon([(z, p.extra["queries"])], 1e-5)) and p.epsilon <= 2.0
    assert gaussian_rdp_epsilon([(z, p.extra["queries"] + per_step)], 1e-5) > 2.0  # one more step would not fit
    assert "data-independent" in p.accountant and p.extra["sigma"] == 30.0


def test_members_are_read_once_before_training_whatever_the_step_count():
    task = synthetic_task(n=200)
    reads = []
    for steps in (2, 7):
        members = CountingSplit(task.members._x, task.members._y)
        train_g_pate(members, 4, cfg(max_steps=steps), epsilon=3.0, delta=1e-5, seed=0)
        reads.append(dict(members.reads))
    assert reads[0] == reads[1] == {"x": 2, "y": 2}, reads


def test_same_seed_same_generator_other_seed_another():
    task = synthetic_task(n=200)
    r1 = GPATE(cfg(max_steps=4)).fit(ctx(task, 0, 4.0))
    r2 = GPATE(cfg(max_steps=4)).fit(ctx(task, 0, 4.0))
    g1, g2 = r1.modules["generator"].state_dict(), r2.modules["generator"].state_dict()
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    r3 = GPATE(cfg(max_steps=4)).fit(ctx(task, 1, 4.0))
    assert not torch.equal(r3.modules["generator"].state_dict()["fc0.weight"], g1["fc0.weight"])


def test_paper_settings_and_one_line_errors():
    assert gp.paper_setting(1.0)["teachers"] == 4000 and gp.paper_setting(10.0)["sigma"] == 100.0
    assert gp.paper_setting(2.0)["teachers"] == 4000 and gp.paper_setting(5.0)["teachers"] == 2000
    assert gp.paper_setting(math.inf)["z_dim"] == 100
    with pytest.raises(BenchError, match="thresh"):
        make_config(GPATEConfig, {"thresh": 0.0}, "g-pate")
    with pytest.raises(BenchError, match="sigma"):
        make_config(GPATEConfig, {"sigma": -1.0}, "g-pate")
    with pytest.raises(BenchError, match="cannot fill"):
        train_g_pate(synthetic_task(n=10).members, 4, cfg(), epsilon=1.0, delta=1e-5, seed=0)
    with pytest.raises(BenchError, match="does not pay"):
        train_g_pate(synthetic_task(n=200).members, 4, cfg(sigma=0.5, sigma_thresh=0.5), epsilon=0.1, delta=1e-5,
                     seed=0)
