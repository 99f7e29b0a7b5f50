"""Canary queries for an audit of the distillation defenses in their own unit
(``attacks/own_unit_audit.py``): :class:`QueryCanaries` (fixed inputs whose teacher answer is
swapped with probability 1/2, recorded for the auditor), :func:`make_canaries` (from the
defense's ``own_unit_canaries`` config) and :func:`canary_info` (the record as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from bench.core.errors import BenchError
from bench.lib.audit.canaries import draw_query_canaries


@dataclass
class QueryCanaries:
    """Canary queries for an audit in the mechanism's own unit (``attacks/own_unit_audit.py``).

    ``m`` fixed inputs (seeded uniform-noise images, drawn before the run and independent of the
    teacher) are queried once, together with the batch of iteration ``iteration``. For each, an
    independent fair coin (``included``) decides whether the teacher's answer t is replaced by the
    canary answer t' = t with its classes rolled by one (another class's logits; in label mode the
    argmax moves to the next class). That is exactly the neighbouring relation of the ``query``
    (``label``) unit: two runs that differ in the answer to one query. Each canary is answered
    once (parallel composition, no extra epsilon in the own unit); its released annotation goes
    into that iteration's student update like any other. Recorded for the auditor, who in the DP
    game knows both candidate answers: the released annotation, the two noise-free candidates
    (data mode: the normalized gradients for t and t'; label mode: the two labels) and the student's
    logits at query time."""

    x: torch.Tensor
    included: torch.Tensor  # bool (m,)
    iteration: int
    record: dict = field(default_factory=dict)

    @classmethod
    def draw(cls, m: int, image_shape: tuple, cell_seed: int, seed: int, iteration: int) -> QueryCanaries:
        x, included = draw_query_canaries(m, image_shape, cell_seed, seed)
        return cls(x, included, int(iteration))


CANARY_KEYS = {"m", "seed", "iteration"}


def make_canaries(spec: dict, image_shape: tuple, iterations: int, cell_seed: int, name: str) -> Optional[QueryCanaries]:
    """``spec`` = the defense's ``own_unit_canaries`` config ({} = none): ``m`` canaries (>= 2),
    ``seed`` (default 0), ``iteration`` (1..iterations; default the last)."""
    if not spec:
        return None
    unknown = set(spec) - CANARY_KEYS
    if unknown:
        raise BenchError(f"{name}: own_unit_canaries has unknown keys {sorted(unknown)} (known: {sorted(CANARY_KEYS)})")
    m = int(spec.get("m", 0))
    it = int(spec.get("iteration", iterations) or iterations)
    if m < 2 or not 1 <= it <= iterations:
        raise BenchError(f"{name}: own_unit_canaries needs m >= 2 and 1 <= iteration <= {iterations}")
    return QueryCanaries.draw(m, image_shape, cell_seed, int(spec.get("seed", 0)), it)


def canary_info(canaries: Optional[QueryCanaries]) -> dict:
    """The canary record as JSON lists (for ``release.info["own_unit_canaries"]``)."""
    if canaries is None:
        return {}
    if not canaries.record:
        raise RuntimeError("the canary iteration was never reached")
    return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in canaries.record.items()}
