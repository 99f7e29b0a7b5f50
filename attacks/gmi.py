"""``gmi``: the generative model-inversion attack of Zhang et al. (CVPR 2020), "The Secret Revealer".

Stage 1: a WGAN-GP (generator G, critic D) on the attacker's public images (the inversion
protocol's public classes), built once per dataset / public split / GAN config / seed through
``ctx.artifact`` and shared by every cell and every attack that asks for it.

Stage 2, per target class y and random restart: optimise the latent z of G to minimise
``L_prior + lambda * L_id`` with ``L_prior = -D(G(z))`` and ``L_id = CE(T(G(z)), y)``, lambda =
100, by momentum SGD in Nesterov form (momentum 0.9), clamping z to [-1, 1] after every step
(official code). Restarts are batched; the loss is the per-restart mean over classes summed over
restarts, so each restart gets exactly the gradient it would get alone. The judge scores every
restart (``top1`` = mean +- std over restarts); ``top1_selected`` is GMI's own rule (per class,
the restart with the highest target confidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.inversion.common import freeze
from bench.lib.inversion.evaluate import EVALUATION_METRICS, common_eval_kwargs, evaluate_inversion
from bench.lib.inversion.judge import EvaluatorConfig
from bench.lib.inversion.prior_wgan import WGANConfig, wgan_prior


@dataclass
class GMIConfig:
    #: weight of the identity loss (paper: 100)
    lam: float = 100.0
    #: latent step size (official MNIST attack.py: 1e-2; later scripts and KEDMI's GMI: 2e-2)
    lr: float = 0.02
    momentum: float = 0.9
    #: optimisation steps (official: 1500; BiDO's MNIST runs: 3000)
    iterations: int = 1500
    #: random restarts per target class (official: 5)
    restarts: int = 5
    #: z is clamped to [-clip, clip] after every step
    clip: float = 1.0
    #: the WGAN-GP prior (bench.lib.inversion.prior_wgan.WGANConfig): z_dim, dim, epochs, ...
    gan: WGANConfig = field(default_factory=WGANConfig)
    #: the judge (bench.lib.inversion.judge.EvaluatorConfig; shared by all attacks: change with care)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    lpips: bool = True
    #: cap on private members used for KNN / FID / LPIPS (0 = all)
    max_private: int = 0

    def validate(self):
        if self.iterations < 0 or self.restarts <= 0 or self.lr <= 0:
            raise BenchError("attacks.gmi: iterations >= 0, restarts > 0 and lr > 0 are required")


@register_attack("gmi")
class GMI(Attack):
    """Generative model inversion with a public WGAN-GP prior (Zhang et al. 2020)."""

    Config = GMIConfig
    kind = "inversion"
    metrics = (*EVALUATION_METRICS,
               "final_prior_loss", "final_iden_loss")
    summary = ()
    paper = "Zhang, Jia, Pei, Wang, Li, Song: The Secret Revealer: Generative Model-Inversion Attacks, CVPR 2020"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        T = freeze(release.model).to(ctx.device)
        G, D, ginfo = wgan_prior(ctx, c.gan)
        K, R = ctx.task.num_classes, c.restarts
        y = torch.arange(K).repeat(R).to(ctx.device)  # restart-major: row r*K + k
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + 11)
        z = torch.randn(R * K, G.z_dim, generator=gen).to(ctx.device)
        v = torch.zeros_like(z)
        for _ in ctx.progress(range(c.iterations), desc="gmi"):
            z.requires_grad_(True)
            fake = G(z)
            prior = -D(fake)
            iden = F.cross_entropy(T(fake), y, reduction="none")
            loss = (prior + c.lam * iden).view(R, K).mean(1).sum()
            (grad,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                v_prev = v
                v = c.momentum * v - c.lr * grad
                z = (z + (-c.momentum * v_prev + (1 + c.momentum) * v)).clamp(-c.clip, c.clip)
        with torch.no_grad():
            fake = G(z)
            prior_final = float(-D(fake).mean())
            iden_final = float(F.cross_entropy(T(fake), y))
        images = fake.view(R, K, *fake.shape[1:]).transpose(0, 1).cpu()  # (K, R, C, H, W)
        metrics, arrays, info = evaluate_inversion(ctx, images, T, **common_eval_kwargs(c))
        metrics.update({"final_prior_loss": prior_final, "final_iden_loss": iden_final})
        info.update({"gan": ginfo, "restarts": R, "iterations": c.iterations})
        return AttackResult(metrics, arrays, info)
