"""``one-run-audit``: the one-training-run privacy audit of Steinke, Nasr & Jagielski ("Privacy
Auditing with One (1) Training Run", NeurIPS 2023), with natural canaries.

1. Draw ``m`` canaries from the task's non-member pool (never in the target's training set),
   seeded by the cell seed and ``canary_seed``.
2. Flip an independent fair coin per canary; the canaries that come up heads are **added to the
   member set** (the inclusion mask is recorded as ``included``).
3. Refit the **target's own defense, config and epsilon** (``ctx.defense``,
   ``ctx.defense_config``, ``ctx.epsilon``, the cell seed) on that derived member set through
   ``ctx.fit_defense(..., task=ctx.task.derive(rows, tag))``: the audited model goes through the
   runner's content-addressed cache like every reference model. The audited model is this
   refit, not the released target (which never saw a canary); for DP-SGD it is the same
   mechanism with the sample rate of the enlarged member set and the noise recalibrated to
   the same epsilon.
4. Score every canary by the audited model (``score: loss`` = minus the cross-entropy loss,
   the paper's black-box statistic; ``logit`` = LiRA's logit-scaled confidence), guess "in" for
   the k+ highest and "out" for the k- lowest scores, sweep (k+, k-) on a geometric grid with a
   Bonferroni correction and report the epsilon lower bound at 95 % (``eps_lb``) beside the
   largest bound this m could certify (``eps_lb_max_certifiable``): ``bench.audit.
   one_run_eps_lower_bound`` (p-value with the paper's delta term).

delta is the release's delta for DP targets (else the suite's). Works for any defense whose fit
reads ``ctx.task.members``. Natural canaries are the weakest kind (see
``docs/methods/audit.md``); mislabelled or crafted canaries need a runner change described
there. Cost: one extra fit of the defense per cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.audit.bounds import ONE_RUN_GRID_SIZE, one_run_eps_lower_bound
from bench.lib.membership.metrics import membership_metrics
from bench.lib.membership.references import audit_delta, logit_scaled_confidence
from bench.lib.train import accuracy, loss_from_log_odds, per_example_log_odds, predict_logits


@dataclass
class OneRunAuditConfig:
    #: canaries (drawn from the non-member pool; each included with probability 1/2)
    m: int = 200
    score: Literal["loss", "logit"] = "loss"
    #: confidence of the bound is 1 - alpha
    alpha: float = 0.05
    #: (k+, k-) values per side on the geometric guess grid (Bonferroni over all pairs)
    grid_size: int = ONE_RUN_GRID_SIZE
    canary_seed: int = 0

    def validate(self):
        if self.m < 2:
            raise BenchError("one-run-audit: m must be >= 2")
        if not 0 < self.alpha < 1:
            raise BenchError("one-run-audit: alpha must be in (0, 1)")
        if self.grid_size < 1:
            raise BenchError("one-run-audit: grid_size must be >= 1")


def draw_canaries(task, m: int, cell_seed: int, canary_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``task.nonmembers``, inclusion bits): m distinct canaries, fair coins."""
    if m > len(task.nonmembers):
        raise BenchError(f"one-run-audit: m = {m} canaries but the non-member pool holds only "
                         f"{len(task.nonmembers)} images")
    rng = np.random.default_rng([int(cell_seed), int(canary_seed), 0xCA7A])
    pos = np.sort(rng.choice(len(task.nonmembers), m, replace=False))
    included = rng.random(m) < 0.5
    return pos, included


def canary_task(task, m: int, cell_seed: int, canary_seed: int):
    """The derived task (members + included canaries), canary split and inclusion bits."""
    pos, included = draw_canaries(task, m, cell_seed, canary_seed)
    canaries = task.nonmembers.subset(pos)
    rows = np.concatenate([task.members.index, canaries.index[included]])
    derived = task.derive(rows, f"one-run-audit:{canary_seed}:{m}")
    return derived, canaries, included


@register_attack("one-run-audit")
class OneRunAudit(Attack):
    """One-run privacy audit with canaries (Steinke, Nasr, Jagielski 2023): epsilon lower bound at 95 %."""

    Config = OneRunAuditConfig
    kind = "audit"
    metrics = ("eps_lb", "eps_lb_max_certifiable", "m", "n_included", "guesses", "correct", "k_pos", "k_neg",
               "n_guess_pairs", "audited_model_test_acc", "audited_model_epsilon", "canary_auc",
               "canary_tpr_at_1%fpr", "attack_seconds")
    summary = ()
    paper = "Steinke, Nasr, Jagielski: Privacy Auditing with One (1) Training Run, NeurIPS 2023"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        if not getattr(ctx, "defense", ""):
            raise BenchError("one-run-audit: the context names no target defense")
        derived, canaries, included = canary_task(ctx.task, c.m, ctx.seed, c.canary_seed)
        audited = ctx.fit_defense(ctx.defense, ctx.defense_config, task=derived, epsilon=ctx.epsilon, seed=ctx.seed)
        if c.score == "loss":
            # minus the loss, from the float64 log-odds (a float32 loss rounds to 0 and ties)
            scores = -loss_from_log_odds(per_example_log_odds(audited.model, canaries, ctx.device))
        else:
            scores = logit_scaled_confidence(predict_logits(audited.model, canaries.x, ctx.device).cpu(), canaries.y)
        scores = np.asarray(scores, dtype=np.float64)
        delta = audit_delta(ctx, audited)
        res = one_run_eps_lower_bound(scores, included, alpha=c.alpha, delta=delta, grid_size=c.grid_size, m=c.m,
                                      seed=ctx.seed)
        metrics = {"eps_lb": res.eps_lb, "eps_lb_max_certifiable": res.eps_max, "m": float(c.m),
                   "n_included": float(included.sum()), "guesses": float(res.guesses), "correct": float(res.correct),
                   "k_pos": float(res.k_pos), "k_neg": float(res.k_neg), "n_guess_pairs": float(res.n_tries),
                   "audited_model_test_acc": accuracy(audited.model, ctx.task.test, ctx.device)}
        if np.isfinite(audited.privacy.epsilon):
            metrics["audited_model_epsilon"] = float(audited.privacy.epsilon)
        if 0 < included.sum() < len(included):
            mm = membership_metrics(scores, included.astype(int))
            metrics.update({"canary_auc": mm["auc"], "canary_tpr_at_1%fpr": mm["tpr_at_1%fpr"]})
        metrics["attack_seconds"] = float(time.time() - t0)
        arrays = {"scores": scores.astype(np.float64), "labels": included.astype(np.int8),
                  "canary_rows": canaries.index.astype(np.int64)}
        info = {"canaries": "natural (non-member pool images, true labels)", "score": c.score, "delta": delta,
                "alpha": c.alpha, "audited_member_count": int(len(derived.members)),
                "audited_privacy": audited.privacy.to_dict()}
        return AttackResult(metrics, arrays, info)
