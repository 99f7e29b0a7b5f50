"""Canary queries for audits in a distillation mechanism's own unit (shared by the defenses that
record them and by ``attacks/own_unit_audit.py``; see that module).

``draw_query_canaries`` gives ``m`` fixed inputs -- seeded uniform-noise images, drawn before the
run and independent of any teacher -- and an independent fair coin per canary. ``canary_answer``
is the answer that replaces the teacher's when the coin says so: the teacher's logits with their
classes rolled by one (another class's logits; the arg-max moves to the next class).
"""

from __future__ import annotations

import numpy as np
import torch


def canary_seed(cell_seed: int, seed: int) -> int:
    return int(np.random.SeedSequence([int(cell_seed), int(seed), 0xCA9A]).generate_state(1)[0]) % (2**31)


def draw_query_canaries(m: int, image_shape: tuple, cell_seed: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (m, *image_shape) in [0, 1], inclusion coins (m,) bool)."""
    g = torch.Generator().manual_seed(canary_seed(cell_seed, seed))
    x = torch.rand((int(m), *tuple(image_shape)), generator=g)
    included = torch.rand(int(m), generator=g) < 0.5
    return x, included


def canary_answer(teacher_logits: torch.Tensor) -> torch.Tensor:
    return torch.roll(teacher_logits, shifts=1, dims=-1)
