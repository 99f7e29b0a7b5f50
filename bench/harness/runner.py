"""The runner: the only place that knows about caching, storage and parallelism.

suite -> cells -> (per cell) fit the defense (cached release) -> measure utility -> run every
attack (cached result) -> one transaction into the store.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import math
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from bench import __version__
from bench.core import registry
from bench.core.api import Context, Release
from bench.core.cache import Cache, digest
from bench.core.config import config_dict, make_config
from bench.core.errors import BenchError
from bench.core.store import Store, provenance
from bench.harness.executors import make_executor
from bench.harness.release_io import bundle_to_release, bundle_to_result, release_to_bundle, result_to_bundle
from bench.harness.suite import Suite
from bench.lib.datasets.base import cache_root, data_root
from bench.lib.tasks import Task, build_task
from bench.lib.train import accuracy, seed_everything

_SOURCE_HASHES: dict[str, str] = {}
_PROJECT_PACKAGES = ("bench", "attacks", "defenses", "reports")
#: harness plumbing that cannot change a number: never part of a method's code version
_PLUMBING = {"bench", "bench.core.api", "bench.core.registry", "bench.core.config", "bench.core.errors", "bench.core.cache", "bench.core.store",
             "bench.harness.runner", "bench.cli", "bench.harness.suite", "bench.harness.executors", "bench.harness.release_io", "bench.__main__"}
#: always part of every code version: how data is loaded and cut
_ALWAYS = ("bench.lib.tasks", "bench.lib.datasets.base", "bench.lib.datasets.mnist", "bench.lib.datasets.fashion_mnist",
           "bench.lib.datasets.digits", "bench.lib.datasets.cifar10")


def _file_hash(path: str) -> str:
    if path not in _SOURCE_HASHES:
        try:
            with open(path, "rb") as f:
                _SOURCE_HASHES[path] = hashlib.sha256(f.read()).hexdigest()[:16]
        except OSError:
            _SOURCE_HASHES[path] = "missing"
    return _SOURCE_HASHES[path]


def _module_file(name: str) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, AttributeError, ValueError):  # "pkg.module.Name": a name, not a module
        return None
    return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None


@functools.cache
def _project_imports(module: str) -> frozenset:
    """Project modules ``module`` imports, transitively (plumbing excluded), found with ``ast``."""
    path = _module_file(module)
    if path is None:
        return frozenset()
    tree = ast.parse(open(path).read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            if n.split(".")[0] in _PROJECT_PACKAGES and n not in _PLUMBING and _module_file(n):
                found.add(n)
    out = set(found)
    for n in found:
        if n != module:
            out |= _project_imports(n)
    return frozenset(out - {module})


def code_version(cls: type) -> dict:
    """What code a cached result depends on: the method's own source file, every project module
    it imports (shared helpers such as ``defenses/_distill.py``, ``bench/models.py``,
    ``bench/metrics.py``; harness plumbing excluded), the data modules, and the package version.
    Editing a method or one of its helpers invalidates exactly the results that used it."""
    deps = sorted(_project_imports(cls.__module__) | set(_ALWAYS))
    return {"bench": __version__, "method": _file_hash(inspect.getsourcefile(cls)),
            "deps": digest({d: _file_hash(_module_file(d) or d) for d in deps})[:16]}


def _eps_key(eps: float):
    return "inf" if math.isinf(eps) else float(eps)


@dataclass
class Env:
    """Everything a worker needs to run a cell (picklable)."""

    run_dir: str
    cache_dir: str
    data_root: str
    device: str
    run_id: str
    progress: bool = True
    threads: Optional[int] = None
    #: processes available to one cell for inner work (reference models); 1 = sequential
    inner_jobs: int = 1
    #: executor kind ("local" or "ray") and Ray address, so inner work uses the same back end
    executor: str = "local"
    address: Optional[str] = None


class CellContext(Context):
    def __init__(self, env: Env, cache: Cache, task: Task, epsilon: float, delta: float, seed: int,
                 logs: list[str], dataset_config: dict, tasks: dict, defense: str = "", defense_config=None):
        self.defense = defense
        self.defense_config = defense_config or {}
        self.env = env
        self.cache = cache
        self.task = task
        self.epsilon = epsilon
        self.delta = delta
        self.seed = seed
        self.device = torch.device(env.device)
        self.dataset_config = dataset_config
        self._logs = logs
        self._tasks = tasks
        self.keys: dict[str, str] = {}

    def log(self, message: str) -> None:
        self._logs.append(message)

    def progress(self, iterable, **kwargs):
        kwargs.setdefault("leave", False)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, disable=not self.env.progress, **kwargs)

    def task_for(self, kind: str, seed: Optional[int] = None, protocol: Optional[dict] = None) -> Task:
        """The cell dataset's task under the suite's ``protocol`` or ``inversion`` config (or, with
        ``protocol``, under that explicit protocol config instead), cut with ``seed``."""
        seed = self.seed if seed is None else seed
        cfg = protocol if protocol is not None else self.dataset_config[kind if kind == "inversion" else "protocol"]
        return get_task(self.task.dataset, cfg, seed, self.env.data_root, self._tasks)

    def fit_defense(self, name: str, config: Optional[dict] = None, *, task: Optional[Task] = None,
                    epsilon: Optional[float] = None, seed: Optional[int] = None) -> Release:
        cls = registry.get_defense(name)
        cfg = config_dict(make_config(cls.Config, config or {}, f"defenses.{name}"))
        rel, _, _ = fit_release(self, cls, cfg, task or self.task, self.epsilon if epsilon is None else epsilon,
                                self.delta, self.seed if seed is None else seed)
        return rel

    def fit_many(self, requests: list[dict]) -> list[Release]:
        jobs = [_fit_request(self, r) for r in requests]
        todo = [j for j in jobs if not self.cache.contains("release", j["payload"])]
        # Ray: every reference model is a task (a cell blocked on them gives its CPU back to Ray);
        # not on CUDA, where Ray keeps a blocked task's GPU and nested GPU tasks could deadlock.
        ray_inner = self.env.executor == "ray" and not self.env.device.startswith("cuda")
        if todo and (self.env.inner_jobs > 1 or ray_inner) and len(todo) > 1:
            from bench.harness.executors import make_executor

            env = Env(**{**self.env.__dict__, "progress": False, "inner_jobs": 1})
            if ray_inner:
                self.log(f"fitting {len(todo)} reference releases as Ray tasks")
                ex = make_executor(1, "ray", address=self.env.address, device=self.env.device)
            else:
                self.log(f"fitting {len(todo)} reference releases with {self.env.inner_jobs} processes")
                ex = make_executor(min(self.env.inner_jobs, len(todo)))
            for _ in ex.imap(_fit_job, [(j["spec"], env) for j in todo]):
                pass
        out = []
        for j in jobs:
            spec = j["spec"]
            task = self.task.derive(spec["member_rows"], spec["tag"])
            rel, _, _ = fit_release(self, registry.get_defense(spec["defense"]), spec["config"], task,
                                    spec["epsilon"], self.delta, spec["seed"])
            out.append(rel)
        return out

    def artifact(self, kind: str, key: dict, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        bundle, _ = self.cache.get_or_build(f"artifact-{kind}", {"key": key, "bench": __version__}, build, self.log)
        return bundle


def _fit_request(ctx: CellContext, r: dict) -> dict:
    """Resolve a fit_many request into a picklable spec and its release cache payload."""
    cls = registry.get_defense(r["defense"])
    cfg = config_dict(make_config(cls.Config, r.get("config") or {}, f"defenses.{r['defense']}"))
    spec = {"defense": r["defense"], "config": cfg, "member_rows": [int(i) for i in r["member_rows"]],
            "tag": str(r["tag"]), "epsilon": ctx.epsilon if r.get("epsilon") is None else r["epsilon"],
            "seed": ctx.seed if r.get("seed") is None else int(r["seed"]),
            "base": {"dataset": ctx.task.dataset, "protocol": ctx.task.info["protocol"], "seed": ctx.task.seed},
            "delta": ctx.delta, "dataset_config": ctx.dataset_config}
    task = ctx.task.derive(spec["member_rows"], spec["tag"])
    return {"spec": spec, "payload": release_payload(cls, cfg, task, spec["epsilon"], ctx.delta, spec["seed"])}


def _fit_job(job: tuple[dict, Env]) -> str:
    spec, env = job
    tasks: dict = {}
    base = get_task(spec["base"]["dataset"], spec["base"]["protocol"], spec["base"]["seed"], env.data_root, tasks)
    task = base.derive(spec["member_rows"], spec["tag"])
    ctx = CellContext(env, Cache(env.cache_dir), task, spec["epsilon"], spec["delta"], spec["seed"], [],
                      spec["dataset_config"], tasks)
    _, _, key = fit_release(ctx, registry.get_defense(spec["defense"]), spec["config"], task, spec["epsilon"],
                            spec["delta"], spec["seed"])
    return key


def get_task(dataset: str, protocol: dict, seed: int, root: str, memo: dict) -> Task:
    k = digest({"d": dataset, "p": protocol, "s": seed, "r": root})
    if k not in memo:
        memo[k] = build_task(dataset, protocol, seed, root)
    return memo[k]


def release_payload(cls: type, cfg: dict, task: Task, epsilon: float, delta: float, seed: int) -> dict:
    private = cls.privacy_unit != "none"
    return {"kind": "release", "defense": cls.name, "config": cfg, "epsilon": _eps_key(epsilon) if private else "inf",
            "delta": delta if private else None, "task": task.fingerprint, "seed": seed, "code": code_version(cls)}


def fit_release(ctx: CellContext, cls: type, cfg: dict, task: Task, epsilon: float, delta: float,
                seed: int) -> tuple[Release, dict, str]:
    """Fit (or load from the cache) defense ``cls`` with ``cfg`` on ``task``; returns the release,
    its utility metrics (measured on val and test by the runner, never by the defense) and its key."""
    payload = release_payload(cls, cfg, task, epsilon, delta, seed)

    def build():
        seed_everything(seed)
        sub = CellContext(ctx.env, ctx.cache, task, epsilon, delta, seed, ctx._logs, ctx.dataset_config,
                          ctx._tasks, cls.name, cfg)
        t0 = time.time()
        rel = cls(make_config(cls.Config, cfg, f"defenses.{cls.name}")).fit(sub)
        fit_time = time.time() - t0
        model = rel.model.to(ctx.device)
        utility = {"test_acc": accuracy(model, task.test, ctx.device),
                   "val_acc": accuracy(model, task.val, ctx.device), "fit_seconds": fit_time}
        rel.info.setdefault("fit_seconds", fit_time)
        return release_to_bundle(rel.to("cpu"), utility)

    bundle, _ = ctx.cache.get_or_build("release", payload, build, ctx.log)
    rel, utility = bundle_to_release(bundle, ctx.device)
    return rel, utility, digest(payload)


def cell_key(cell: dict) -> str:
    d = registry.get_defense(cell["defense"])
    attacks = {a: code_version(registry.get_attack(c.get("method", a))) for a, c in cell["attacks"].items()}
    return digest({"cell": cell, "code": code_version(d), "attack_code": attacks})[:24]


def _fmt_eps(eps: Optional[float]) -> str:
    return "inf" if eps is None or math.isinf(eps) else f"{eps:.3g}"


def execute_cell(job: tuple[dict, Env]) -> dict:
    """Run one cell and record it in the store; never raises (failures are recorded)."""
    r = compute_cell(job)
    record_result(job[1], r)
    return r


def record_result(env: Env, r: dict) -> None:
    """Write a :func:`compute_cell` result into the run's store (one transaction)."""
    store = Store(env.run_dir)
    try:
        store.record_cell(**r["record"])
    finally:
        store.close()


