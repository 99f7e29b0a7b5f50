"""KEDMI's inversion-specific GAN (Chen et al. 2021, stage 1): its config, its semi-supervised
training loop (the discriminator learns the target's soft labels on the public images besides
real / fake) and :func:`kedmi_gan`, which builds it once per target through ``ctx.artifact`` (its
``build`` is defined here, so the harness keys it on this module's code and its imports)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.lib.inversion.common import (
    ARTIFACT_VERSION,
    batches,
    freeze,
    load_state,
    model_hash,
    predict,
    public_key,
    resolve,
    state_bundle,
)
from bench.lib.inversion.nets import DCGenerator, GANConfig, KPlusOneDiscriminator, log_sum_exp


@dataclass
class KEDMIGANConfig(GANConfig):
    """KEDMI's inversion-specific GAN. Paper/BiDO MNIST: width 64, 100 epochs."""

    epochs: int = 12
    n_critic: int = 5
    #: weight of the entropy of D's class output on fakes in the generator loss
    entropy_weight: float = 1e-4
    mbd_kernels: int = 32
    mbd_dim: int = 8

    positive: ClassVar[tuple[str, ...]] = ("z_dim", "dim", "epochs", "batch_size", "n_critic")


def train_kedmi_gan(x: torch.Tensor, soft: torch.Tensor, cfg: KEDMIGANConfig, seed: int, device, progress,
                    log=lambda m: None) -> dict:
    """KEDMI (Chen et al. 2021) stage 1. Discriminator: soft cross-entropy to the target's soft
    labels on public images (L_sup) + the semi-supervised real/fake loss with "real" =
    logsumexp of the K logits (L_unsup). Generator, every ``n_critic`` steps: L1 feature
    matching between mean D features of fakes and of an independent public batch, plus
    ``entropy_weight`` x the entropy of D's class output on the fakes."""
    gen = torch.Generator().manual_seed(seed)
    C, S, K = x.shape[1], x.shape[-1], soft.shape[1]
    G = DCGenerator(cfg.z_dim, cfg.dim, C, S).to(device)
    D = KPlusOneDiscriminator(C, cfg.dim, S, K, cfg.mbd_kernels, cfg.mbd_dim).to(device)
    og = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    od = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    bs = min(cfg.batch_size, len(x))
    per_epoch = max(1, len(x) // bs)
    lab, unl1, unl2 = batches(len(x), bs, gen), batches(len(x), bs, gen), batches(len(x), bs, gen)
    hist = {"d_sup": [], "d_unsup": [], "g_loss": [], "d_acc": []}
    step = 0
    for epoch in progress(range(cfg.epochs), desc="KEDMI GAN epochs"):
        ls = lu = lg = acc = 0.0
        for _ in range(per_epoch):
            step += 1
            i = next(lab)
            xl, pl = x[i].to(device), soft[i].to(device)
            xu = x[next(unl1)].to(device)
            xu2_idx = next(unl2)
            with torch.no_grad():
                fake = G(torch.randn(bs, cfg.z_dim, generator=gen).to(device))
            _, out_l = D(xl)
            _, out_u = D(xu)
            _, out_f = D(fake)
            sup = -(pl * F.log_softmax(out_l, 1)).sum(1).mean()
            lse_u, lse_f = log_sum_exp(out_u), log_sum_exp(out_f)
            unsup = 0.5 * (F.softplus(lse_u).mean() - lse_u.mean() + F.softplus(lse_f).mean())
            od.zero_grad(set_to_none=True)
            (sup + unsup).backward()
            od.step()
            ls += float(sup)
            lu += float(unsup)
            acc += float((out_l.argmax(1) == pl.argmax(1)).float().mean())
            if step % cfg.n_critic == 0:
                for p in D.parameters():
                    p.requires_grad_(False)
                f_fake, o_fake = D(G(torch.randn(bs, cfg.z_dim, generator=gen).to(device)))
                f_real, _ = D(x[xu2_idx].to(device))
                p = F.softmax(o_fake, 1)
                entropy = -(p * F.log_softmax(o_fake, 1)).sum(1).mean()
                g_loss = (f_fake.mean(0) - f_real.mean(0)).abs().mean() + cfg.entropy_weight * entropy
                og.zero_grad(set_to_none=True)
                g_loss.backward()
                og.step()
                for p_ in D.parameters():
                    p_.requires_grad_(True)
                lg += float(g_loss)
        hist["d_sup"].append(ls / per_epoch)
        hist["d_unsup"].append(lu / per_epoch)
        hist["d_acc"].append(acc / per_epoch)
        hist["g_loss"].append(lg / max(1, per_epoch // cfg.n_critic))
        log(f"KEDMI GAN epoch {epoch + 1}/{cfg.epochs}: L_sup {ls / per_epoch:.3f} L_unsup {lu / per_epoch:.3f}")
    return {**state_bundle("G", G), **state_bundle("D", D), "history": hist, "generator_steps": step // cfg.n_critic,
            "G_arch": {"z_dim": cfg.z_dim, "dim": cfg.dim, "out_channels": C, "image_size": S},
            "D_arch": {"in_channels": C, "dim": cfg.dim, "image_size": S, "num_classes": K,
                       "kernels": cfg.mbd_kernels, "kernel_dim": cfg.mbd_dim}}


def kedmi_gan(ctx, target: nn.Module, gan: Any = None) -> tuple[nn.Module, nn.Module, dict]:
    """KEDMI's GAN for this target (cached per target weights, public split, config, seed).
    ``gan``: a :class:`KEDMIGANConfig`, a mapping of overrides of its defaults, or None."""
    cfg = resolve(KEDMIGANConfig, gan, "gan")
    key = {"public": public_key(ctx.task), "target": model_hash(target), "config": dataclasses.asdict(cfg),
           "seed": ctx.seed, "version": ARTIFACT_VERSION}

    def build():
        with torch.random.fork_rng(devices=[]):
            soft = F.softmax(predict(target, ctx.task.public.x, ctx.device), 1)
            return train_kedmi_gan(ctx.task.public.x, soft, cfg, ctx.seed, ctx.device, ctx.progress, ctx.log)

    b = ctx.artifact("gan-kedmi", key, build)
    G = freeze(load_state(DCGenerator(**b["G_arch"]), b, "G")).to(ctx.device)
    D = freeze(load_state(KPlusOneDiscriminator(**b["D_arch"]), b, "D")).to(ctx.device)
    return G, D, {"generator_steps": b["generator_steps"], "final_d_acc": b["history"]["d_acc"][-1]}

