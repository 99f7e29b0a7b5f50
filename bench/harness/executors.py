"""Executors: where cells run. One interface, several back ends.

``Executor.imap(fn, jobs)`` yields ``fn(job)`` results as they complete. ``fn`` must be a
module-level function and ``job`` picklable, so any back end (a local process pool, Ray tasks on
a cluster) can ship them.

Who writes the store: local workers (sequential, process pool) record their own cell in the run
directory's SQLite store, which is on the same machine. Ray workers may run on other machines, so
an executor with ``records_in_driver = True`` only computes and returns the cell's record; the
runner writes it into the store in the driver process (``bench/harness/runner.py``). Either way the
artifacts go to the content-addressed cache, which on a multi-node cluster must be a path every
node sees (shared filesystem), like the data root.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from bench.core.errors import quiet_known_warnings


class Executor:
    name = "base"
    parallel = 1
    #: True: ``fn`` runs where the run directory may not be reachable; the runner records results
    records_in_driver = False

    def imap(self, fn: Callable, jobs: Iterable) -> Iterator:  # pragma: no cover - abstract
        raise NotImplementedError


class SequentialExecutor(Executor):
    name = "sequential"

    def imap(self, fn, jobs):
        for job in jobs:
            yield fn(job)


def _exit_with_parent(parent: int, poll: float = 0.5) -> None:
    """A daemon thread that ends this worker when the process that started it is gone (a driver
    killed with SIGKILL cannot tell its pool; without this the workers keep computing cells and
    then idle forever as orphans)."""

    def watch():
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def _init_pool_worker(threads: int, parent: int):
    # Ctrl-C goes to the whole process group: the driver alone decides (it cancels the pending
    # cells and stops the workers), so that a worker does not turn SIGINT into a failed cell and
    # go on with the next one
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    _init_worker(threads)


def _init_worker(threads: int):
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    quiet_known_warnings()


class ProcessPoolExecutorBackend(Executor):
    """A local pool of ``jobs`` spawned processes; each gets ``cpu_count // jobs`` torch threads."""

    name = "process"

    def __init__(self, jobs: int):
        self.parallel = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def imap(self, fn, jobs):
        """At most ``parallel`` jobs are submitted at a time, so an interruption leaves nothing
        queued; on Ctrl-C (or any exit of the consumer) the pool's workers are stopped at once:
        cells in flight are not recorded and rerun on resume, finished ones are stored."""
        todo = iter(jobs)
        ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(self.parallel, mp_context=ctx, initializer=_init_pool_worker,
                                   initargs=(self.threads, os.getpid()))
        clean = False
        try:
            pending = set()
            for j in itertools.islice(todo, self.parallel):
                pending.add(pool.submit(fn, j))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    nxt = next(todo, _END)
                    if nxt is not _END:
                        pending.add(pool.submit(fn, nxt))
                    yield f.result()
            clean = True
        finally:
            if clean:
                pool.shutdown(wait=True)
            else:
                _stop_pool(pool)


_END = object()


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what is queued and end the workers now (SIGTERM, then SIGKILL after 5 s)."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join(1)


def _import_ray():
    try:
        import ray
    except ImportError:
        from bench.core.errors import BenchError

        raise BenchError("--executor ray needs the optional dependency ray: pip install 'privacy-bench[ray]'") from None
    return ray


def _ray_call(fn: Callable, job, threads: int):
    """Body of every Ray task: the same thread and warning setup as a local pool worker."""
    _init_worker(threads)
    return fn(job)


class RayExecutor(Executor):
    """Every job is one Ray task with ``num_cpus`` CPUs (torch uses that many threads) and
    ``num_gpus`` GPUs. Connects to ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)
    or, with no address, starts a local Ray instance with ``local_cpus`` CPUs (default: all).
    Inside a Ray task (nested work such as reference models) it reuses the worker's connection.
    Results are yielded in completion order; the driver writes them into the store."""

    name = "ray"
    records_in_driver = True

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float = 0,
                 local_cpus: int | None = None):
        ray = _import_ray()
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
        self._ray = ray
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.parallel = max(1, int(ray.available_resources().get("CPU", 1) // max(num_cpus, 1e-9)))
        self._remote = ray.remote(_ray_call).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)

    def imap(self, fn, jobs):
        ray = self._ray
        threads = max(1, int(self.num_cpus))
        pending = [self._remote.remote(fn, j, threads) for j in jobs]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
        finally:
            for ref in pending:  # the consumer stopped early (error, interrupt): free the cluster
                ray.cancel(ref)


def make_executor(jobs: int = 1, kind: str | None = None, *, address: str | None = None,
                  device: str = "cpu") -> Executor:
    """``kind``: ``local`` (default; sequential for ``jobs <= 1``, else a process pool of
    ``jobs``) or ``ray`` (tasks of 1 CPU, plus 1 GPU each when ``device`` is CUDA; a local Ray
    instance of ``jobs`` CPUs when ``jobs > 1`` and no ``address``)."""
    if kind in (None, "local", "process", "sequential"):
        return SequentialExecutor() if jobs <= 1 else ProcessPoolExecutorBackend(jobs)
    if kind == "ray":
        return RayExecutor(address, num_cpus=1, num_gpus=1 if str(device).startswith("cuda") else 0,
                           local_cpus=jobs if jobs > 1 else None)
    raise ValueError(f"unknown executor {kind!r}")
