"""``loss-threshold``: the loss-threshold membership attack of Yeom et al. (CSF 2018).

Score = -cross-entropy loss of the released model on (x, y); a lower loss means "member".
Evaluated on a balanced set: ``n_eval`` members drawn from the defense's member set and as many
non-members from the disjoint non-member pool (seeded). The ROC sweeps every threshold; Yeom's
own rule (threshold = mean training loss) is reported too, as ``yeom_acc``, computed with the
mean loss over the evaluated members (the attacker's knowledge in the paper's setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.api import Attack, AttackResult
from bench.metrics import membership_metrics
from bench.registry import register_attack
from bench.train import per_example_loss


@dataclass
class LossThresholdConfig:
    #: members and non-members evaluated (each); capped by what the splits hold
    n_eval: int = 1000


def balanced_eval_sets(task, n_eval: int, seed: int):
    rng = np.random.default_rng(seed)
    n = min(n_eval, len(task.members), len(task.nonmembers))
    mi = np.sort(rng.choice(len(task.members), n, replace=False))
    ni = np.sort(rng.choice(len(task.nonmembers), n, replace=False))
    return task.members.subset(mi), task.nonmembers.subset(ni)


@register_attack("loss-threshold")
class LossThreshold(Attack):
    """Loss-threshold membership inference (Yeom et al. 2018)."""

    Config = LossThresholdConfig
    kind = "membership"
    paper = "Yeom, Giacomelli, Fredrikson, Jha: Privacy Risk in Machine Learning, CSF 2018"

    def run(self, ctx, release) -> AttackResult:
        members, nonmembers = balanced_eval_sets(ctx.task, self.config.n_eval, ctx.seed)
        lm = per_example_loss(release.model, members, ctx.device)
        ln = per_example_loss(release.model, nonmembers, ctx.device)
        scores = -np.concatenate([lm, ln])
        labels = np.concatenate([np.ones(len(lm)), np.zeros(len(ln))]).astype(np.int8)
        metrics = membership_metrics(scores, labels)
        tau = float(lm.mean())
        metrics["yeom_acc"] = 0.5 * (float((lm <= tau).mean()) + float((ln > tau).mean()))
        return AttackResult(metrics, {"scores": scores.astype(np.float32), "labels": labels},
                            {"threshold_rule": "mean member loss"})
