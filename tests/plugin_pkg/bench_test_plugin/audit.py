"""``spine-plugin-audit``: an epsilon lower bound from loss scores (test plugin).

Members' and non-members' negative losses through the library's audit statistics
(``bench.lib.audit.bounds.eps_lower_bound``, Clopper-Pearson, multiple-testing corrected).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.api import Attack, AttackResult, register_attack
from bench.lib.audit.bounds import eps_lower_bound
from bench.lib.membership.references import balanced_eval_sets
from bench.lib.train import per_example_loss


@dataclass
class PluginAuditConfig:
    n: int = 200


@register_attack("spine-plugin-audit")
class PluginAudit(Attack):
    """Test plugin: loss-score epsilon lower bound."""

    Config = PluginAuditConfig
    kind = "audit"
    metrics = ("eps_lb",)
    summary = ("eps_lb",)

    def run(self, ctx, release) -> AttackResult:
        members, nonmembers = balanced_eval_sets(ctx.task, self.config.n, ctx.seed)
        sm = -per_example_loss(release.model, members, ctx.device)
        sn = -per_example_loss(release.model, nonmembers, ctx.device)
        res = eps_lower_bound(sm, sn, delta=ctx.delta, seed=ctx.seed)
        scores = np.concatenate([sm, sn])
        labels = np.r_[np.ones(len(sm)), np.zeros(len(sn))].astype(np.int8)
        return AttackResult({"eps_lb": float(res.eps_lb)}, {"scores": scores, "labels": labels})
