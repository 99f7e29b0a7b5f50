"""The runner: the only place that knows about caching, storage and parallelism.

suite -> cells -> (per cell) fit the defense (cached release) -> measure utility -> run every
attack (cached result) -> one transaction into the store. The cell context and the cached fits
are in :mod:`bench.harness.context`, code versions in :mod:`bench.harness.versioning`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from bench.core import registry
from bench.core.cache import Cache, digest
from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.core.records import Cell, CellRecord
from bench.core.store import Store, provenance
from bench.harness.context import CellContext, Env, fit_release, get_task
from bench.harness.executors import make_executor
from bench.harness.release_io import bundle_to_result, result_to_bundle
from bench.harness.suite import Suite
from bench.harness.timing import StageClock
from bench.harness.versioning import code_version, data_version
from bench.lib.datasets.base import cache_root, data_root
from bench.lib.tasks import build_task
from bench.lib.train import seed_everything


def cell_key(cell: Cell) -> str:
    """The store's key of a cell: the cell, the code versions of its defense and attacks and the
    data version of its dataset."""
    d = registry.get_defense(cell.defense)
    attacks = {a: code_version(registry.get_attack(c.get("method", a))) for a, c in cell.attacks.items()}
    return digest({"cell": cell.as_dict(), "code": code_version(d), "attack_code": attacks,
                   "data": data_version(cell.dataset)})[:24]


def _fmt_eps(eps: Optional[float]) -> str:
    return "inf" if eps is None or math.isinf(eps) else f"{eps:.3g}"


def execute_cell(job: tuple[Cell, Env]) -> dict:
    """Run one cell and record it in the store; never raises (failures are recorded)."""
    r = compute_cell(job)
    record_result(job[1], r)
    return r


def record_result(env: Env, r: dict) -> None:
    """Write a :func:`compute_cell` result into the run's store (one transaction)."""
    store = Store(env.run_dir)
    try:
        store.record_cell(r["record"])
    finally:
        store.close()