def compute_cell(job: tuple[dict, Env]) -> dict:
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
    try:
        cache = Cache(env.cache_dir)
        tasks: dict = {}
        dcfg = {"protocol": cell["protocol"], "inversion": cell["inversion"]}
        task = get_task(cell["dataset"], cell["protocol"], cell["seed"], env.data_root, tasks)
        ctx = CellContext(env, cache, task, cell["epsilon"], cell["delta"], cell["seed"], logs, dcfg, tasks,
                          cell["defense"], cell["defense_config"])
        dcls = registry.get_defense(cell["defense"])
        rel, utility, rkey = fit_release(ctx, dcls, cell["defense_config"], task, cell["epsilon"], cell["delta"],
                                         cell["seed"])
        split = task.info
        privacy = rel.privacy.to_dict()
        info = {"release": rel.info, "logs": logs}
        artifacts.append(("release", "release", rkey, str(cache.path("release", rkey))))
        metrics += [("utility", k, v) for k, v in utility.items()]
        if not math.isinf(rel.privacy.epsilon):
            metrics.append(("privacy", "epsilon_spent", rel.privacy.epsilon))
        inv_rel = None
        for aname, acfg in cell["attacks"].items():
            acfg = dict(acfg)
            acls = registry.get_attack(acfg.pop("method", aname))
            target, tkey, atask = rel, rkey, task
            if acls.protocol() == "inversion":
                if inv_rel is None:
                    itask = ctx.task_for("inversion")
                    inv_rel, inv_util, ikey = fit_release(ctx, dcls, cell["defense_config"], itask, cell["epsilon"],
                                                          cell["delta"], cell["seed"])
                    metrics += [("inversion-target", k, v) for k, v in inv_util.items()]
                    artifacts.append(("inversion-release", "release", ikey, str(cache.path("release", ikey))))
                target, tkey, atask = inv_rel, ikey, itask
            actx = CellContext(env, cache, atask, cell["epsilon"], cell["delta"], cell["seed"], logs, dcfg, tasks,
                               cell["defense"], cell["defense_config"])
            payload = {"kind": "attack", "attack": aname, "config": acfg, "release": tkey, "task": atask.fingerprint,
                       "seed": cell["seed"], "code": code_version(acls)}

            def build(acls=acls, acfg=acfg, actx=actx, target=target, aname=aname):
                seed_everything(cell["seed"] + 1)
                res = acls(make_config(acls.Config, acfg, f"attacks.{aname}")).run(actx, target)
                return result_to_bundle(res)

            bundle, _ = cache.get_or_build("attack", payload, build, logs.append)
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
    record = dict(cell_key=key, run_id=env.run_id, cell=cell, status=status, split=split, privacy=privacy,
                  info=info, error=error, wall_time=wall,
                  device=env.device, prov=prov, metrics=metrics, artifacts=artifacts, attacks=attacks,
                  started=started)
    return {"cell": cell, "key": key, "status": status, "error": error, "metrics": metrics, "privacy": privacy,
            "wall": wall, "hits": cache.hits if cache else 0, "misses": cache.misses if cache else 0, "record": record}


def summary_line(r: dict) -> str:
    c = r["cell"]
    head = f"{c['dataset']} eps={_fmt_eps(c['epsilon'])} {c.get('variant') or c['defense']} seed={c['seed']}"
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
            tqdm.write(f"[{i}/{len(todo)}] {summary_line(r)}", file=sys.stdout) if progress else echo(
                f"[{i}/{len(todo)}] {summary_line(r)}")
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
