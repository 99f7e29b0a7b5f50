"""Baseline defenses (issue 6): DataLens, TL-DMI, PATE, VAE-metric.

Mechanism tests on tiny tensors (TopAgg sensitivity and accounting against a hand computation,
teacher independence, freezing, Confident-GNMax statistics against theory, metric-privacy noise),
then every defense end to end through the runner on sklearn ``digits`` (classification protocol,
and the inversion protocol through a probe attack of kind ``inversion``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from bench.core.api import Attack, AttackResult
from bench.core.errors import BenchError
from bench.core.registry import register_attack
from bench.lib import accounting as A
from bench.lib.synthetic import aggregation as AG
from bench.lib.synthetic.gan import CondDCGANGenerator
from bench.lib.synthetic.partition import partition
from bench.lib.synthetic.teachers import ConvTeacherEnsemble, LinearTeacherEnsemble, TeacherEnsemble
from defenses import datalens as DL
from defenses import pate as P
from defenses import tldmi as TL
from defenses import vae_metric as VM

# ---------------------------------------------------------------------------------------------
# DataLens: TopAgg


def _vote_vectors(grads, k, seed=0):
    idx, sign = AG.topk_stochastic_sign(grads, k, max_grad=0.0, generator=torch.Generator().manual_seed(seed))
    N, B, _ = grads.shape
    v = torch.zeros_like(grads)
    v.scatter_(2, idx, sign)
    return v


def test_topagg_votes_have_k_signed_entries_and_sum():
    g = torch.randn(6, 3, 40, generator=torch.Generator().manual_seed(0))
    k = 5
    v = _vote_vectors(g, k)
    assert torch.all((v != 0).sum(-1) == k)
    assert set(v.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # the selected coordinates are the top-k of |g|
    top = g.abs().topk(k, dim=-1).indices
    assert torch.all(torch.gather(v, 2, top) != 0)
    idx, sign = AG.topk_stochastic_sign(g, k, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(AG.vote_sum(idx, sign, 40), v.sum(0))
    # stochastic sign: with b = max |g| the top coordinate's sign is deterministic (prob 1)
    amax = g.abs().argmax(-1, keepdim=True)
    assert torch.all(torch.gather(v, 2, amax) == torch.gather(g.sign(), 2, amax))


def test_topagg_sign_probabilities():
    # one teacher, one image, k = d: P(+1) = 1/2 + g / (2 b) with b = max |g|
    g = torch.tensor([[[1.0, 0.5, -0.5, 0.0]]]).expand(20000, 1, 4).contiguous()
    idx, sign = AG.topk_stochastic_sign(g, 4, 0.0, torch.Generator().manual_seed(1))
    v = torch.zeros_like(g).scatter_(2, idx, sign)
    p_plus = (v[:, 0] > 0).float().mean(0)
    assert torch.allclose(p_plus, torch.tensor([1.0, 0.75, 0.25, 0.5]), atol=0.015)
    # max_grad caps b: |g| >= b gives a deterministic sign
    idx, sign = AG.topk_stochastic_sign(g, 4, 0.25, torch.Generator().manual_seed(1))
    v = torch.zeros_like(g).scatter_(2, idx, sign)
    assert torch.all(v[:, 0, :3] == torch.tensor([1.0, 1.0, -1.0]))


def test_topagg_sensitivity_is_two_sqrt_k():
    """Changing one teacher's data (here: its gradients, arbitrarily) changes the vote sum by at
    most 2 sqrt(k) in L2 per image, and the bound is attained."""
    gen = torch.Generator().manual_seed(2)
    N, B, d, k = 9, 4, 30, 6
    worst = 0.0
    for trial in range(200):
        g = torch.randn(N, B, d, generator=gen)
        g2 = g.clone()
        g2[trial % N] = torch.randn(B, d, generator=gen) * (10 ** (trial % 3))
        if trial % 5 == 0:
            g2[trial % N] = -g[trial % N]  # same coordinates, opposite signs: the worst case
        s = 100 + trial
        v1 = _vote_vectors(g, k, s).sum(0)
        v2 = _vote_vectors(g2, k, s).sum(0)
        diff = (v1 - v2).norm(dim=-1)
        worst = max(worst, float(diff.max()))
        assert torch.all(diff <= 2 * math.sqrt(k) + 1e-6)
    assert worst == pytest.approx(2 * math.sqrt(k))
    assert AG.query_noise_multiplier(5000.0, 200) == pytest.approx(5000.0 / (2 * math.sqrt(200)))


def _hand_epsilon(rdp_per_order, orders, delta):
    """Independent RDP -> (eps, delta) conversion (Canonne, Kamath & Steinke 2020, Prop. 12):
    eps = min_a rdp(a) + log(1 - 1/a) - log(delta * a) / (a - 1)."""
    best = math.inf
    for a, r in zip(orders, rdp_per_order):
        if a <= 1.01:
            continue
        best = min(best, r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1))
    return best


def test_topagg_accounting_matches_hand_computation():
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    k, sigma, delta = 200, 5000.0, 1e-5
    z = AG.query_noise_multiplier(sigma, k)
    for T in (1, 12, 600, 1908):
        lib = A.gaussian_rdp_epsilon([(z, T)], delta)
        hand = _hand_epsilon([T * 2 * k * a / sigma ** 2 for a in DEFAULT_RDP_ORDERS], DEFAULT_RDP_ORDERS, delta)
        assert lib == pytest.approx(hand, rel=1e-9)
        classic = min(T * 2 * k * a / sigma ** 2 + math.log(1 / delta) / (a - 1) for a in DEFAULT_RDP_ORDERS if a > 1)
        assert lib <= classic
    # the stopping rule: the budget's query count is the largest T with epsilon <= target
    tmax = A.max_gaussian_compositions(z, 1.0, delta)
    assert A.gaussian_rdp_epsilon([(z, tmax)], delta) <= 1.0 < A.gaussian_rdp_epsilon([(z, tmax + 1)], delta)
    assert 1800 < tmax < 2000  # the paper's MNIST eps = 1 setting: ~1.9k queries with this conversion


def test_topagg_is_the_chunked_vote_sum_then_the_noisy_threshold():
    """``topagg`` = teachers' image gradients chunk by chunk -> top-k stochastic signs -> vote sum ->
    noise and threshold, drawing from one generator in that order (DataLens' training loop)."""
    T = LinearTeacherEnsemble(5, 12, 3, torch.Generator().manual_seed(0), pieces=2)
    img = torch.rand(4, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    got = AG.topagg(T, img, y, k=3, max_grad=0.0, sigma=0.7, beta=0.2, chunk=2,
                    generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    votes = torch.zeros(4, 12)
    for a in range(0, 5, 2):
        idx, sign = AG.topk_stochastic_sign(T.image_grads(img, y, slice(a, a + 2)), 3, 0.0, g)
        votes += AG.vote_sum(idx, sign, 12)
    assert torch.equal(got, AG.threshold_votes(votes, 0.7, 0.2, 5, g))
    assert set(got.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_paper_setting_reads_the_dataset_table_and_records_the_mnist_fallback():
    from bench.lib.datasets.base import dataset_info

    for ds in ("mnist", "fashion-mnist"):
        table = dataset_info(ds).paper_settings["datalens"]
        for eps in table:
            ps = DL.paper_setting(ds, eps)
            assert (ps["topk"], ps["sigma"], ps["thresh"], ps["z_dim"]) == table[eps]
            assert ps["table"] == ds and ps["source"] == f"paper setting for eps={eps:g}"
    assert DL.paper_setting("fashion-mnist", 10.0)["topk"] == 350  # its own table, not MNIST's
    # digits has no DataLens setting: MNIST's numbers, and the source says so
    for eps in (1.0, 10.0, 3.0, math.inf):
        ps, ref = DL.paper_setting("digits", eps), DL.paper_setting("mnist", eps)
        assert {k: v for k, v in ps.items() if k != "source"} == {k: v for k, v in ref.items() if k != "source"}
        assert ps["source"] == "MNIST's table (no DataLens setting for digits): " + ref["source"]
    # the numbers pinned before the tables moved to the dataset classes (issue 16)
    assert DL.paper_setting("mnist", 1.0)["reference_queries"] == 1909
    assert DL.paper_setting("mnist", 10.0)["reference_queries"] == 1901
    assert DL.paper_setting("fashion-mnist", 10.0)["reference_queries"] == 2546
    assert DL.paper_setting("digits", 3.0)["sigma"] == 1845.367058005475


def _ensembles(N, dim, K, seed):
    g = torch.Generator().manual_seed(seed)
    return {"mlp": TeacherEnsemble(N, dim, K, 6, g),
            "linear": LinearTeacherEnsemble(N, dim, K, torch.Generator().manual_seed(seed), weight_decay=20.0),
            "maxout": LinearTeacherEnsemble(N, dim, K, torch.Generator().manual_seed(seed), weight_decay=20.0,
                                               pieces=3),
            # dim = 16: one 4 x 4 single-channel image
            "conv": ConvTeacherEnsemble(N, (1, 4, 4), K, torch.Generator().manual_seed(seed), filters=3,
                                        weight_decay=20.0)}


@pytest.mark.parametrize("kind", ["mlp", "linear", "maxout", "conv"])
def test_teacher_image_grads_and_independence(kind):
    gen = torch.Generator().manual_seed(3)
    N, M, dim, K = 4, 5, 16, 3
    T = _ensembles(N, dim, K, 3)[kind]
    with torch.no_grad():  # break the N(0, 0.02) symmetry so the check is not trivially small
        for p in T.params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    x = torch.rand(3, dim, generator=gen)
    y = torch.tensor([0, 2, 1])
    g = T.image_grads(x, y)
    assert g.shape == (N, 3, dim)
    for i in range(N):  # teacher i alone, scored by autograd
        xi = x.clone().requires_grad_(True)
        logit = T.logits(xi.unsqueeze(0), y.unsqueeze(0), None, slice(i, i + 1))[0]
        loss = torch.nn.functional.softplus(-logit).mean()
        (auto,) = torch.autograd.grad(loss, xi)
        assert torch.allclose(g[i], -auto, atol=1e-6)
        assert torch.allclose(T.image_grads(x, y, slice(i, i + 1))[0], g[i], atol=1e-6)
    if kind == "linear":  # closed form of a linear teacher: sigmoid(-D) / B * V[:, y]
        logit = T.logits(x, y)
        ref = torch.sigmoid(-logit).unsqueeze(-1) / 3 * T.V.detach().permute(0, 2, 1)[:, y, :]
        assert torch.allclose(g, ref, atol=1e-6)
    if kind == "maxout":  # closed form: sigmoid(-D) / B * V[:, y, r*], r* the class's active piece
        R = T.R
        V = T.V.detach().view(N, dim, K, R)
        s = (torch.matmul(x.unsqueeze(0), T.V.detach()) + T.c.detach()).view(N, 3, K, R)
        r_star = s[:, torch.arange(3), y, :].argmax(-1)  # (N, 3)
        logit = T.logits(x, y)
        for i in range(N):
            for j in range(3):
                ref = torch.sigmoid(-logit[i, j]) / 3 * V[i, :, y[j], r_star[i, j]]
                assert torch.allclose(g[i, j], ref, atol=1e-6)
    # one (fused) Adam over the stacked tensors = independent teachers: changing teacher 0's shard
    # leaves every other teacher's parameters bitwise unchanged
    xr = torch.rand(N, M, dim, generator=gen)
    yr = torch.randint(0, K, (N, M), generator=gen)
    mask = torch.ones(N, M, dtype=torch.bool)
    mask[2, 3:] = False
    xf = torch.rand(N, M, dim, generator=gen)
    runs = []
    for change in (False, True):
        T2 = _ensembles(N, dim, K, 4)[kind]
        xr2 = xr.clone()
        if change:
            xr2[0] = torch.rand(M, dim, generator=torch.Generator().manual_seed(9))
        for _ in range(3):
            T2.train_step(torch.cat([xr2, xf], 1), yr, mask)
        runs.append([p.detach().clone() for p in T2.params])
    moved = False
    for a, b in zip(*runs):
        assert torch.equal(a[1:], b[1:])
        moved |= not torch.equal(a[0], b[0])
    assert moved


def test_conv_teacher_is_each_teachers_own_convolution():
    """The grouped convolution scores teacher i's images with teacher i's filters only: every
    teacher's logits equal a plain conv2d -> per-class bias -> lrelu -> per-class linear head of its
    own parameters, on per-teacher and on shared inputs (MNIST's 28 x 28 and an odd-sized 3-channel 7 x 9 image)."""
    F_ = torch.nn.functional
    for shape in ((1, 28, 28), (3, 7, 9)):
        gen = torch.Generator().manual_seed(2)
        N, M, K, f = 3, 5, 4, 2
        T = ConvTeacherEnsemble(N, shape, K, torch.Generator().manual_seed(0), filters=f)
        with torch.no_grad():
            for p in T.params:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        dim = shape[0] * shape[1] * shape[2]
        x = torch.rand(N, M, dim, generator=gen)
        y = torch.randint(0, K, (N, M), generator=gen)
        out = T.logits(x, y)
        shared = T.logits(x[0], y[0])
        for i in range(N):
            h = F_.conv2d(x[i].view(M, *shape), T.Wc[i], stride=2, padding=2) + T.u[i][y[i]].view(M, f, 1, 1)
            s = F_.leaky_relu(h, 0.2).reshape(M, -1) @ T.V[i] + T.c[i]
            ref = s.gather(1, y[i].view(-1, 1)).squeeze(1)
            assert torch.allclose(out[i], ref, atol=1e-5)
            h0 = F_.conv2d(x[0].view(M, *shape), T.Wc[i], stride=2, padding=2) + T.u[i][y[0]].view(M, f, 1, 1)
            s0 = F_.leaky_relu(h0, 0.2).reshape(M, -1) @ T.V[i] + T.c[i]
            assert torch.allclose(shared[i], s0.gather(1, y[0].view(-1, 1)).squeeze(1), atol=1e-5)


def test_maxout_teacher_votes_depend_on_the_image():
    """A logistic-regression teacher pushes every image of a class along one direction (its input
    gradient is V[:, y] times a scalar); a maxout teacher's direction depends on which piece the
    image activates, so two images of one class can get different votes. pieces=1 is the linear
    teacher exactly."""
    gen = torch.Generator().manual_seed(5)
    N, dim, K = 3, 20, 2
    lin = LinearTeacherEnsemble(N, dim, K, torch.Generator().manual_seed(1))
    one = LinearTeacherEnsemble(N, dim, K, torch.Generator().manual_seed(1), pieces=1)
    mx = LinearTeacherEnsemble(N, dim, K, torch.Generator().manual_seed(1), pieces=4)
    x = torch.rand(64, dim, generator=gen)
    y = torch.zeros(64, dtype=torch.long)
    assert torch.equal(lin.image_grads(x, y), one.image_grads(x, y))

    def cos(g):  # cosine between image 0's direction and every other image's, per teacher
        g = torch.nn.functional.normalize(g, dim=-1)
        return (g[:, :1] * g[:, 1:]).sum(-1)

    assert torch.allclose(cos(lin.image_grads(x, y)), torch.ones(N, 63), atol=1e-5)
    assert (cos(mx.image_grads(x, y)) < 0.9).any(dim=1).all()


def test_generator_output_contrast_is_sample_only():
    """``output_contrast: autocontrast`` rescales each sampled image to span [0, 1] (a per-image
    affine map of the raw output); ``output_blur`` is a 3x3 Gaussian blur before it; ``forward``,
    the network the DP training regresses, stays raw, and the defaults sample the raw output."""
    raw = CondDCGANGenerator(1, 28, 10, z_dim=8, gf_dim=8, gfc_dim=32).eval()
    ac = CondDCGANGenerator(1, 28, 10, z_dim=8, gf_dim=8, gfc_dim=32, output_contrast="autocontrast").eval()
    ac.load_state_dict(raw.state_dict())
    xr, yr = raw.sample(50, generator=torch.Generator().manual_seed(3))
    xa, ya = ac.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(yr, ya)
    assert float(xr.amax((1, 2, 3)).max()) < 0.9  # an untrained generator's output is grey, not full-range
    assert torch.allclose(xa.amin((1, 2, 3)), torch.zeros(50)) and torch.allclose(xa.amax((1, 2, 3)), torch.ones(50))
    lo, hi = xr.amin((1, 2, 3), keepdim=True), xr.amax((1, 2, 3), keepdim=True)
    assert torch.allclose(xa, (xr - lo) / (hi - lo), atol=1e-5)
    z, y = torch.rand(4, 8), torch.arange(4)
    assert torch.equal(raw(z, y), ac(z, y))
    bl = CondDCGANGenerator(1, 28, 10, z_dim=8, gf_dim=8, gfc_dim=32, output_contrast="autocontrast",
                               output_blur=0.8).eval()
    bl.load_state_dict(raw.state_dict())
    xb, _ = bl.sample(50, generator=torch.Generator().manual_seed(3))
    k = torch.tensor([math.exp(-1 / (2 * 0.8 ** 2)), 1.0, math.exp(-1 / (2 * 0.8 ** 2))])
    k = k / k.sum()
    inner = (xr[:, :, 1:-1, 1:-1] * 0).clone()  # separable 3x3 Gaussian away from the border
    for a in range(3):
        for b in range(3):
            inner += k[a] * k[b] * xr[:, :, a:a + 26, b:b + 26]
    blo, bhi = xb.amin((1, 2, 3)), xb.amax((1, 2, 3))
    assert torch.allclose(blo, torch.zeros(50)) and torch.allclose(bhi, torch.ones(50))
    from torchvision.transforms.v2.functional import gaussian_blur
    full = gaussian_blur(xr, [3, 3], [0.8, 0.8])
    assert torch.allclose(full[:, :, 1:-1, 1:-1], inner, atol=1e-6)
    lo, hi = full.amin((1, 2, 3), keepdim=True), full.amax((1, 2, 3), keepdim=True)
    assert torch.allclose(xb, (full - lo) / (hi - lo), atol=1e-5)
    with pytest.raises(BenchError):
        CondDCGANGenerator(output_contrast="equalize")
    with pytest.raises(BenchError):
        CondDCGANGenerator(output_blur=-1.0)


def test_record_partition_one_member_one_shard():
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(1000, 600, replace=False))
    labels = rng.integers(0, 10, 600)
    shards = partition(rows, labels, 20, "record", seed=5, universe=1000)
    flat = np.concatenate(shards)
    assert len(flat) == 600 and len(np.unique(flat)) == 600
    owner = {int(rows[p]): t for t, s in enumerate(shards) for p in s}
    # remove one member: only its teacher's shard changes (as a set of dataset rows)
    drop = 17
    rows2 = np.delete(rows, drop)
    shards2 = partition(rows2, np.delete(labels, drop), 20, "record", seed=5, universe=1000)
    changed = [t for t in range(20) if set(rows[shards[t]]) != set(rows2[shards2[t]])]
    assert changed == [owner[int(rows[drop])]]
    bal = partition(rows, labels, 20, "balanced", seed=5)
    assert all(len(s) == 30 for s in bal) and len(np.unique(np.concatenate(bal))) == 600


# ---------------------------------------------------------------------------------------------
# TL-DMI: freezing


def test_freezing_keeps_parameters_and_batchnorm_statistics():
    from bench.lib.tasks import Split
    from bench.lib.train import fit_classifier

    torch.manual_seed(0)
    model = TL.TLCNN(1, 8, 4, width=4, hidden=8)
    # pretend pre-training moved the BatchNorm statistics away from their initial values
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 1, 8, 8) * 3)
    model.freeze(2)
    before = TL.frozen_snapshot(model)
    assert any("running_mean" in k for k in before) and len(before) > 0
    trainable_before = {k: v.clone() for k, v in model.features[2].state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(80, 1, 8, 8, generator=gen), torch.randint(0, 4, (80,), generator=gen)
    model, _ = fit_classifier(model, Split(x, y), Split(x[:20], y[:20]), epochs=3, lr=1e-2, batch_size=16,
                              generator=gen, select_on_val=False)
    after = TL.frozen_snapshot(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(not p.requires_grad for b in model.blocks()[:2] for p in b.parameters())
    # the unfrozen block did train (parameters and statistics)
    now = model.features[2].state_dict()
    assert not torch.equal(trainable_before["0.weight"], now["0.weight"])
    assert not torch.equal(trainable_before["1.running_mean"], now["1.running_mean"])
    # train() keeps frozen blocks in eval mode
    model.train()
    assert not model.features[0].training and not model.features[1].training and model.features[2].training


# ---------------------------------------------------------------------------------------------
# PATE: Confident-GNMax statistics and accounting


def test_confident_gnmax_frequencies_match_theory():
    from scipy import integrate
    from scipy.stats import norm

    counts = torch.tensor([[60.0, 30.0, 10.0]]).expand(40000, 3).contiguous()
    sigma1, sigma2, T = 25.0, 20.0, 70.0
    answered, labels = P.confident_gnmax(counts, T, sigma1, sigma2, torch.Generator().manual_seed(0))
    n = len(counts)
    p_ans = norm.sf((T - 60.0) / sigma1)
    assert abs(float(answered.float().mean()) - p_ans) < 4 * math.sqrt(p_ans * (1 - p_ans) / n)
    # noisy argmax, computed for all queries (labels of unanswered ones are masked: recompute)
    _, lab_all = P.confident_gnmax(counts, -math.inf, sigma1, sigma2, torch.Generator().manual_seed(0))
    c = [60.0, 30.0, 10.0]
    for j in range(3):
        def f(x, j=j):
            return norm.pdf(x, c[j], sigma2) * np.prod([norm.cdf((x - c[m]) / sigma2) for m in range(3) if m != j])

        p = integrate.quad(f, -200, 300)[0]
        freq = float((lab_all == j).float().mean())
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (j, freq, p)
    assert torch.all(labels[~answered] == -1)


def test_pate_calibration_spends_target():
    def events(s):
        return P.gnmax_events(s, 3.75 * s, 4000, 1000)

    s = A.calibrate_gaussian_scale(events, 1.0, 1e-5)
    eps = A.gaussian_rdp_epsilon(events(s), 1e-5)
    assert eps <= 1.0 and eps > 0.995
    # data-independent GNMax: RDP lambda / sigma2^2 == Gaussian with multiplier sigma2 / sqrt 2
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    hand = _hand_epsilon([a * (1000 / s ** 2 + 4000 / (2 * (3.75 * s) ** 2)) for a in DEFAULT_RDP_ORDERS],
                         DEFAULT_RDP_ORDERS, 1e-5)
    assert eps == pytest.approx(hand, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# VAE-metric: the noise


def test_metric_privacy_noise_distribution():
    d, eps = 4, 2.0
    n = VM.metric_privacy_noise(40000, d, eps, torch.Generator().manual_seed(0))
    r = n.norm(dim=1)
    assert float(r.mean()) == pytest.approx(d / eps, rel=0.03)  # Gamma(d, 1/eps)
    assert float(r.var()) == pytest.approx(d / eps ** 2, rel=0.06)
    assert torch.allclose(n.mean(0), torch.zeros(d), atol=0.05)  # isotropic
    # density ratio of two shifted outputs is bounded by exp(eps * distance): check on the radial
    # density p(v) ~ exp(-eps |v|) via the log-ratio of histogram counts at radius 1 vs 2 shells
    assert torch.all(VM.metric_privacy_noise(5, d, math.inf, torch.Generator()) == 0)


# ---------------------------------------------------------------------------------------------
# end to end through the runner


@register_attack("test-baselines-inversion-probe")
class _InversionProbe(Attack):
    """Records what an inversion attack would get: the inversion-protocol release."""

    kind = "inversion"

    def run(self, ctx, release):
        x = ctx.task.val.x[:8]
        out = {"n_modules": float(len(release.modules)), "private_classes": float(ctx.task.num_classes)}
        if "generator" in release.modules:
            g = release.modules["generator"]
            with torch.no_grad():
                if hasattr(g, "sample_latent"):
                    img = g(g.sample_latent(4), torch.zeros(4, dtype=torch.long))
                else:
                    img = g.sample(4)
            out["generator_shape_ok"] = float(tuple(img.shape[1:]) == tuple(x.shape[1:]))
        return AttackResult(out)


TINY = {
    "datalens": {"teachers": 30, "topk": 4, "sigma": 400.0, "thresh": 0.2, "z_dim": 8, "gf_dim": 8, "gfc_dim": 32,
                 "teacher_hidden": 8, "max_steps": 6, "n_synthetic": 600, "student_epochs": 2, "steps_at_inf": 4},
    "datalens-conv": {"method": "datalens", "teacher": "conv", "teacher_filters": 2, "teachers": 30, "topk": 4,
                      "sigma": 400.0, "thresh": 0.2, "z_dim": 8, "gf_dim": 8, "gfc_dim": 32, "max_steps": 4,
                      "n_synthetic": 600, "student_epochs": 1},
    "g-pate": {"teachers": 30, "sigma": 200.0, "sigma_thresh": 400.0, "z_dim": 8, "gf_dim": 8, "gfc_dim": 32,
               "batch_size": 8, "proj_dim": 4, "max_steps": 4, "n_synthetic": 600, "student_epochs": 1,
               "student_arch": "mlp"},
    "gs-wgan": {"discriminators": 10, "iterations": 10, "pretrain_iterations": 1, "batch_size": 8, "critic_iters": 1,
                "z_dim": 4, "gf_dim": 8, "gfc_dim": 32, "df_dim": 8, "n_synthetic": 600, "student_epochs": 1,
                "student_arch": "mlp"},
    "fedavg-gan": {"clients": 10, "expected_clients_per_round": 3.0, "rounds": 4, "local_steps": 1, "batch_size": 8,
                   "z_dim": 4, "gf_dim": 8, "gfc_dim": 32, "df_dim": 8, "n_synthetic": 600, "student_epochs": 1,
                   "student_arch": "mlp"},
    "tldmi": {"width": 4, "hidden": 16, "pretrain_epochs": 2, "epochs": 2, "freeze_blocks": 2},
    "pate": {"teachers": 10, "teacher_hidden": 16, "teacher_epochs": 5, "max_queries": 200, "answers": 60,
             "threshold": 0.5, "student_arch": "mlp", "student_epochs": 5},
    "vae-metric": {"latent_dim": 4, "hidden": 32, "vae_epochs": 2, "student_arch": "mlp", "student_epochs": 3},
}


def test_every_baseline_end_to_end_through_the_runner(tmp_path):
    from bench.harness.runner import run_suite
    from bench.harness.suite import parse_suite

    data = {"name": "baselines-tiny", "datasets": {"digits": {"protocol": {"members": 300, "val": 100,
                                                                          "nonmembers": 300}}},
            "epsilons": [1.0], "delta": 1e-5, "seeds": [0], "defenses": TINY,
            "attacks": {"loss-threshold": {"n_eval": 100}, "test-baselines-inversion-probe": {}}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(data))
    suite = parse_suite("baselines-tiny", data)
    logs = []
    res = run_suite(suite, tmp_path / "out", cache_dir=tmp_path / "cache", data_dir=tmp_path / "data",
                    echo=logs.append, progress=False)
    assert res["failed"] == 0 and res["done"] == len(TINY), "\n".join(logs)
    from conftest import metric_table, store_rows

    m = metric_table(tmp_path / "out")
    for d in TINY:
        eps = math.inf if d == "tldmi" else 1.0
        key = ("digits", d, None if math.isinf(eps) else eps, 0)
        rows = {k[4:]: v for k, v in m.items() if k[1] == d}
        assert ("utility", "test_acc") in rows, (d, rows.keys(), key)
        assert 0.0 <= rows[("utility", "test_acc")] <= 1.0
        assert ("loss-threshold", "auc") in rows
        assert rows[("test-baselines-inversion-probe", "private_classes")] == 5.0
        if d in ("datalens", "datalens-conv", "fedavg-gan", "g-pate", "gs-wgan", "vae-metric"):
            assert rows[("test-baselines-inversion-probe", "n_modules")] == 2.0
            assert rows[("test-baselines-inversion-probe", "generator_shape_ok")] == 1.0
    cells = {r["defense"]: r for r in store_rows(tmp_path / "out", "SELECT defense, privacy FROM cells")}
    import json

    priv = {d: json.loads(r["privacy"]) for d, r in cells.items()}
    assert priv["tldmi"]["unit"] == "none" and priv["tldmi"]["epsilon"] is None
    for d in ("datalens", "datalens-conv", "g-pate", "gs-wgan", "pate"):
        assert priv[d]["unit"] == "example" and 0 < priv[d]["epsilon"] <= 1.0 and priv[d]["delta"] == 1e-5
    assert priv["fedavg-gan"]["unit"] == "client" and 0 < priv["fedavg-gan"]["epsilon"] <= 1.0
    assert priv["vae-metric"]["extra"]["guarantee"].startswith("metric privacy")
    assert priv["vae-metric"]["delta"] == 0.0
