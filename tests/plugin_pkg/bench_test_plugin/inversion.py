"""``spine-plugin-inversion``: gradient-ascent class inversion judged by the target (test plugin).

For each private class, Adam on a sigmoid-parametrised image maximises the target's log-probability
of that class (Fredrikson et al. 2015 in its simplest form); ``top1`` is the fraction of
reconstructions the target itself assigns to their class (self-judged: a plugin shows the
inversion kind, not a faithful evaluation protocol).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api import Attack, AttackResult, register_attack


@dataclass
class PluginInversionConfig:
    steps: int = 30
    lr: float = 0.1


@register_attack("spine-plugin-inversion")
class PluginInversion(Attack):
    """Test plugin: one gradient-ascent reconstruction per private class."""

    Config = PluginInversionConfig
    kind = "inversion"
    metrics = ("top1", "mean_target_prob")
    summary = ("top1",)

    def run(self, ctx, release) -> AttackResult:
        model = release.model.to(ctx.device).eval()
        classes = list(ctx.task.info.get("private_classes") or range(ctx.task.num_classes))
        gen = torch.Generator().manual_seed(ctx.seed)
        z = (0.1 * torch.randn(len(classes), *ctx.task.image_shape, generator=gen)).to(ctx.device)
        z.requires_grad_(True)
        y = torch.tensor(classes, device=ctx.device)
        opt = torch.optim.Adam([z], lr=self.config.lr)
        for _ in range(self.config.steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(torch.sigmoid(z)), y)
            loss.backward()
            opt.step()
        with torch.no_grad():
            x = torch.sigmoid(z)
            p = F.softmax(model(x), 1)
        top1 = float((p.argmax(1) == y).float().mean())
        prob = float(p.gather(1, y[:, None]).mean())
        return AttackResult({"top1": top1, "mean_target_prob": prob},
                            {"images": x[:, None].cpu().numpy(), "classes": y.cpu().numpy()})
