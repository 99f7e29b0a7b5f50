"""Executors: where cells run. One interface, several back ends.

``Executor.imap(fn, jobs)`` yields ``fn(job)`` results as they complete. ``fn`` must be a
module-level function and ``job`` picklable, so any back end (process pool today, Ray later
through the same seam) can ship them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait


class Executor:
    name = "base"
    parallel = 1

    def imap(self, fn: Callable, jobs: Iterable) -> Iterator:  # pragma: no cover - abstract
        raise NotImplementedError


class SequentialExecutor(Executor):
    name = "sequential"

    def imap(self, fn, jobs):
        for job in jobs:
            yield fn(job)


def _init_worker(threads: int):
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from .cli import _quiet_known_warnings

    _quiet_known_warnings()


class ProcessPoolExecutorBackend(Executor):
    """A local pool of ``jobs`` spawned processes; each gets ``cpu_count // jobs`` torch threads."""

    name = "process"

    def __init__(self, jobs: int):
        self.parallel = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def imap(self, fn, jobs):
        jobs = list(jobs)
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(self.parallel, mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.threads,)) as pool:
            pending = {pool.submit(fn, j) for j in jobs}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()


def make_executor(jobs: int = 1, kind: str | None = None) -> Executor:
    if kind in (None, "local", "process", "sequential"):
        return SequentialExecutor() if jobs <= 1 else ProcessPoolExecutorBackend(jobs)
    raise ValueError(f"unknown executor {kind!r}")
