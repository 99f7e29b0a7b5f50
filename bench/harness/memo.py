"""The resolved-suite memo: a warm rerun and a repeated dry run without importing torch.

Resolving a suite (validating every method's config, expanding cells) and keying its cells needs
the method classes, hence torch and every method module: seconds before anything happens. Both are
pure functions of the suite's data (after ``--set``), the source of the harness and the library,
and the source of the methods and datasets it names. So after a full resolution the harness
stores the cells and their store keys under a fingerprint of exactly those inputs
(``<BENCH_CACHE>/suites/<fingerprint>.json``, written by ``bench run``; a dry run creates nothing
and only reads it); a later invocation with the same fingerprint reads them back instead of
resolving again. The fingerprint is computed from the sources with ``ast``
and ``hashlib`` (:mod:`bench.harness.versioning`, :mod:`bench.core.catalog`): editing any file
of ``bench/``, a named method or a module it imports, or the suite, gives a new fingerprint and the
full path. A name the catalogue does not know never takes the memo.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from bench import __version__
from bench.core import registry
from bench.core.catalog import catalog
from bench.core.keys import digest
from bench.harness.versioning import file_hash, module_version

_BENCH_DIR = Path(__file__).resolve().parents[1]


def _bench_sources() -> dict[str, str]:
    return {str(p.relative_to(_BENCH_DIR)): file_hash(str(p)) for p in sorted(_BENCH_DIR.rglob("*.py"))}


def fingerprint(name: str, data: dict) -> Optional[str]:
    """The memo key of suite ``name`` with ``data`` (after overrides), or None when it names a
    method or dataset the catalogue cannot place."""
    found, _ = catalog(registry.registered)
    names = {"defenses": set(), "attacks": set(), "datasets": set()}
    try:
        for kind in ("defenses", "attacks"):
            for alias, cfg in (data.get(kind) or {}).items():
                names[kind].add((cfg or {}).get("method", alias) if isinstance(cfg, dict) else alias)
        ds = data.get("datasets") or {}
        names["datasets"] |= set(ds) if isinstance(ds, dict) else set(ds)
    except (AttributeError, TypeError):
        return None
    modules = {}
    for kind, ns in names.items():
        for n in ns:
            entry = found[kind].get(n) if isinstance(n, str) else None
            if entry is None:
                return None
            modules[f"{kind}:{n}"] = (entry.module, module_version(entry.module))
    return digest({"version": __version__, "suite": [name, data], "bench": _bench_sources(), "modules": modules})


def memo_path(fp: str) -> Path:
    from bench.lib.datasets.base import cache_root

    return cache_root() / "suites" / f"{fp}.json"


def lookup(fp: Optional[str]) -> Optional[dict]:
    """``{"name", "cells": [cell dicts], "keys": [store keys]}`` or None."""
    if fp is None:
        return None
    try:
        with open(memo_path(fp), encoding="utf-8") as f:
            memo = json.load(f)
    except (OSError, ValueError):
        return None
    return memo if isinstance(memo, dict) and len(memo.get("cells", ())) == len(memo.get("keys", ())) else None


def remember(fp: Optional[str], name: str, cells: list, keys: list[str]) -> None:
    """Store the resolution (best effort: an unwritable cache only costs the next invocation time)."""
    if fp is None:
        return
    path = memo_path(fp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".memo-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"name": name, "cells": [c.as_dict() for c in cells], "keys": keys}, f, default=str)
        os.replace(tmp, path)
    except OSError:
        pass


def rerun_if_done(memo: dict, out: Path, argv: list[str], data: dict, jobs: int, device: str, echo=print) -> bool:
    """When every cell of the memo is ``done`` in the store at ``out``: record the invocation as a
    run (status ``done``, nothing trained), print what ``bench run`` prints and return True. Any
    other state (no store, a cell not done) returns False and the full path runs."""
    import time
    import uuid

    from bench.core.store import Store, provenance

    if not Store.exists(out):
        return False
    store = Store(out, create=False)
    try:
        if any(store.cell_status(k) != "done" for k in memo["keys"]):
            return False
        name, n = memo["name"], len(memo["keys"])
        echo(f"suite '{name}': {n} cells, {n} already done, 0 to run (out: {out}, jobs: {jobs}, device: {device})")
        t0 = time.time()
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        store.start_run(run_id, name, data, argv, {**provenance(device, torch_threads=False), "resolved_from_memo": True})
        store.finish_run(run_id, "done")
    finally:
        store.close()
    echo(f"suite '{name}': 0 done, 0 failed, {n} skipped (already done) in {time.time() - t0:.1f}s; "
         f"results in {out / 'results.sqlite'}")
    return True
