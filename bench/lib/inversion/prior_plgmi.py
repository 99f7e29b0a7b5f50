"""PLG-MI's pseudo-label conditional GAN (Yuan et al. 2023, stage 1): the differentiable
augmentation (also used by the attack's stage 2), its config, top-n pseudo-label selection, the
hinge-loss training loop with the target's max-margin loss, and :func:`plg_gan`, which builds it
once per target through ``ctx.artifact`` (its ``build`` is defined here, so the harness keys it
on this module's code and its imports)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.lib.inversion.common import (
    ARTIFACT_VERSION,
    batches,
    freeze,
    load_state,
    max_margin_loss,
    model_hash,
    predict,
    public_key,
    resolve,
    state_bundle,
)
from bench.lib.inversion.nets import DCGenerator, GANConfig, ProjectionDiscriminator


def augment(x: torch.Tensor, *, scale=(0.8, 1.0), rotate: float = 5.0, brightness: float = 0.2,
            contrast: float = 0.2, hflip: bool = False) -> torch.Tensor:
    """PLG-MI's augmentation, differentiable: random resized crop (square, area ``scale``),
    rotation within +-``rotate`` degrees, brightness/contrast jitter, optional horizontal flip
    (off by default: a mirrored digit is another glyph, unlike a mirrored face)."""
    n, dev = len(x), x.device
    s = torch.sqrt(torch.empty(n, device=dev).uniform_(*scale))  # side fraction of the crop
    tx = (1 - s) * torch.empty(n, device=dev).uniform_(-1, 1)
    ty = (1 - s) * torch.empty(n, device=dev).uniform_(-1, 1)
    a = torch.deg2rad(torch.empty(n, device=dev).uniform_(-rotate, rotate))
    flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0) if hflip else torch.ones(n, device=dev)
    theta = torch.stack([torch.stack([s * torch.cos(a) * flip, -s * torch.sin(a), tx], 1),
                         torch.stack([s * torch.sin(a) * flip, s * torch.cos(a), ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    b = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - brightness, 1 + brightness)
    c = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - contrast, 1 + contrast)
    mean = out.mean((1, 2, 3), keepdim=True)
    return ((out * b - mean * b) * c + mean * b).clamp(0, 1)


@dataclass
class PLGGANConfig(GANConfig):
    """PLG-MI's pseudo-label conditional GAN. Paper: SN-ResNet64 pair, 30k generator iterations,
    top-30 of each class, alpha = 0.2, Adam 2e-4 (0, 0.9), n_dis = 5, batch 64, z 128."""

    z_dim: int = 128
    beta1: float = 0.0
    beta2: float = 0.9
    #: generator iterations (each after ``n_dis`` discriminator steps)
    steps: int = 1500
    n_dis: int = 5
    #: public images pseudo-labelled per target class (ranked by the target's probability)
    top_n: int = 200
    #: weight of the max-margin inversion loss of the target on augmented fakes
    alpha: float = 0.2
    hflip: bool = False

    positive: ClassVar[tuple[str, ...]] = ("z_dim", "dim", "steps", "batch_size", "n_dis", "top_n")


def top_n_selection(probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PLG-MI's pseudo-labels: for each class k, the ``n`` public images with the highest target
    probability of k among those the target assigns to k (argmax), topped up from the rest by
    p_k when fewer are assigned. Returns (indices, pseudo-labels)."""
    K = probs.shape[1]
    pred = probs.argmax(1)
    idx, lab, used = [], [], torch.zeros(len(probs), dtype=torch.bool)
    for k in range(K):
        order = torch.argsort(probs[:, k], descending=True)
        first = order[pred[order] == k]
        rest = order[(pred[order] != k)]
        pick = torch.cat([first, rest])
        pick = pick[~used[pick]][:n]
        used[pick] = True
        idx.append(pick)
        lab.append(torch.full((len(pick),), k, dtype=torch.long))
    return torch.cat(idx), torch.cat(lab)


