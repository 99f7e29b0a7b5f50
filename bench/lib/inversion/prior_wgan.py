"""GMI's public prior: the WGAN-GP (Gulrajani et al. 2017) of Zhang et al. (2020) on the
attacker's public split: its config, its training loop and :func:`wgan_prior`, which builds it
once through ``ctx.artifact`` (its ``build`` is defined here, so the harness keys it on this
module's code and its imports). Target-independent: every cell and every attack asking for the
same (dataset, public rows, image size, config, seed) shares one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.lib.inversion.common import (
    ARTIFACT_VERSION,
    batches,
    freeze,
    load_state,
    public_key,
    resolve,
    state_bundle,
)
from bench.lib.inversion.nets import DCGenerator, GANConfig, WGANCritic


@dataclass
class WGANConfig(GANConfig):
    """GMI's stage 1 (WGAN-GP on public data). Paper/official MNIST: width 64, 100 epochs."""

    epochs: int = 12
    n_critic: int = 5
    gp_weight: float = 10.0

    positive: ClassVar[tuple[str, ...]] = ("z_dim", "dim", "epochs", "batch_size", "n_critic")


def _gradient_penalty(D, real, fake, gen):
    a = torch.rand(len(real), 1, 1, 1, generator=gen).to(real.device)
    xi = (a * real + (1 - a) * fake).requires_grad_(True)
    g = torch.autograd.grad(D(xi).sum(), xi, create_graph=True)[0]
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def train_wgan_gp(x: torch.Tensor, cfg: WGANConfig, seed: int, device, progress, log=lambda m: None) -> dict:
    """WGAN-GP (Gulrajani et al. 2017) as in GMI: a critic step per batch, a generator step every
    ``n_critic`` batches, Adam(lr, (beta1, beta2)), gradient penalty ``gp_weight``."""
    gen = torch.Generator().manual_seed(seed)
    C, S = x.shape[1], x.shape[-1]
    G = DCGenerator(cfg.z_dim, cfg.dim, C, S).to(device)
    D = WGANCritic(C, cfg.dim, S).to(device)
    og = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    od = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    bs = min(cfg.batch_size, len(x))
    per_epoch = max(1, len(x) // bs)
    it = batches(len(x), bs, gen)
    hist = {"d_loss": [], "g_loss": [], "w_dist": []}
    step = 0
    for epoch in progress(range(cfg.epochs), desc="WGAN-GP epochs"):
        dl = gl = wd = 0.0
        for _ in range(per_epoch):
            step += 1
            real = x[next(it)].to(device)
            with torch.no_grad():
                fake = G(torch.randn(len(real), cfg.z_dim, generator=gen).to(device))
            w = D(real).mean() - D(fake).mean()
            d_loss = -w + cfg.gp_weight * _gradient_penalty(D, real, fake, gen)
            od.zero_grad(set_to_none=True)
            d_loss.backward()
            od.step()
            dl += float(d_loss)
            wd += float(w)
            if step % cfg.n_critic == 0:
                for p in D.parameters():
                    p.requires_grad_(False)
                g_loss = -D(G(torch.randn(bs, cfg.z_dim, generator=gen).to(device))).mean()
                og.zero_grad(set_to_none=True)
                g_loss.backward()
                og.step()
                for p in D.parameters():
                    p.requires_grad_(True)
                gl += float(g_loss)
        hist["d_loss"].append(dl / per_epoch)
        hist["w_dist"].append(wd / per_epoch)
        hist["g_loss"].append(gl / max(1, per_epoch // cfg.n_critic))
        log(f"WGAN-GP epoch {epoch + 1}/{cfg.epochs}: W-distance {wd / per_epoch:.3f}")
    return {**state_bundle("G", G), **state_bundle("D", D), "history": hist, "generator_steps": step // cfg.n_critic,
            "G_arch": {"z_dim": cfg.z_dim, "dim": cfg.dim, "out_channels": C, "image_size": S},
            "D_arch": {"in_channels": C, "dim": cfg.dim, "image_size": S}}


def wgan_prior(ctx, gan: Any = None) -> tuple[nn.Module, nn.Module, dict]:
    """GMI's public prior (cached per dataset, public split, config and seed; target-independent,
    so every cell and every attack asking for it shares one): ``(G, D, info)``. ``gan``: a
    :class:`WGANConfig`, a mapping of overrides of its defaults, or None."""
    cfg = resolve(WGANConfig, gan, "gan")
    key = {"public": public_key(ctx.task), "config": dataclasses.asdict(cfg), "seed": ctx.seed,
           "version": ARTIFACT_VERSION}

    def build():
        with torch.random.fork_rng(devices=[]):
            return train_wgan_gp(ctx.task.public.x, cfg, ctx.seed, ctx.device, ctx.progress, ctx.log)

    b = ctx.artifact("gan-wgangp", key, build)
    G = freeze(load_state(DCGenerator(**b["G_arch"]), b, "G")).to(ctx.device)
    D = freeze(load_state(WGANCritic(**b["D_arch"]), b, "D")).to(ctx.device)
    return G, D, {"generator_steps": b["generator_steps"], "final_w_dist": b["history"]["w_dist"][-1]}