def compute_cell(job: tuple[Cell, Env]) -> dict:
    """Run one cell without touching the store; the result carries the store record
    (``r["record"]``). Never raises: a failure is part of the result."""
    cell, env = job
    if env.threads:
        torch.set_num_threads(env.threads)
    key = cell_key(cell)
    started = time.time()
    logs: list[str] = []
    cache = None
    prov = provenance(env.device)
    metrics: list[tuple[str, str, float]] = []
    artifacts: list[tuple[str, str, str, str]] = []
    attacks: list[tuple[str, str, str]] = []
    split = privacy = info = None
    clock = StageClock()
    try:
        cache = Cache(env.cache_dir)
        tasks: dict = {}
        dcfg = {"protocol": cell.protocol, "inversion": cell.inversion}
        task = get_task(cell.dataset, cell.protocol, cell.seed, env.data_root, tasks)
        ctx = CellContext(env, cache, task, cell.epsilon, cell.delta, cell.seed, logs, dcfg, tasks,
                          cell.defense, cell.defense_config, clock)
        dcls = registry.get_defense(cell.defense)
        with clock.stage("fit", cell.label) as frame:
            rel, utility, rkey = fit_release(ctx, dcls, cell.defense_config, task, cell.epsilon, cell.delta,
                                             cell.seed)
            frame["cached"] = rkey in ctx._hits
        split = task.info
        privacy = rel.privacy.to_dict()
        info = {"release": rel.info, "logs": logs}
        artifacts.append(("release", "release", rkey, str(cache.path("release", rkey))))
        metrics += [("utility", k, v) for k, v in utility.items()]
        if not math.isinf(rel.privacy.epsilon):
            metrics.append(("privacy", "epsilon_spent", rel.privacy.epsilon))
        inv_rel = None
        for aname, acfg in ctx.progress(list(cell.attacks.items()), desc=f"{cell.label} attacks", leave=False):
            acfg = dict(acfg)
            acls = registry.get_attack(acfg.pop("method", aname))
            target, tkey, atask = rel, rkey, task
            if acls.protocol() == "inversion":
                if inv_rel is None:
                    itask = ctx.task_for("inversion")
                    with clock.stage("inversion-fit", cell.label) as frame:
                        inv_rel, inv_util, ikey = fit_release(ctx, dcls, cell.defense_config, itask, cell.epsilon,
                                                              cell.delta, cell.seed)
                        frame["cached"] = ikey in ctx._hits
                    metrics += [("inversion-target", k, v) for k, v in inv_util.items()]
                    artifacts.append(("inversion-release", "release", ikey, str(cache.path("release", ikey))))
                target, tkey, atask = inv_rel, ikey, itask
            actx = CellContext(env, cache, atask, cell.epsilon, cell.delta, cell.seed, logs, dcfg, tasks,
                               cell.defense, cell.defense_config, clock)
            payload = {"kind": "attack", "attack": aname, "config": acfg, "release": tkey, "task": atask.fingerprint,
                       "seed": cell.seed, "code": code_version(acls),
                       "data": data_version(atask.dataset)}

            def build(acls=acls, acfg=acfg, actx=actx, target=target, aname=aname):
                seed_everything(cell.seed + 1)
                res = acls(make_config(acls.Config, acfg, f"attacks.{aname}")).run(actx, target)
                return result_to_bundle(res)

            with clock.stage("attack", aname) as frame:
                bundle, frame["cached"] = cache.get_or_build("attack", payload, build, logs.append)
            res = bundle_to_result(bundle)
            akey = digest(payload)
            artifacts.append((f"attack:{aname}", "attack", akey, str(cache.path("attack", akey))))
            metrics += [(aname, k, v) for k, v in res.metrics.items()]
            attacks.append((aname, acls.name, acls.kind))
        status, error = "done", None
    except BenchError as e:
        status, error = "failed", f"BenchError: {e}"
    except Exception:
        status, error = "failed", traceback.format_exc()
    wall = time.time() - started
    # JSON-safe now (as the store would write it), so the record pickles to any executor's driver
    info = json.loads(json.dumps(info if info is not None else {"logs": logs}, default=str))
    record = CellRecord(cell_key=key, run_id=env.run_id, cell=cell, status=status, split=split, privacy=privacy,
                        info=info, error=error, wall_time=wall, device=env.device, prov=prov,
                        metrics=tuple(metrics), artifacts=tuple(artifacts), attacks=tuple(attacks),
                        timings=tuple(t.as_tuple() for t in clock.records),
                        started=started)
    return {"cell": cell, "key": key, "status": status, "error": error, "metrics": metrics, "privacy": privacy,
            "wall": wall, "hits": cache.hits if cache else 0, "misses": cache.misses if cache else 0, "record": record}


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def projected_left(elapsed: float, done: int, total: int) -> str:
    """`` (about 3m20s left)``: the remaining cells at the mean pace of the cells done so far in
    this invocation (cached cells make the pace look faster; every line updates it)."""
    if done <= 0 or done >= total:
        return ""
    return f" (about {_fmt_seconds(elapsed / done * (total - done))} left)"


def summary_line(r: dict) -> str:
    c = r["cell"]
    head = f"{c.dataset} eps={_fmt_eps(c.epsilon)} {c.label} seed={c.seed}"
    if r["status"] != "done":
        last = (r["error"] or "").strip().splitlines()[-1:] or [""]
        return f"{head}: FAILED ({last[0][:200]})"
    m = {f"{s}.{n}" if s != "utility" else n: v for s, n, v in r["metrics"]}
    parts = [f"test_acc={m.get('test_acc', float('nan')):.4f}"]
    for k, v in m.items():
        if k.endswith(".auc") or k.endswith(".attack_acc"):
            parts.append(f"{k}={v:.3f}")
    p = r["privacy"] or {}
    if p.get("unit") and p["unit"] != "none":
        parts.append(f"eps_spent={_fmt_eps(p.get('epsilon'))} ({p['unit']}-level, delta={p['delta']:g}, {p['accountant']})")
    cache = "cached" if r["misses"] == 0 else f"{r['misses']} built, {r['hits']} cached"
    return f"{head}: {' '.join(parts)} [{r['wall']:.1f}s, {cache}]"