def train_plg_gan(x: torch.Tensor, y: torch.Tensor, target: nn.Module, num_classes: int, cfg: PLGGANConfig,
                  seed: int, device, progress, log=lambda m: None) -> dict:
    """PLG-MI (Yuan et al. 2023) stage 1: conditional GAN on the pseudo-labelled public images,
    hinge loss; the generator loss adds ``alpha`` x the target's max-margin loss on an augmented
    G(z, y) for random pseudo-labels y."""
    gen = torch.Generator().manual_seed(seed)
    C, S, K = x.shape[1], x.shape[-1], num_classes
    G = DCGenerator(cfg.z_dim, cfg.dim, C, S, num_classes=K).to(device)
    D = ProjectionDiscriminator(C, cfg.dim, S, K).to(device)
    og = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    od = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    bs = min(cfg.batch_size, len(x))
    it = batches(len(x), bs, gen)
    hist = {"d_loss": [], "g_adv": [], "g_inv": []}
    acc = {"d": 0.0, "a": 0.0, "i": 0.0, "n": 0}
    log_every = max(1, cfg.steps // 10)
    for step in progress(range(1, cfg.steps + 1), desc="PLG-MI cGAN steps"):
        for _ in range(cfg.n_dis):
            i = next(it)
            real, yr = x[i].to(device), y[i].to(device)
            yf = torch.randint(0, K, (bs,), generator=gen).to(device)
            with torch.no_grad():
                fake = G(torch.randn(bs, cfg.z_dim, generator=gen).to(device), yf)
            d_loss = F.relu(1 - D(real, yr)).mean() + F.relu(1 + D(fake, yf)).mean()
            od.zero_grad(set_to_none=True)
            d_loss.backward()
            od.step()
        for p in D.parameters():
            p.requires_grad_(False)
        yf = torch.randint(0, K, (bs,), generator=gen).to(device)
        fake = G(torch.randn(bs, cfg.z_dim, generator=gen).to(device), yf)
        adv = -D(fake, yf).mean()
        inv = max_margin_loss(target(augment(fake, hflip=cfg.hflip)), yf).mean()
        g_loss = adv + cfg.alpha * inv
        og.zero_grad(set_to_none=True)
        g_loss.backward()
        og.step()
        for p in D.parameters():
            p.requires_grad_(True)
        acc["d"] += float(d_loss)
        acc["a"] += float(adv)
        acc["i"] += float(inv)
        acc["n"] += 1
        if step % log_every == 0 or step == cfg.steps:
            n = acc["n"]
            hist["d_loss"].append(acc["d"] / n)
            hist["g_adv"].append(acc["a"] / n)
            hist["g_inv"].append(acc["i"] / n)
            log(f"PLG-MI cGAN step {step}/{cfg.steps}: D {acc['d'] / n:.3f} G_adv {acc['a'] / n:.3f} "
                f"L_inv {acc['i'] / n:.3f}")
            acc = {"d": 0.0, "a": 0.0, "i": 0.0, "n": 0}
    return {**state_bundle("G", G), **state_bundle("D", D), "history": hist, "generator_steps": cfg.steps,
            "G_arch": {"z_dim": cfg.z_dim, "dim": cfg.dim, "out_channels": C, "image_size": S, "num_classes": K},
            "D_arch": {"in_channels": C, "dim": cfg.dim, "image_size": S, "num_classes": K}}


def plg_gan(ctx, target: nn.Module, gan: Any = None) -> tuple[nn.Module, dict]:
    """PLG-MI's conditional generator for this target (cached per target weights, public split,
    config, seed): ``(G, info)``. ``gan``: a :class:`PLGGANConfig`, a mapping of overrides of its
    defaults, or None."""
    cfg = resolve(PLGGANConfig, gan, "gan")
    K = ctx.task.num_classes
    key = {"public": public_key(ctx.task), "target": model_hash(target), "num_classes": K,
           "config": dataclasses.asdict(cfg), "seed": ctx.seed, "version": ARTIFACT_VERSION}

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            probs = F.softmax(predict(target, ctx.task.public.x, ctx.device), 1)
            idx, lab = top_n_selection(probs, cfg.top_n)
            ctx.log(f"PLG-MI: {len(idx)} pseudo-labelled public images (top {cfg.top_n} per class)")
            b = train_plg_gan(ctx.task.public.x[idx], lab, target, K, cfg, ctx.seed, ctx.device, ctx.progress,
                              ctx.log)
            b["pseudo_rows"] = np.asarray(ctx.task.public.index[idx.numpy()], dtype=np.int64)
            b["pseudo_labels"] = lab.numpy()
            b["pseudo_true"] = ctx.task.public.y[idx].numpy()
            return b

    b = ctx.artifact("gan-plgmi", key, build)
    G = freeze(load_state(DCGenerator(**b["G_arch"]), b, "G")).to(ctx.device)
    # which public classes the pseudo-labels drew from, per target class (for the report)
    purity = {}
    for k in range(K):
        true = b["pseudo_true"][b["pseudo_labels"] == k]
        vals, cnt = np.unique(true, return_counts=True)
        purity[str(k)] = {str(int(v)): int(c) for v, c in zip(vals, cnt)}
    return G, {"generator_steps": int(b["generator_steps"]), "pseudo_label_sources": purity,
               "final_inv_loss": b["history"]["g_inv"][-1]}
