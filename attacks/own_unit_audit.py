"""``own-unit-audit``: an empirical privacy audit in the mechanism's **own** unit (``query`` for
the data-sensitive distillation mechanisms of ``dpsd`` / ``dpdfd``, ``label`` for DPSD's label
mode), with the one-run bound of Steinke, Nasr & Jagielski (NeurIPS 2023).

A membership audit tests the add/remove-one-example relation; a method whose claim is "ε per
teacher answer" (or per label) is not bounded by it, so its own claim needs its own audit:

1. Refit the target's defense, config and ε with ``own_unit_canaries: {m, seed, iteration}``
   (through ``ctx.fit_defense``, cached like every reference model). The defense draws ``m``
   canary queries (seeded uniform-noise images, fixed before the run, independent of the teacher)
   and queries them once, together with one iteration's batch; for each, an independent fair coin
   replaces the teacher's answer t by the canary answer t' (t's classes rolled by one: another
   class's logits; in label mode the next class). Two runs that differ in one canary's coin are
   exactly neighbours in the ``query`` (``label``) unit.
2. **From the release** (what the unit protects: the DP targets / RR labels of those queries). The
   auditor knows both candidate answers (as in the DP game). Data mode: the released target is
   ``s - eta (gbar + n)``, so the noisy answer is ``ghat = (s - target) / eta``; with the two
   noise-free candidates gbar_out (for t) and gbar_in (for t'), the score is the Gaussian
   log-likelihood ratio ``(||ghat - gbar_out||^2 - ||ghat - gbar_in||^2) / (2 std^2)`` (the
   Neyman-Pearson test; ``std`` the noise std the mechanism applied, or 1 if it applied none).
   Label mode: +1 if the released label is the canary label, -1 if it is the teacher's, 0 else.
3. **From the final student alone** (no access to the release): the student's log-odds of the
   canary class against the teacher's class on the canary input.
4. Each score vector goes through ``bench.lib.audit.bounds.one_run_eps_lower_bound`` (ties ordered against
   the auditor, Bonferroni over the guess grid): ``eps_lb_own_unit`` (release) and
   ``eps_lb_own_unit_student`` (student), each with its ceiling for this m. They are bounds in the
   claim's own unit and are compared with the claim of that unit (``reports/audit_table.py``),
   never with an example-level claim (their metric names are not ``eps_lb``).

delta: the release's own delta (0 for the pure-DP label mode). On defenses without canary support
(or without a query / label claim) the attack is skipped with the reason recorded in its info.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.audit.bounds import one_run_eps_lower_bound
from bench.lib.audit.canaries import draw_query_canaries
from bench.lib.membership.metrics import membership_metrics

#: defenses whose mechanism records canary queries (config key ``own_unit_canaries``)
SUPPORTED = ("dpsd", "dpdfd")


@dataclass
class OwnUnitAuditConfig:
    #: canary queries (each answered once; coin 1/2 for the canary answer)
    m: int = 1000
    #: the iteration whose batch the canaries join (0 = the last)
    iteration: int = 0
    alpha: float = 0.05
    #: (k+, k-) values per side of the guess grid (Bonferroni over all pairs)
    grid_size: int = 4
    canary_seed: int = 0

    def validate(self):
        if self.m < 2:
            raise BenchError("own-unit-audit: m must be >= 2")
        if not 0 < self.alpha < 1 or self.grid_size < 1 or self.iteration < 0:
            raise BenchError("own-unit-audit: need 0 < alpha < 1, grid_size >= 1, iteration >= 0")


def release_scores(record: dict) -> np.ndarray:
    """Scores from what the mechanism released for the canaries (higher = "canary answer")."""
    if "clean_in" not in record:  # label mode: the released label
        rel = np.asarray(record["released"]).astype(np.int64).ravel()
        return (rel == np.asarray(record["label_in"])).astype(np.float64) - \
            (rel == np.asarray(record["label_out"])).astype(np.float64)
    s = np.asarray(record["student_logits"], dtype=np.float64)
    target = np.asarray(record["released"], dtype=np.float64)
    eta = float(record.get("target_step", 1.0)) or 1.0
    ghat = (s - target) / eta
    g_out = np.asarray(record["clean_out"], dtype=np.float64)
    g_in = np.asarray(record["clean_in"], dtype=np.float64)
    std = float(record.get("noise_std", 0.0)) or 1.0
    return (((ghat - g_out) ** 2).sum(1) - ((ghat - g_in) ** 2).sum(1)) / (2.0 * std ** 2)


def student_scores(student, x: torch.Tensor, label_in: np.ndarray, label_out: np.ndarray, device) -> np.ndarray:
    """The final student's log-odds of the canary class against the teacher's class."""
    from bench.lib.train import predict_logits

    z = predict_logits(student, x, device).double()
    li = torch.as_tensor(np.asarray(label_in), dtype=torch.long)
    lo = torch.as_tensor(np.asarray(label_out), dtype=torch.long)
    rows = torch.arange(len(z))
    return (z[rows, li] - z[rows, lo]).numpy()


@register_attack("own-unit-audit")
class OwnUnitAudit(Attack):
    """Canary audit in the mechanism's own unit (query / label): eps lower bound at 95 %, from the release and from the student."""

    Config = OwnUnitAuditConfig
    kind = "audit"
    metrics = ("eps_lb_own_unit", "eps_lb_own_unit_max_certifiable", "eps_lb_own_unit_student",
               "eps_lb_own_unit_student_max_certifiable", "m", "n_included", "guesses", "correct",
               "audited_claimed_epsilon", "canary_auc", "canary_auc_student", "attack_seconds")
    summary = ()
    paper = "Steinke, Nasr, Jagielski: Privacy Auditing with One (1) Training Run, NeurIPS 2023 (canaries in the query unit)"

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        if ctx.defense not in SUPPORTED or release.privacy.unit not in ("query", "label"):
            # recorded, not a failure: a suite's attacks run on every defense of the suite
            reason = (f"own-unit-audit: defense '{ctx.defense}' (unit '{release.privacy.unit}') records no canary "
                      f"queries in a query or label unit (supported: {', '.join(SUPPORTED)}); attack skipped")
            ctx.log(reason)
            return AttackResult({}, {}, {"skipped": reason})
        cfg = {**dict(ctx.defense_config or {}),
               "own_unit_canaries": {"m": c.m, "seed": c.canary_seed, "iteration": c.iteration}}
        audited = ctx.fit_defense(ctx.defense, cfg, epsilon=ctx.epsilon, seed=ctx.seed)
        rec = (audited.info or {}).get("own_unit_canaries")
        if not rec:
            raise BenchError("own-unit-audit: the audited refit recorded no canary queries")
        included = np.asarray(rec["included"]).astype(bool)
        delta = float(audited.privacy.delta or 0.0)
        s_rel = release_scores(rec)
        r_rel = one_run_eps_lower_bound(s_rel, included, alpha=c.alpha, delta=delta, grid_size=c.grid_size,
                                        seed=ctx.seed)
        # the final student alone, on the same seeded canary inputs
        x, inc2 = draw_query_canaries(c.m, ctx.task.image_shape, ctx.seed, c.canary_seed)
        if not np.array_equal(inc2.numpy(), included):
            raise BenchError("own-unit-audit: the refit's canaries are not the ones this audit draws")
        s_stu = student_scores(audited.model, x, np.asarray(rec["label_in"]), np.asarray(rec["label_out"]),
                               ctx.device)
        r_stu = one_run_eps_lower_bound(s_stu, included, alpha=c.alpha, delta=delta, grid_size=c.grid_size,
                                        seed=ctx.seed)
        metrics = {"eps_lb_own_unit": r_rel.eps_lb, "eps_lb_own_unit_max_certifiable": r_rel.eps_max,
                   "eps_lb_own_unit_student": r_stu.eps_lb, "eps_lb_own_unit_student_max_certifiable": r_stu.eps_max,
                   "m": float(len(included)), "n_included": float(included.sum()),
                   "guesses": float(r_rel.guesses), "correct": float(r_rel.correct),
                   "audited_claimed_epsilon": float(audited.privacy.epsilon)}
        if 0 < included.sum() < len(included):
            metrics["canary_auc"] = membership_metrics(s_rel, included.astype(int))["auc"]
            metrics["canary_auc_student"] = membership_metrics(s_stu, included.astype(int))["auc"]
        metrics["attack_seconds"] = float(time.time() - t0)
        arrays = {"scores": s_rel.astype(np.float64), "labels": included.astype(np.int8),
                  "student_scores": s_stu.astype(np.float64)}
        info = {"unit": release.privacy.unit, "audited_unit": audited.privacy.unit, "delta": delta,
                "alpha": c.alpha, "grid_size": c.grid_size, "iteration": rec.get("iteration"),
                "canaries": "seeded uniform-noise images; canary answer = teacher logits rolled by one class",
                "audited_privacy": audited.privacy.to_dict()}
        return AttackResult(metrics, arrays, info)
