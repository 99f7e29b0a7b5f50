"""Where a cell's time goes: wall and CPU seconds per stage, recorded by the runner.

Stages: ``fit`` (the cell's target release), ``defense-fit`` (a release a method asks for with
``ctx.fit_defense``: a transcription's non-private teacher, an audit's audited model), ``references`` (the
reference/shadow releases of one ``ctx.fit_many`` call), ``inversion-fit`` (the inversion-protocol
release), ``artifact`` (a shared artifact: GAN prior, inversion judge) and ``attack``. Stages nest
(an attack's references are inside the attack): each record carries its inclusive time and its
own (``self_*``: minus the stages inside it), so per-stage sums of ``self_*`` add up to the cell.
CPU seconds are this process's (``time.process_time``, every thread): work shipped to other
processes (``--jobs`` reference pools, Ray tasks) shows as wall time only. ``cached``: the stage
was a cache hit (its time is the load).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass

STAGES = ("fit", "defense-fit", "references", "inversion-fit", "artifact", "attack")


@dataclass(frozen=True)
class StageTime:
    stage: str
    name: str
    wall: float
    cpu: float
    self_wall: float
    self_cpu: float
    cached: bool

    def as_tuple(self) -> tuple:
        return astuple(self)


class StageClock:
    """Collects :class:`StageTime` records of one cell (not thread-safe; one cell per process)."""

    def __init__(self):
        self.records: list[StageTime] = []
        self._stack: list[dict] = []

    @contextmanager
    def stage(self, stage: str, name: str):
        """Time the block; the block may set ``frame["cached"] = True`` when it was a cache hit."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        frame = {"child_wall": 0.0, "child_cpu": 0.0, "cached": False}
        self._stack.append(frame)
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield frame
        finally:
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            self._stack.pop()
            if self._stack:
                self._stack[-1]["child_wall"] += wall
                self._stack[-1]["child_cpu"] += cpu
            self.records.append(StageTime(stage, str(name), wall, cpu, max(0.0, wall - frame["child_wall"]),
                                          max(0.0, cpu - frame["child_cpu"]), bool(frame["cached"])))
