"""``loss-threshold``: the loss-threshold membership attack of Yeom et al. (CSF 2018).

Score: a lower loss of the released model on (x, y) means "member". The score is the
true-class log-odds ``z_y - logsumexp_{j != y} z_j`` in float64 (``bench.lib.train.true_class_log_odds``),
a strictly increasing function of minus the cross-entropy loss, so every threshold on the loss
is a threshold on it, but computed so that confident predictions keep their order: float32
cross-entropy rounds to exactly 0 beyond a logit margin of about 17, which tied hundreds of
DP-SGD scores and made TPR at low FPR read below chance.

Evaluated on a balanced set: ``n_eval`` members drawn from the defense's member set and as many
non-members from the disjoint non-member pool (seeded). The ROC sweeps every threshold; Yeom's
own rule (threshold = mean training loss) is reported too, as ``yeom_acc``, computed with the
mean loss over the evaluated members (the attacker's knowledge in the paper's setting). Like every
membership attack it reports through ``bench.lib.membership.references.summarize``: bootstrap intervals and the
empirical epsilon lower bound ``eps_lb`` (Clopper-Pearson, ``bench.lib.audit.bounds.eps_lower_bound``).
On a release that records a client partition (FedAvg, DP-FedAvg, DENSE, DP-FedAvg-GAN) it adds the
per-client view (``bench.lib.membership.clients``: each client's AUC against class-matched
non-members and a permutation test of the most exposed client).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bench.api import Attack, AttackResult, register_attack
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.references import SUMMARY_METRICS, balanced_eval_sets, eval_split, summarize
from bench.lib.train import loss_from_log_odds, per_example_log_odds


@dataclass
class LossThresholdConfig:
    #: members and non-members evaluated (each); capped by what the splits hold
    n_eval: int = 1000
    #: bootstrap resamples for the confidence intervals (0: none)
    n_boot: int = 1000


@register_attack("loss-threshold")
class LossThreshold(Attack):
    """Loss-threshold membership inference (Yeom et al. 2018)."""

    Config = LossThresholdConfig
    kind = "membership"
    metrics = (*SUMMARY_METRICS,
               "yeom_acc", *CLIENT_VIEW_METRICS)
    summary = ("auc", "tpr_at_1%fpr")
    paper = "Yeom, Giacomelli, Fredrikson, Jha: Privacy Risk in Machine Learning, CSF 2018"

    def run(self, ctx, release) -> AttackResult:
        t0 = time.time()
        members, nonmembers = balanced_eval_sets(ctx.task, self.config.n_eval, ctx.seed)
        pm = per_example_log_odds(release.model, members, ctx.device)
        pn = per_example_log_odds(release.model, nonmembers, ctx.device)
        scores = np.concatenate([pm, pn])
        labels = np.concatenate([np.ones(len(pm)), np.zeros(len(pn))]).astype(np.int8)
        lm, ln = loss_from_log_odds(pm), loss_from_log_odds(pn)
        tau = float(lm.mean())
        yeom = 0.5 * (float((lm <= tau).mean()) + float((ln > tau).mean()))
        return summarize(ctx, release, scores, labels, n_boot=self.config.n_boot, refs=None, started=t0,
                         extra_metrics={"yeom_acc": yeom}, evaluated=eval_split(members, nonmembers)[0],
                         info={"threshold_rule": "mean member loss",
                               "score": "true-class log-odds (float64), increasing in minus the loss"})
