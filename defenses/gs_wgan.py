"""``gs-wgan``: GS-WGAN (Chen, Orekondy & Fritz, "GS-WGAN: A Gradient-Sanitized Approach for
Learning Differentially Private Generators", NeurIPS 2020), with a student classifier trained on
its samples as the DP data generators of the DataLens / DPSD tables are evaluated.

The private members are split into ``discriminators`` disjoint shards (``partition: record``: a
member's shard is a seeded function of its own dataset row, so adding or removing it changes one
shard). Each conditional WGAN-GP critic D_k sees only its shard:

1. **warm start** (the authors' ``pretrain.py``): each D_k is trained non-privately for
   ``pretrain_iterations`` WGAN-GP iterations (``critic_iters`` critic steps each) against its own
   generator, a copy of the main generator's initial weights that is then thrown away (the
   authors draw a fresh random generator per critic and do not clip its gradients; here the
   throw-away generator's image gradients pass the same clip, without noise);
2. **training**, ``iterations`` rounds: one critic index k is drawn uniformly; D_k takes
   ``critic_iters`` WGAN-GP steps (gradient penalty ``lambda_gp``, drift penalty ``lambda_eps`` on
   its real scores) on a batch of its shard and fakes with the same labels; then G generates
   ``batch_size`` images with random labels and its loss -D_k(G(z, y)) is back-propagated, the
   gradient **with respect to each generated image** clipped to L2 norm ``clip`` and given
   Gaussian noise of std 2 * clip * ``noise_multiplier`` (the sanitizer; sensitivity 2 * clip per
   image) before it reaches G. The released generator is the exponential moving average of G
   (``ema``, the authors' ``netGS``).

Only the sanitized image gradients leave the critics: the critics are never released; G, its
average, the synthetic set and the student are post-processing. epsilon = inf keeps the clipping
and drops the noise (the authors' non-private branch): the leaky reference row.

Privacy, unit ``example`` (add/remove one member), accounted soundly here and differently from
the paper (docs/methods/gs-wgan.md):

* one member changes one critic, and through it **all** ``batch_size`` sanitized gradients of a
  round that reads that critic: per round the released vector has L2 sensitivity
  2 * clip * sqrt(batch_size) against noise std 2 * clip * sigma, a Gaussian mechanism of
  multiplier sigma / sqrt(batch_size);
* the critic is a fixed shard's, read with probability q = 1 / ``discriminators`` per round. The
  rounds that read the other shards carry answers of other, arbitrary data, which may tell an
  observer which rounds read the member's shard, so the selection does **not** amplify epsilon:
  :func:`bench.lib.accounting.shard_selected_gaussian_delta` (a Gaussian applied m ~
  Binomial(iterations, q) times, exact for the dominating pair, dp_accounting's Gaussian loss).

The paper instead composes ``iterations x batch_size`` record-subsampled Gaussian mechanisms of
multiplier sigma at rate q (the bound of Wang, Balle & Kasiviswanathan 2019 for uniformly random
subsets, replace-one; its ``privacy_analysis.py``), i.e. it counts each image as a separate
query and the fixed shard as a random subset. Its sigma = 1.07 for 20 000 iterations (the
published epsilon 10; 9.24 with dp_accounting's bound for sampling without replacement) costs
epsilon ~ 610 under the bound used here. ``noise_multiplier: null`` (the default) calibrates sigma
so that the planned ``iterations`` spend exactly the budget; a given sigma is refused in one line
if the iterations would overspend. The report carries both numbers: the epsilon charged, and the
paper's accounting of the same run (``published_accounting_epsilon``, not a DP bound).

Settings: the authors' code defaults for MNIST (batch 32, 5 critic iterations, lambda_gp 10,
lambda_eps 1e-3, Adam 1e-4 / (0.5, 0.9), EMA 0.999, z_dim 10, clip 1). CPU scale-down (size, not
substance; one iteration takes ~0.18 s on one core): 250 critics and 5 000 iterations instead of
1 000 and 20 000 (each critic is still read 20 times on average, so the budget buys the same
noise per read), 10 warm-start iterations per critic instead of 2 000; the generator is the
family's conditional DCGAN generator at gf_dim 32 / gfc_dim 256 with uniform latents (the
authors: a ResNet generator, model dim 64, Bernoulli latents); the critic a two-layer conditional
conv net of width 16 with GroupNorm (the authors: a DCGAN critic of width 64).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import (
    calibrate_shard_selected_gaussian,
    dp_accountant,
    max_shard_selected_rounds,
    shard_selected_gaussian_epsilon,
)
from bench.lib.seeding import seeded_init
from bench.lib.synthetic import row_universe
from bench.lib.synthetic.gan import CondDCGANGenerator, CondDiscriminator
from bench.lib.synthetic.partition import padded_shards
from bench.lib.synthetic.release import STUDENT_SELECTION, generator_release
from bench.lib.tasks import Split
from bench.lib.train import seed_everything

#: the authors' MNIST run: sigma and iterations of the published epsilon 10
PAPER_NOISE, PAPER_ITERATIONS = 1.07, 20000


@dataclass
class GSWGANConfig:
    #: critics on disjoint shards (the authors: 1 000); CPU scale-down 250
    discriminators: int = 250
    #: generator rounds (one critic read per round); also the run length at epsilon = inf. The
    #: authors: 20 000; CPU scale-down 5 000, so each critic is still read 20 times on average
    iterations: int = 5000
    #: generated images per round (and the critics' real batch)
    batch_size: int = 32
    critic_iters: int = 5
    #: sigma per generated image (noise std 2 * clip * sigma); None = calibrated to the budget
    noise_multiplier: Optional[float] = None
    clip: float = 1.0
    lambda_gp: float = 10.0
    lambda_eps: float = 1e-3
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.9
    ema: float = 0.999
    #: warm-start iterations per critic (the authors: 2 000)
    pretrain_iterations: int = 10
    z_dim: int = 10
    gf_dim: int = 32
    gfc_dim: int = 256
    df_dim: int = 16
    partition: Literal["record"] = "record"
    # --- the synthetic set and its student
    n_synthetic: int = 60000
    synthetic_val_frac: float = 0.1
    student_arch: str = "cnn"
    student_epochs: int = 5
    student_lr: float = 1e-3
    student_batch_size: int = 128
    student_optimizer: str = "adam"

    def validate(self):
        if min(self.discriminators, self.iterations, self.batch_size, self.critic_iters, self.z_dim, self.gf_dim,
               self.gfc_dim, self.df_dim, self.student_epochs, self.student_batch_size) < 1 or self.n_synthetic < 10:
            raise BenchError("gs-wgan: discriminators, iterations, batch_size, critic_iters, z_dim, gf_dim, gfc_dim, "
                             "df_dim, student_epochs and student_batch_size must be >= 1, n_synthetic >= 10")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise BenchError("gs-wgan: noise_multiplier must be > 0 (or null: calibrated to the budget)")
        if not (self.clip > 0 and self.lr > 0 and self.student_lr > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1
                and 0 <= self.ema < 1):
            raise BenchError("gs-wgan: clip, lr and student_lr must be > 0, beta1, beta2 and ema in [0, 1)")
        if self.lambda_gp < 0 or self.lambda_eps < 0 or self.pretrain_iterations < 0:
            raise BenchError("gs-wgan: lambda_gp, lambda_eps and pretrain_iterations must be >= 0")
        if self.partition != "record":
            raise BenchError("gs-wgan: partition must be 'record' (one member, one critic)")
        if not 0 < self.synthetic_val_frac < 1:
            raise BenchError("gs-wgan: synthetic_val_frac must be in (0, 1)")


def published_accounting_epsilon(sigma: float, discriminators: int, iterations: int, batch_size: int,
                                 members: int, delta: float) -> float:
    """The paper's accounting of a run, reproduced with dp_accounting: ``iterations x batch_size``
    Gaussian mechanisms of multiplier sigma, each on a uniformly random subset of members / K
    records (sampling without replacement, replace-one; GS-WGAN's ``privacy_analysis.py`` does the
    same with autodp). Not a DP bound for fixed shards (module docstring)."""
    from dp_accounting import dp_event

    acc = dp_accountant("rdp", relation="replace")
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(int(members), max(1, int(members) // int(discriminators)),
                                                          dp_event.GaussianDpEvent(float(sigma))),
                int(iterations) * int(batch_size))
    return float(acc.get_epsilon(delta))


def sanitize(grad: torch.Tensor, clip: float, noise_std: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Clip each row's image gradient to L2 norm ``clip``, add N(0, noise_std^2) per coordinate."""
    flat = grad.reshape(len(grad), -1)
    scale = (clip / (flat.norm(dim=1, keepdim=True) + 1e-12)).clamp(max=1.0)
    out = flat * scale
    if noise_std > 0:
        out = out + noise_std * torch.randn(out.shape, generator=generator).to(out.device)
    return out.reshape(grad.shape)


