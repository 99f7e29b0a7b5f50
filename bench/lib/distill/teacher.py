"""The teacher and the seeded models of the data-free distillation defenses: :func:`get_teacher`
(the cached non-private ``none`` release of the same task and seed) and :func:`seeded_init`
(a module built under a fixed torch seed)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def get_teacher(ctx, teacher_config: dict) -> nn.Module:
    """The cached non-private ``none`` release of the same task and seed (the shared teacher)."""
    rel = ctx.fit_defense("none", dict(teacher_config or {}))
    teacher = rel.model.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module under a fixed torch seed (independent of whatever ran before, e.g. a teacher
    trained on a cache miss), restoring the global RNG afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)
