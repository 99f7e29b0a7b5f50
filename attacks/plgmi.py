"""``plgmi``: Pseudo Label-Guided Model Inversion (Yuan, Chen, Zhang, Zhang, Yu, Zhang, AAAI 2023).

Stage 1 (per target): **top-n selection** - the target ranks the attacker's public images by
its probability of each target class and the top n of each class get that class as a
pseudo-label; a **conditional GAN** (class-conditional-BN generator, spectral-norm projection
discriminator, hinge loss) is trained on them, the generator loss adding alpha = 0.2 x the
target's **max-margin loss** on an augmented G(z, y). Built through ``ctx.artifact`` keyed by
the target's weights (once per target).

Stage 2, per target class y and restart: optimise only z (y fixed) with Adam (lr 0.1) on the
max-margin loss of the target over **two independent augmentations** of G(z, y) (random resized
crop, small rotation, brightness/contrast jitter); no discriminator term - realism comes from
the conditional generator. ``top1`` = mean +- std over restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.inversion.common import freeze, max_margin_loss, resolve
from bench.lib.inversion.evaluate import EVALUATION_METRICS, common_eval_kwargs, evaluate_inversion
from bench.lib.inversion.judge import EvaluatorConfig
from bench.lib.inversion.prior_plgmi import PLGGANConfig, augment, plg_gan


@dataclass
class PLGMIConfig:
    #: Adam step size on z (official: 0.1)
    lr: float = 0.1
    #: optimisation steps (official: 600)
    iterations: int = 600
    #: random restarts per target class (official: 5 seeds)
    restarts: int = 5
    #: augmentations of G(z, y) per step, each scored by the target (official: 2)
    n_aug: int = 2
    #: the conditional GAN and its pseudo-labels (bench.lib.inversion.prior_plgmi.PLGGANConfig)
    gan: PLGGANConfig = field(default_factory=PLGGANConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    lpips: bool = True
    max_private: int = 0

    def validate(self):
        if self.iterations < 0 or self.restarts <= 0 or self.lr <= 0 or self.n_aug <= 0:
            raise BenchError("attacks.plgmi: iterations >= 0, restarts > 0, n_aug > 0 and lr > 0 are required")


@register_attack("plgmi")
class PLGMI(Attack):
    """Pseudo-label-guided model inversion with a conditional GAN (Yuan et al. 2023)."""

    Config = PLGMIConfig
    kind = "inversion"
    metrics = (*EVALUATION_METRICS,
               "final_margin_loss")
    summary = ()
    paper = ("Yuan, Chen, Zhang, Zhang, Yu, Zhang: Pseudo Label-Guided Model Inversion Attack via Conditional "
             "Generative Adversarial Network, AAAI 2023")

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        T = freeze(release.model).to(ctx.device)
        gan = resolve(PLGGANConfig, c.gan, "gan")  # a PLGGANConfig (or a mapping, config built by hand)
        G, ginfo = plg_gan(ctx, T, gan)
        hflip = bool(gan.hflip)
        K, R = ctx.task.num_classes, c.restarts
        y = torch.arange(K).repeat(R).to(ctx.device)
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + 23)
        z = torch.randn(R * K, G.z_dim, generator=gen).to(ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=c.lr)
        for _ in ctx.progress(range(c.iterations), desc="plgmi"):
            fake = G(z, y)
            loss = sum(max_margin_loss(T(augment(fake, hflip=hflip)), y).view(R, K).mean(1).sum()
                       for _ in range(c.n_aug))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            fake = G(z, y)
            margin_final = float(max_margin_loss(T(fake), y).mean())
        images = fake.view(R, K, *fake.shape[1:]).transpose(0, 1).cpu()
        metrics, arrays, info = evaluate_inversion(ctx, images, T, **common_eval_kwargs(c))
        metrics["final_margin_loss"] = margin_final
        info.update({"gan": ginfo, "restarts": R, "iterations": c.iterations})
        return AttackResult(metrics, arrays, info)