def _critic_step(D, opt, G, xr, yr, c: GSWGANConfig, z_rng, device) -> None:
    """One WGAN-GP critic step of D on real rows (xr, yr) and as many fakes with their labels."""
    n = len(yr)
    with torch.no_grad():
        xf = G(G.sample_latent(n, z_rng).to(device), yr)
    real_score = D(xr, yr)
    loss = D(xf, yr).mean() - real_score.mean() + c.lambda_eps * (real_score ** 2).mean()
    if c.lambda_gp > 0:
        a = torch.rand(n, 1, 1, 1, generator=z_rng).to(device)
        xi = (a * xr + (1 - a) * xf).requires_grad_(True)
        g, = torch.autograd.grad(D(xi, yr).sum(), xi, create_graph=True)
        loss = loss + c.lambda_gp * ((g.reshape(n, -1).norm(dim=1) - 1) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _real_batch(shard_x, shard_y, n_k: int, B: int, rng: torch.Generator):
    idx = torch.randperm(n_k, generator=rng)[:B]
    return shard_x[idx], shard_y[idx]


def train_gs_wgan(members: Split, num_classes: int, c: GSWGANConfig, *, epsilon: float, delta: float, seed: int,
                  device="cpu", universe=None, progress=lambda it, **k: it, log=lambda m: None) -> dict:
    """Critics on disjoint shards, their sanitized image gradients training the generator; returns
    the released generator (EMA, eval mode) and the accounting record."""
    K, B, T = int(c.discriminators), int(c.batch_size), int(c.iterations)
    if len(members) < K:
        raise BenchError(f"gs-wgan: {len(members)} members cannot fill {K} discriminators")
    q = 1.0 / K
    private = not math.isinf(epsilon)
    if private:
        if c.noise_multiplier is None:
            z = calibrate_shard_selected_gaussian(float(epsilon), float(delta), q, T)
            sigma = z * math.sqrt(B)
        else:
            sigma = float(c.noise_multiplier)
            z = sigma / math.sqrt(B)
            fit = max_shard_selected_rounds(z, q, float(epsilon), float(delta), upper=T + 1)
            if fit < T:
                raise BenchError(f"gs-wgan: noise_multiplier {sigma:g} pays for {fit} of the {T} iterations at "
                                 f"epsilon {epsilon:g} (sound bound); raise it or set it to null to calibrate")
        spent = shard_selected_gaussian_epsilon(z, q, T, float(delta))
        published = published_accounting_epsilon(sigma, K, T, B, len(members), float(delta))
    else:
        sigma, z, spent, published = 0.0, math.inf, math.inf, math.inf
    shape = tuple(members.x.shape[1:])
    rows = members.index if members.index is not None else np.arange(len(members))
    pos, mask, M = padded_shards(np.asarray(rows), members.y.numpy(), K, c.partition, seed, universe)
    xs = members.x.float()
    ys = members.y.long()
    shards = []  # (x, y, count) per critic; the count stays inside the critic
    for k in range(K):
        p = torch.from_numpy(pos[k][mask[k]])
        shards.append((xs[p].to(device), ys[p].to(device), int(mask[k].sum())))
    del xs, ys
    # ---- from here on the members are read only by the critics (inside the mechanism) ----

    seed_everything(seed)
    z_rng = torch.Generator().manual_seed(seed * 7919 + 1)  # latents, labels, critic picks, GP mixing
    d_rng = torch.Generator().manual_seed(seed * 7919 + 2)  # the critics' real batches
    n_rng = torch.Generator().manual_seed(seed * 7919 + 3)  # the sanitizer's noise
    G = seeded_init(seed * 7919 + 4, lambda: CondDCGANGenerator(shape[0], shape[-1], num_classes, c.z_dim, c.gf_dim,
                                                                 c.gfc_dim)).to(device)
    betas = (c.beta1, c.beta2)
    Ds = [seeded_init(seed * 7919 + 100 + k, lambda: CondDiscriminator(shape[0], shape[-1], num_classes,
                                                                        c.df_dim)).to(device) for k in range(K)]
    opts = [torch.optim.Adam(D.parameters(), lr=c.lr, betas=betas) for D in Ds]
    log(f"gs-wgan: {K} critics (slot capacity {M}), {T} iterations x {B} images, sigma {sigma:.4g} per image "
        f"(round multiplier {z:.4g}), epsilon charged {spent:.4g}; the paper's accounting of this run: "
        f"{published:.4g}")
    t0 = time.time()
    if c.pretrain_iterations > 0:  # warm start, each critic against its own throw-away generator
        for k in progress(range(K), desc="gs-wgan warm start"):
            sx, sy, n_k = shards[k]
            if n_k == 0:
                continue
            Gk = copy.deepcopy(G)
            opt_gk = torch.optim.Adam(Gk.parameters(), lr=c.lr, betas=betas)
            for _ in range(c.pretrain_iterations):
                for _ in range(c.critic_iters):
                    xr, yr = _real_batch(sx, sy, n_k, B, d_rng)
                    _critic_step(Ds[k], opts[k], Gk, xr, yr, c, z_rng, device)
                _generator_round(Gk, Ds[k], opt_gk, B, num_classes, c.clip, 0.0, z_rng, n_rng, device)
            del Gk, opt_gk
        log(f"gs-wgan: warm start done, {time.time() - t0:.0f}s")
    opt_g = torch.optim.Adam(G.parameters(), lr=c.lr, betas=betas)
    ema = torch.optim.swa_utils.AveragedModel(G, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(c.ema),
                                              use_buffers=True)
    noise_std = 2.0 * c.clip * sigma
    hist = {"g_loss": [], "epsilon": []}
    picks = np.zeros(K, dtype=np.int64)  # public: a function of z_rng only
    t1 = time.time()
    for it in progress(range(T), desc="gs-wgan iterations"):
        k = int(torch.randint(0, K, (1,), generator=z_rng))
        picks[k] += 1
        sx, sy, n_k = shards[k]
        if n_k > 0:
            for _ in range(c.critic_iters):
                xr, yr = _real_batch(sx, sy, n_k, B, d_rng)
                _critic_step(Ds[k], opts[k], G, xr, yr, c, z_rng, device)
        loss = _generator_round(G, Ds[k], opt_g, B, num_classes, c.clip, noise_std, z_rng, n_rng, device)
        ema.update_parameters(G)
        if it % 100 == 99 or it == T - 1:
            # -D_k(G(z)) through the sanitizer's input: a statistic of the critic, so only its noisy
            # image gradient is released; the loss value itself is kept for diagnostics only when
            # no privacy is claimed
            if not private:
                hist["g_loss"].append((it + 1, loss))
            if private and (it % 2000 == 1999 or it == T - 1):
                hist["epsilon"].append((it + 1, shard_selected_gaussian_epsilon(z, q, it + 1, float(delta))))
        if it % 1000 == 999:
            log(f"gs-wgan: iteration {it + 1}/{T}, {time.time() - t1:.0f}s")
    G_rel = ema.module
    G_rel.eval()
    # the critics are returned for tests and diagnostics only: never released
    return {"generator": G_rel.cpu(), "sigma": sigma, "round_multiplier": z, "selection_prob": q, "iterations": T,
            "epsilon": spent, "published_accounting_epsilon": published, "history": hist, "shard_capacity": M,
            "critics": Ds, "max_reads_of_a_critic": int(picks.max()),
            "seconds": {"warm_start": t1 - t0, "iterations": time.time() - t1}}


def _generator_round(G, D, opt_g, B: int, num_classes: int, clip: float, noise_std: float, z_rng, n_rng,
                     device) -> float:
    """One generator step through critic D: D frozen; the gradient of -D(G(z, y)) with respect to
    each generated image is sanitized (clipped, noised) before it reaches G; G's step uses their
    mean. Returns the loss (a statistic of D: diagnostics only)."""
    for p in D.parameters():
        p.requires_grad_(False)
    try:
        G.train()
        y = torch.randint(0, num_classes, (B,), generator=z_rng).to(device)
        x = G(G.sample_latent(B, z_rng).to(device), y)
        x.register_hook(lambda g: sanitize(g, clip, noise_std, n_rng) / B)
        loss = -D(x, y).sum()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
    finally:
        for p in D.parameters():
            p.requires_grad_(True)
    return float(loss.detach()) / B


@register_defense("gs-wgan")
class GSWGAN(Defense):
    """GS-WGAN: conditional WGAN-GP critics on disjoint shards, the generator trained through their
    sanitized (clipped, noised) image gradients; student classifier on its samples."""

    Config = GSWGANConfig
    privacy_unit = "example"
    paper = ("Chen, Orekondy, Fritz, GS-WGAN: A Gradient-Sanitized Approach for Learning Differentially Private "
             "Generators, NeurIPS 2020")

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        t0 = time.time()
        out = train_gs_wgan(task.members, task.num_classes, c, epsilon=ctx.epsilon, delta=ctx.delta, seed=ctx.seed,
                            device=ctx.device, universe=row_universe(task), progress=ctx.progress, log=ctx.log)
        t_gen = time.time() - t0
        private = not math.isinf(ctx.epsilon)
        privacy = PrivacyReport(
            out["epsilon"], ctx.delta, "example",
            "exact Gaussian loss mixed over the binomial count of reads of the member's critic (dp_accounting "
            "GaussianPrivacyLoss; no amplification by the critic's selection)" if private
            else "none (clipping, no noise)",
            "Gaussian sanitizer on the generated images' gradients from one of K disjoint-shard critics per round; "
            "critics never released; generator, its average, synthetic set and student are post-processing"
            if private else "none",
            {"noise_multiplier": out["sigma"], "round_noise_multiplier": out["round_multiplier"],
             "selection_prob": out["selection_prob"], "iterations": out["iterations"], "batch_size": c.batch_size,
             "clip": c.clip, "discriminators": c.discriminators, "target_epsilon": ctx.epsilon,
             "calibrated": c.noise_multiplier is None,
             "published_accounting_epsilon": out["published_accounting_epsilon"],
             "published_accounting": "iterations x batch_size record-subsampled Gaussians at rate 1/K (sampling "
                                     "without replacement, replace-one), as the paper's privacy_analysis.py: "
                                     "not a bound for fixed shards",
             "paper_setting": {"noise_multiplier": PAPER_NOISE, "iterations": PAPER_ITERATIONS},
             "neighbouring": "add/remove one member (changes one critic: every image gradient of a round that "
                             "reads it)"},
            f"{STUDENT_SELECTION}; fixed GAN settings, the generator's moving average after the last iteration")
        return generator_release(ctx, out["generator"], c, privacy, generator_history=out["history"],
                                 info={"generator_seconds": t_gen, "stage_seconds": out["seconds"],
                                       "shard_capacity": out["shard_capacity"]})
