"""``mi-face``: the white-box model-inversion attack of Fredrikson, Jha, Ristenpart (CCS 2015), the
GAN-free baseline.

MI-FACE: gradient descent **in pixel space** on the cost c(x) = 1 - f_y(x) (f_y = the target's
softmax probability of class y) plus an optional auxiliary term (here total variation, weight
``tv``, 0 by default = the paper's plain cost), from x0 = 0, with step size ``lr``, for at most
``iterations`` steps; it stops early when the cost has not improved for ``patience`` steps or
falls below ``1 - gamma``. Each step is followed by the projection onto the image domain [0, 1]
(the paper's PROCESS step is the identity here; no denoising autoencoder). Restart 0 starts at
x0 = 0 as in the paper; further restarts add U[0, ``init_noise``) noise so they differ. All
classes and restarts run as one batch, each with its own stopping rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.inversion.common import freeze
from bench.lib.inversion.evaluate import EVALUATION_METRICS, common_eval_kwargs, evaluate_inversion
from bench.lib.inversion.judge import EvaluatorConfig


@dataclass
class MIFaceConfig:
    #: gradient step size lambda (paper: 0.1)
    lr: float = 0.1
    #: maximum steps alpha (paper: 5000)
    iterations: int = 5000
    #: stop a run when its cost has not improved for this many steps (paper beta: 100)
    patience: int = 100
    #: stop a run when its cost falls below 1 - gamma (paper gamma: 0.99)
    gamma: float = 0.99
    #: weight of a total-variation auxiliary term (0 = the paper's cost)
    tv: float = 0.0
    restarts: int = 5
    init_noise: float = 0.1
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    lpips: bool = True
    max_private: int = 0

    def validate(self):
        if self.iterations < 0 or self.restarts <= 0 or self.lr <= 0 or self.patience <= 0:
            raise BenchError("attacks.mi-face: iterations >= 0, restarts > 0, patience > 0 and lr > 0 are required")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))


@register_attack("mi-face")
class MIFace(Attack):
    """White-box gradient-descent inversion in pixel space (Fredrikson et al. 2015), no GAN."""

    Config = MIFaceConfig
    kind = "inversion"
    metrics = (*EVALUATION_METRICS,
               "final_cost", "steps")
    summary = ()
    paper = ("Fredrikson, Jha, Ristenpart: Model Inversion Attacks that Exploit Confidence Information and Basic "
             "Countermeasures, CCS 2015")

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        T = freeze(release.model).to(ctx.device)
        K, R = ctx.task.num_classes, c.restarts
        shape = tuple(ctx.task.image_shape)
        y = torch.arange(K).repeat(R).to(ctx.device)
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + 5)
        x = torch.rand(R * K, *shape, generator=gen) * c.init_noise
        x[:K] = 0.0  # restart 0: the paper's x0 = 0
        x = x.to(ctx.device)
        best_x, best_cost = x.clone(), torch.full((R * K,), float("inf"), device=ctx.device)
        since = torch.zeros(R * K, dtype=torch.long, device=ctx.device)
        active = torch.ones(R * K, dtype=torch.bool, device=ctx.device)
        steps = 0
        for _ in ctx.progress(range(c.iterations), desc="mi-face"):
            if not bool(active.any()):
                break
            steps += 1
            x.requires_grad_(True)
            p = F.softmax(T(x), 1).gather(1, y[:, None]).squeeze(1)
            cost = 1 - p + (c.tv * total_variation(x) if c.tv else 0.0)
            (grad,) = torch.autograd.grad(cost.sum(), x)
            with torch.no_grad():
                cost = cost.detach()
                improved = cost < best_cost
                best_cost = torch.where(improved, cost, best_cost)
                best_x[improved] = x.detach()[improved]
                since = torch.where(improved, torch.zeros_like(since), since + 1)
                active &= (since < c.patience) & (cost > 1 - c.gamma)
                step = c.lr * grad * active.view(-1, *([1] * len(shape))).float()
                x = (x.detach() - step).clamp(0, 1)
        with torch.no_grad():  # the final iterate if it is the best one, else the best seen
            p = F.softmax(T(x), 1).gather(1, y[:, None]).squeeze(1)
            cost = 1 - p + (c.tv * total_variation(x) if c.tv else 0.0)
            better = cost < best_cost
            best_x[better] = x[better]
            best_cost = torch.where(better, cost, best_cost)
        images = best_x.view(R, K, *shape).transpose(0, 1).cpu()
        metrics, arrays, info = evaluate_inversion(ctx, images, T, **common_eval_kwargs(c))
        metrics.update({"final_cost": float(best_cost.mean()), "steps": float(steps)})
        info.update({"restarts": R, "iterations_run": steps})
        return AttackResult(metrics, arrays, info)
