"""``spine-plugin-defense``: label randomized response, then ordinary training (test plugin).

Each member's label is kept with probability e^eps / (e^eps + K - 1) and otherwise replaced by
one of the K - 1 other labels uniformly: eps-label-DP for the labels (Warner 1965; Ghazi et al.
2021), nothing for the features, hence privacy unit ``label``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.api import Defense, PrivacyReport, Release, register_defense
from bench.lib.models import build_model, spec_for
from bench.lib.tasks import Split
from bench.lib.train import fit_classifier, seed_everything


@dataclass
class PluginDefenseConfig:
    epochs: int = 2
    lr: float = 3e-3


@register_defense("spine-plugin-defense")
class LabelRR(Defense):
    """Test plugin: label randomized response + MLP training."""

    Config = PluginDefenseConfig
    privacy_unit = "label"

    def fit(self, ctx) -> Release:
        gen = seed_everything(ctx.seed)
        k = ctx.task.num_classes
        y = ctx.task.members.y
        keep = math.exp(ctx.epsilon) / (math.exp(ctx.epsilon) + k - 1)
        flip = torch.rand(len(y), generator=gen) >= keep
        other = (y + torch.randint(1, k, (len(y),), generator=gen)) % k
        noisy = Split(ctx.task.members.x, torch.where(flip, other, y), ctx.task.members.index)
        spec = spec_for(ctx.task, "mlp")
        model, hist = fit_classifier(build_model(spec), noisy, ctx.task.val, epochs=self.config.epochs,
                                     lr=self.config.lr, batch_size=32, device=ctx.device, generator=gen,
                                     select_on_val=False)
        report = PrivacyReport(ctx.epsilon, 0.0, "label", "randomized response (exact)", "label RR")
        return Release({"model": model}, {"model": spec}, report, {"history": hist})