def run_suite(suite: Suite, out: str | Path, *, jobs: int = 1, device: str = "cpu",
              cache_dir: str | Path | None = None, data_dir: str | Path | None = None, argv=None,
              echo: Callable[[str], None] = print, progress: Optional[bool] = None, executor: str = "local",
              address: Optional[str] = None) -> dict:
    """Run every cell of ``suite`` not already finished in ``out``; returns counts.

    ``executor``: ``local`` (sequential, or a process pool of ``jobs``) or ``ray`` (one Ray task
    per cell and per reference model, at ``address`` or on a local Ray instance)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but torch.cuda.is_available() is False")
    if executor not in ("local", "ray"):
        raise BenchError(f"unknown executor {executor!r}: choose local or ray")
    if address and executor != "ray":
        raise BenchError("--address is the address of a Ray cluster: use it with --executor ray")
    if executor == "ray":
        from bench.harness.executors import _import_ray

        _import_ray()  # one line, before anything is written, when ray is not installed
    root = str(Path(data_dir) if data_dir else data_root())
    # pre-flight: missing data or impossible split sizes are user errors, found before anything is written
    needs_inversion = any(registry.get_attack(c.get("method", a)).protocol() == "inversion" for a, c in suite.attacks.items())
    for ds, dcfg in suite.datasets.items():
        for seed in suite.seeds:
            build_task(ds, dcfg["protocol"], seed, root)
            if needs_inversion:
                build_task(ds, dcfg["inversion"], seed, root)
    cells = suite.cells()
    out = Path(out)
    cache_path = Path(cache_dir) if cache_dir else cache_root() / "artifacts"
    Cache(cache_path).check_writable()  # before the store gets a run row
    store = Store(out)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    store.start_run(run_id, suite.name, suite.raw, list(argv or sys.argv), provenance(device))
    todo, skipped = [], 0
    for c in cells:
        if store.cell_status(cell_key(c)) == "done":
            skipped += 1
        else:
            todo.append(c)
    if progress is None:
        progress = sys.stderr.isatty() or bool(os.environ.get("BENCH_PROGRESS"))
    # Parallelism: across cells when there are enough of them, else inside cells (reference models).
    # Ray schedules both levels itself: every cell is a task, every reference model too.
    ray = executor == "ray"
    cell_jobs = jobs if len(todo) >= jobs or ray else 1
    env = Env(str(out), str(cache_path), root, device, run_id,
              progress=progress and cell_jobs <= 1 and not ray, inner_jobs=1 if cell_jobs > 1 else jobs,
              executor=executor, address=address)
    where = f"executor: ray{' at ' + address if address else ' (local instance)'}" if ray else f"jobs: {jobs}"
    echo(f"suite '{suite.name}': {len(cells)} cells, {skipped} already done, {len(todo)} to run "
         f"(out: {out}, {where}, device: {device})")
    if ray:
        executor = make_executor(cell_jobs, "ray", address=address, device=device)
    else:
        executor = make_executor(cell_jobs)
    # a remote worker computes; the driver records (the run directory need not be reachable there)
    fn = compute_cell if executor.records_in_driver else execute_cell
    failed = done = 0
    bar = tqdm(total=len(todo), desc=f"suite {suite.name}", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    outcome = "crashed"  # what an exception out of this loop leaves in runs.status
    try:
        for i, r in enumerate(executor.imap(fn, [(c, env) for c in todo]), 1):
            if executor.records_in_driver:
                record_result(env, r)
            bar.update(1)
            done += r["status"] == "done"
            failed += r["status"] != "done"
            line = f"[{i}/{len(todo)}] {summary_line(r)}{projected_left(time.time() - t0, i, len(todo))}"
            tqdm.write(line, file=sys.stdout) if progress else echo(line)
        outcome = "failed" if failed else "done"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        bar.close()
        try:
            store.finish_run(run_id, outcome)
        finally:
            store.close()
    echo(f"suite '{suite.name}': {done} done, {failed} failed, {skipped} skipped (already done) "
         f"in {time.time() - t0:.1f}s; results in {out / 'results.sqlite'}")
    return {"cells": len(cells), "done": done, "failed": failed, "skipped": skipped, "run_id": run_id}
