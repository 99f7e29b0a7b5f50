"""``spine-plugin-attack``: negative loss on n members and n non-members (test plugin)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.api import Attack, AttackResult, register_attack
from bench.lib.membership.metrics import membership_metrics
from bench.lib.train import per_example_loss


@dataclass
class PluginAttackConfig:
    n: int = 50


@register_attack("spine-plugin-attack")
class PluginAttack(Attack):
    """Test plugin: loss scores on the first n members / non-members."""

    Config = PluginAttackConfig
    kind = "membership"
    metrics = ("auc", "balanced_acc", "advantage", "tpr_at_0.1%fpr", "tpr_at_1%fpr", "n_scored")
    summary = ("auc",)

    def run(self, ctx, release) -> AttackResult:
        n = min(self.config.n, len(ctx.task.members), len(ctx.task.nonmembers))
        lm = per_example_loss(release.model, ctx.task.members.subset(np.arange(n)), ctx.device)
        ln = per_example_loss(release.model, ctx.task.nonmembers.subset(np.arange(n)), ctx.device)
        scores = -np.concatenate([lm, ln])
        labels = np.r_[np.ones(n), np.zeros(n)].astype(np.int8)
        metrics = membership_metrics(scores, labels)
        metrics["n_scored"] = float(len(scores))
        return AttackResult(metrics, {"scores": scores.astype(np.float32), "labels": labels})
