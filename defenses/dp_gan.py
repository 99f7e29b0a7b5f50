"""``dp-gan``: a differentially private conditional GAN whose discriminator is trained with DP-SGD
(Xie, Lin, Wang, Wang & Zhou, "Differentially Private Generative Adversarial Network", arXiv
1802.06739, 2018), with a student trained on its samples, as the DP data generators of the
DataLens / DPSD comparison tables are evaluated.

Only the discriminator D touches the private members, and only through Opacus' DP-SGD: Poisson
sampling of the members (rate q = ``batch_size`` / n), every per-example gradient of D's loss
clipped to L2 norm C = ``max_grad_norm``, Gaussian noise of std sigma C on their sum, the sum
divided by the expected batch size. Each D step's batch is the sampled real examples (target
"real") **and a fixed number of generated ones** (``batch_size``, target "fake"; a public count, so
the number of rows does not reveal the Poisson draw): the fake rows are clipped and summed with the
real ones, which costs nothing in privacy (they are a function of earlier DP outputs) and keeps the
mechanism exactly DP-SGD's. The generator G is trained only through D (non-saturating GAN loss
on D's logits; D's parameters are frozen and Opacus' hooks off during G's step): post-processing.
The synthetic set, the student trained on it and its epoch selection (on a synthetic holdout)
are post-processing too.

Privacy unit ``example`` (add/remove one member), accounted by Opacus (PRV by default, RDP or
GDP) over the D steps; sigma is calibrated before training so that the planned steps spend the
target epsilon (Opacus' ``get_noise_multiplier``, :func:`bench.lib.accounting.dpsgd_noise_multiplier`).
The member count n sets q, as in ``dpsgd`` (treated as public). epsilon = inf trains the same GAN
without clipping or noise: the non-private, leaky reference row the generator attacks are
calibrated on.

Faithfulness and scale-down (docs/methods/dp-gan.md): Xie et al. train a WGAN critic with weight
clipping and add noise to its gradient, bounding the per-example gradient through the weight
clip; here the per-example bound is enforced by Opacus' clipping (what every maintained DP-GAN
implementation does, and what makes the accountant's epsilon rigorous) and the loss is the
DCGAN one (the WGAN loss is ``loss: wgan``, weight clipping ``weight_clip``). The generator is the
conditional DCGAN generator of the family (``datalens-generator``, DataLens' ``model.py``) at
``gf_dim`` 32 / ``gfc_dim`` 256 instead of 64 / 1024 (CPU); the discriminator a two-layer
conditional conv net with GroupNorm (Opacus does not allow BatchNorm).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import ACCOUNTANTS, dpsgd_noise_multiplier
from bench.lib.seeding import seeded_init
from bench.lib.synthetic.gan import CondDCGANGenerator, CondDiscriminator
from bench.lib.synthetic.release import STUDENT_SELECTION, generator_release
from bench.lib.train import seed_everything


@dataclass
class DPGANConfig:
    #: discriminator steps (each one DP-SGD step on a Poisson batch); the privacy cost's step count
    steps: int = 3000
    #: expected real examples per D step (q = batch_size / members) and the fixed fake rows per step
    batch_size: int = 128
    #: D steps per G step
    n_critic: int = 1
    lr_d: float = 2e-4
    lr_g: float = 2e-4
    beta1: float = 0.5
    #: per-example clipping norm C of D's gradient
    max_grad_norm: float = 1.0
    accountant: Literal["prv", "rdp", "gdp"] = "prv"
    #: ``bce`` (DCGAN, non-saturating generator loss) or ``wgan`` (Xie et al.'s critic loss)
    loss: Literal["bce", "wgan"] = "bce"
    #: WGAN weight clipping of D's parameters after each step (0 = off); Xie et al.'s c_p
    weight_clip: float = 0.0
    z_dim: int = 50
    gf_dim: int = 32
    gfc_dim: int = 256
    df_dim: int = 32
    # --- the synthetic set and its student
    n_synthetic: int = 60000
    student_arch: str = "cnn"
    student_epochs: int = 5
    student_lr: float = 1e-3
    student_batch_size: int = 128
    student_optimizer: str = "adam"
    synthetic_val_frac: float = 0.1

    def validate(self):
        if min(self.steps, self.batch_size, self.n_critic, self.z_dim, self.gf_dim, self.gfc_dim, self.df_dim,
               self.n_synthetic, self.student_epochs, self.student_batch_size) < 1:
            raise BenchError("dp-gan: steps, batch_size, n_critic, z_dim, gf_dim, gfc_dim, df_dim, n_synthetic, "
                             "student_epochs and student_batch_size must be >= 1")
        if not (self.lr_d > 0 and self.lr_g > 0 and self.max_grad_norm > 0 and self.student_lr > 0):
            raise BenchError("dp-gan: lr_d, lr_g, max_grad_norm and student_lr must be > 0")
        if self.weight_clip < 0 or not 0 <= self.beta1 < 1 or not 0 < self.synthetic_val_frac < 1:
            raise BenchError("dp-gan: weight_clip must be >= 0, beta1 in [0, 1), synthetic_val_frac in (0, 1)")
        if self.accountant not in ACCOUNTANTS:
            raise BenchError(f"dp-gan: accountant must be one of {', '.join(ACCOUNTANTS)}")


def d_loss(logits: torch.Tensor, real: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean discriminator loss over the rows (``real``: 1 for real rows, 0 for fake ones)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, real)
    return (logits * (1 - 2 * real)).mean()  # WGAN critic: E_fake[D] - E_real[D]


def g_loss(logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return -logits.mean()


def train_dp_gan(members, num_classes: int, c: DPGANConfig, *, epsilon: float, delta: float, seed: int, device,
                 progress=lambda it, **k: it, log=lambda m: None) -> dict:
    """The DP generator (eval mode) and what the report needs: sigma, q, steps, the spent epsilon."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = len(members)
    shape = tuple(members.x.shape[1:])
    private = not math.isinf(epsilon)
    gen = seed_everything(seed)
    G = seeded_init(seed * 1000 + 61, lambda: CondDCGANGenerator(shape[0], shape[-1], num_classes, c.z_dim,
                                                                   c.gf_dim, c.gfc_dim)).to(device)
    D = seeded_init(seed * 1000 + 63, lambda: CondDiscriminator(shape[0], shape[-1], num_classes, c.df_dim)).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=c.lr_g, betas=(c.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=c.lr_d, betas=(c.beta1, 0.999))
    loader = DataLoader(TensorDataset(members.x, members.y), batch_size=c.batch_size, shuffle=True, generator=gen)
    batches = math.ceil(n / c.batch_size)
    sample_rate = 1.0 / batches
    sigma = dpsgd_noise_multiplier(epsilon, delta, sample_rate, c.steps, c.accountant) if private else 0.0
    engine = None
    if private:
        engine = PrivacyEngine(accountant=c.accountant)
        D, opt_d, loader = engine.make_private(module=D, optimizer=opt_d, data_loader=loader, noise_multiplier=sigma,
                                               max_grad_norm=c.max_grad_norm, poisson_sampling=True,
                                               grad_sample_mode="hooks",
                                               noise_generator=torch.Generator(device=device).manual_seed(seed * 1000 + 67))
    # ---- from here on the members are read only through ``loader`` (inside the DP mechanism) ----
    z_rng = torch.Generator().manual_seed(seed * 1000 + 65)
    hist = {"epsilon": [], "g_loss": []}
    it = iter(loader)
    t0 = time.time()
    for step in progress(range(c.steps), desc="dp-gan steps"):
        try:
            xr, yr = next(it)
        except StopIteration:
            it = iter(loader)
            xr, yr = next(it)
        xr, yr = xr.to(device), yr.to(device)
        with torch.no_grad():
            yf = torch.randint(0, num_classes, (c.batch_size,), generator=z_rng).to(device)
            xf = G(G.sample_latent(c.batch_size, z_rng).to(device), yf)
        x, y = torch.cat([xr, xf]), torch.cat([yr, yf])
        real = torch.cat([torch.ones(len(xr)), torch.zeros(len(xf))]).to(device)
        opt_d.zero_grad(set_to_none=True)
        loss_d = d_loss(D(x, y), real, c.loss)
        loss_d.backward()
        opt_d.step()
        if c.weight_clip > 0:
            with torch.no_grad():
                for p in D.parameters():
                    p.clamp_(-c.weight_clip, c.weight_clip)
        if (step + 1) % c.n_critic == 0:
            loss_g = _generator_step(G, D, opt_g, opt_d, c, num_classes, z_rng, device)
            hist["g_loss"].append(loss_g)
        # D's loss on real rows is a noise-free statistic of the members: never kept or logged
        if private and (step % 100 == 99 or step == c.steps - 1):
            hist["epsilon"].append((step + 1, float(engine.accountant.get_epsilon(delta))))
        if step % 500 == 499:
            log(f"dp-gan: step {step + 1}/{c.steps}, {time.time() - t0:.0f}s")
    spent = float(engine.accountant.get_epsilon(delta)) if private else math.inf
    return {"generator": G.cpu().eval(), "sigma": sigma, "sample_rate": sample_rate, "steps": c.steps,
            "epsilon": spent, "history": hist, "accountant_history": list(engine.accountant.history) if private else []}


