"""Seeded model construction shared by the library's trainers (the distillation defenses'
students and generators, the one-shot federated clients): :func:`seeded_init`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module under a fixed torch seed (independent of whatever ran before, e.g. a teacher
    trained on a cache miss), restoring the global RNG afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)
