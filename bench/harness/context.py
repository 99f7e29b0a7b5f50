"""The cell context: what a method sees of the runner (``bench.api.Context``), and the cached fit of
a release. Keys: a release is keyed on its defense, resolved config, budget, task fingerprint,
seed, the code version of the defense (:mod:`bench.harness.versioning`) and the data version of
the dataset; a shared artifact on its kind, its key and the version of the code that builds it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from bench.core import registry
from bench.core.api import Context, FitRequest, Release
from bench.core.cache import Cache, digest
from bench.core.config import config_dict, make_config
from bench.harness.executors import make_executor
from bench.harness.release_io import bundle_to_release, release_to_bundle
from bench.harness.timing import StageClock
from bench.harness.versioning import callable_version, code_version, data_version
from bench.lib.tasks import Task, build_task
from bench.lib.train import accuracy, seed_everything


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
                 logs: list[str], dataset_config: dict, tasks: dict, defense: str = "", defense_config=None,
                 clock: Optional[StageClock] = None):
        self.defense = defense
        #: the cell's stage timings, shared by every context of the cell
        self.clock = clock if clock is not None else StageClock()
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
        #: cache keys of the releases this cell loaded from the cache (not built)
        self._hits: set[str] = set()

    @property
    def data_root(self) -> str:
        return self.env.data_root

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
        with self.clock.stage("defense-fit", name) as frame:
            rel, _, key = fit_release(self, cls, cfg, task or self.task, self.epsilon if epsilon is None else epsilon,
                                      self.delta, self.seed if seed is None else seed)
            frame["cached"] = key in self._hits
        return rel

    def fit_many(self, requests: list[FitRequest | dict]) -> list[Release]:
        jobs = [_fit_request(self, FitRequest.of(r)) for r in requests]
        todo = [j for j in jobs if not self.cache.contains("release", j["payload"])]
        name = f"{jobs[0]['spec']['defense']} x{len(jobs)}" if jobs else "none"
        with self.clock.stage("references", name) as frame:
            frame["cached"] = not todo
            return self._fit_many(jobs, todo)

    def _fit_many(self, jobs: list[dict], todo: list[dict]) -> list[Release]:
        # Ray: every reference model is a task (a cell blocked on them gives its CPU back to Ray);
        # not on CUDA, where Ray keeps a blocked task's GPU and nested GPU tasks could deadlock.
        ray_inner = self.env.executor == "ray" and not self.env.device.startswith("cuda")
        if todo and (self.env.inner_jobs > 1 or ray_inner) and len(todo) > 1:
            env = Env(**{**self.env.__dict__, "progress": False, "inner_jobs": 1})
            if ray_inner:
                self.log(f"fitting {len(todo)} reference releases as Ray tasks")
                ex = make_executor(1, "ray", address=self.env.address, device=self.env.device)
            else:
                self.log(f"fitting {len(todo)} reference releases with {self.env.inner_jobs} processes")
                ex = make_executor(min(self.env.inner_jobs, len(todo)))
            for _ in self.progress(ex.imap(_fit_job, [(j["spec"], env) for j in todo]), total=len(todo),
                                   desc="reference releases"):
                pass
        out = []
        for j in self.progress(jobs, desc=f"reference releases ({len(todo)} to fit)") if todo else jobs:
            spec = j["spec"]
            task = self.task.derive(spec["member_rows"], spec["tag"])
            rel, _, _ = fit_release(self, registry.get_defense(spec["defense"]), spec["config"], task,
                                    spec["epsilon"], self.delta, spec["seed"])
            out.append(rel)
        return out

    def artifact(self, kind: str, key: dict, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        payload = {"key": key, "code": callable_version(build), "data": data_version(self.task.dataset)}
        with self.clock.stage("artifact", kind) as frame:
            bundle, frame["cached"] = self.cache.get_or_build(f"artifact-{kind}", payload, build, self.log)
        return bundle


def _fit_request(ctx: CellContext, r: FitRequest) -> dict:
    """Resolve a fit_many request into a picklable spec and its release cache payload."""
    cls = registry.get_defense(r.defense)
    cfg = config_dict(make_config(cls.Config, r.config or {}, f"defenses.{r.defense}"))
    spec = {"defense": r.defense, "config": cfg, "member_rows": [int(i) for i in r.member_rows],
            "tag": str(r.tag), "epsilon": ctx.epsilon if r.epsilon is None else r.epsilon,
            "seed": ctx.seed if r.seed is None else int(r.seed),
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
            "delta": delta if private else None, "task": task.fingerprint, "seed": seed, "code": code_version(cls),
            "data": data_version(task.dataset)}


def fit_release(ctx: CellContext, cls: type, cfg: dict, task: Task, epsilon: float, delta: float,
                seed: int) -> tuple[Release, dict, str]:
    """Fit (or load from the cache) defense ``cls`` with ``cfg`` on ``task``; returns the release,
    its utility metrics (measured on val and test by the runner, never by the defense) and its key."""
    payload = release_payload(cls, cfg, task, epsilon, delta, seed)

    def build():
        seed_everything(seed)
        sub = CellContext(ctx.env, ctx.cache, task, epsilon, delta, seed, ctx._logs, ctx.dataset_config,
                          ctx._tasks, cls.name, cfg, ctx.clock)
        t0 = time.time()
        rel = cls(make_config(cls.Config, cfg, f"defenses.{cls.name}")).fit(sub)
        fit_time = time.time() - t0
        model = rel.model.to(ctx.device)
        utility = {"test_acc": accuracy(model, task.test, ctx.device),
                   "val_acc": accuracy(model, task.val, ctx.device), "fit_seconds": fit_time}
        rel.info.setdefault("fit_seconds", fit_time)
        return release_to_bundle(rel.to("cpu"), utility)

    bundle, hit = ctx.cache.get_or_build("release", payload, build, ctx.log)
    rel, utility = bundle_to_release(bundle, ctx.device)
    key = digest(payload)
    if hit:
        ctx._hits.add(key)
    return rel, utility, key