def _generator_step(G, D, opt_g, opt_d, c: DPGANConfig, num_classes: int, z_rng, device) -> float:
    """One G step through D: D frozen (no gradient, no per-sample hooks); D's optimizer state untouched."""
    hooks = hasattr(D, "disable_hooks")
    if hooks:
        D.disable_hooks()
    req = [p.requires_grad for p in D.parameters()]
    for p in D.parameters():
        p.requires_grad_(False)
    try:
        G.train()
        y = torch.randint(0, num_classes, (c.batch_size,), generator=z_rng).to(device)
        loss = g_loss(D(G(G.sample_latent(c.batch_size, z_rng).to(device), y), y), c.loss)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
    finally:
        for p, r in zip(D.parameters(), req):
            p.requires_grad_(r)
        if hooks:
            D.enable_hooks()
    opt_d.zero_grad(set_to_none=True)
    return float(loss.detach())


@register_defense("dp-gan")
class DPGAN(Defense):
    """DP-GAN: conditional GAN, discriminator trained with DP-SGD (Opacus); student on its samples."""

    Config = DPGANConfig
    privacy_unit = "example"
    paper = "Xie, Lin, Wang, Wang, Zhou, Differentially Private Generative Adversarial Network, arXiv 1802.06739, 2018"

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        t0 = time.time()
        out = train_dp_gan(task.members, task.num_classes, c, epsilon=ctx.epsilon, delta=ctx.delta, seed=ctx.seed,
                           device=ctx.device, progress=ctx.progress, log=ctx.log)
        t_gen = time.time() - t0
        private = not math.isinf(ctx.epsilon)
        privacy = PrivacyReport(
            out["epsilon"], ctx.delta, "example",
            f"{c.accountant.upper()} (Opacus)" if private else "none (no clipping, no noise)",
            "DP-SGD on the discriminator (Poisson sampling, per-example clipping, Gaussian noise); the generator, "
            "the synthetic set and the student are post-processing" if private else "none",
            {"noise_multiplier": out["sigma"], "sample_rate": out["sample_rate"], "steps": out["steps"],
             "max_grad_norm": c.max_grad_norm, "target_epsilon": ctx.epsilon, "members": len(task.members),
             "neighbouring": "add/remove one member"},
            f"{STUDENT_SELECTION}; fixed GAN settings, last iterate of the generator")
        return generator_release(ctx, out["generator"], c, privacy, generator_history=out["history"],
                                 info={"generator_seconds": t_gen})
