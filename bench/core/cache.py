"""Content-addressed artifact cache.

Every trained model, attack result and shared artifact (teacher, GAN prior, evaluator,
reference model) is stored under ``<root>/<kind>/<key[:2]>/<key>/`` where ``key`` is the
SHA-256 of the canonical JSON of what determines it: resolved config, data-split fingerprint,
seed, privacy target and code version. Writes are atomic (a temporary directory renamed into
place), concurrent builders of one key are serialised with a file lock (so a shared artifact is
built once even under ``--jobs N``), and every file's SHA-256 is recorded and verified on load:
a corrupt entry is reported, deleted and rebuilt. Tensors are stored with safetensors, arrays
as ``.npz`` (``allow_pickle=False``), everything else as JSON: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bench.core.errors import BenchError
from bench.core.keys import canonical, digest  # noqa: F401 - re-exported: the cache's key function
from bench.core.locks import file_lock


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CorruptEntry(Exception):
    pass


def write_bundle(path: Path, bundle: dict[str, Any]) -> None:
    """Write a dict of tensors / arrays / JSON values into directory ``path`` (must not exist)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in bundle.items() if isinstance(v, torch.Tensor)}
    arrays = {k: v for k, v in bundle.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in bundle.items() if k not in tensors and k not in arrays}
    path.mkdir(parents=True)
    if tensors:
        save_file(tensors, str(path / "tensors.safetensors"))
    if arrays:
        np.savez(path / "arrays.npz", **arrays)
    with open(path / "values.json", "w") as f:
        json.dump(canonical(rest), f)


def read_bundle(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (path / "tensors.safetensors").exists():
        out.update(load_file(str(path / "tensors.safetensors")))
    if (path / "arrays.npz").exists():
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            out.update({k: z[k] for k in z.files})
    with open(path / "values.json") as f:
        out.update(json.load(f))
    return out


def load_entry(path: str | Path) -> dict[str, Any]:
    """Read one cache entry directory after checking every file against its manifest's SHA-256;
    raises ``CorruptEntry`` (a missing, unreadable or mismatching file). Everything that reads a
    cached artifact (the cache itself, reports) goes through here."""
    path = Path(path)
    manifest = path / "manifest.json"
    if not manifest.exists():
        raise CorruptEntry("manifest missing")
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
        items = list(files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptEntry(f"unreadable manifest ({type(e).__name__})") from e
    for name, sha in items:
        p = path / name
        if not p.exists() or _sha(p) != sha:
            raise CorruptEntry(f"{name} does not match its recorded SHA-256")
    try:
        return read_bundle(path)
    except Exception as e:  # truncated or garbled file that still matched (cannot happen) or bad json
        raise CorruptEntry(f"{type(e).__name__}: {e}") from e


def load_arrays(path: str | Path) -> dict[str, np.ndarray] | None:
    """The numpy arrays of the verified cache entry at ``path`` (keys as stored, e.g.
    ``array.scores``), or None when there is no such entry; raises ``CorruptEntry``."""
    path = Path(path)
    if not path.exists():
        return None
    return {k: v for k, v in load_entry(path).items() if isinstance(v, np.ndarray)}


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BenchError(f"cannot create the artifact cache {self.root}: {e.strerror or e} "
                             "(set --cache-dir or BENCH_CACHE)") from None
        self.hits = 0
        self.misses = 0

    def check_writable(self) -> None:
        """One clear line now instead of a failure in every cell later (a read-only mount)."""
        try:
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise BenchError(f"the artifact cache {self.root} is not writable: {e.strerror or e} "
                             "(set --cache-dir or BENCH_CACHE)") from None

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def _lock(self, kind: str, key: str):
        return file_lock(self.root / ".locks" / f"{kind}-{key}.lock")

    def _load(self, path: Path) -> dict[str, Any]:
        return load_entry(path)

    def contains(self, kind: str, payload: dict) -> bool:
        return (self.path(kind, digest(payload)) / "manifest.json").exists()

    def get_or_build(self, kind: str, payload: dict, build: Callable[[], dict[str, Any]],
                     log: Callable[[str], None] = lambda m: None) -> tuple[dict[str, Any], bool]:
        """Return ``(bundle, hit)``; ``build()`` runs at most once per key across processes."""
        key = digest(payload)
        path = self.path(kind, key)
        with self._lock(kind, key):
            if path.exists():
                try:
                    bundle = self._load(path)
                    self.hits += 1
                    log(f"cache hit: {kind} {key[:12]}")
                    return bundle, True
                except CorruptEntry as e:
                    warnings.warn(f"corrupt cache entry {path} ({e}); recomputing", stacklevel=2)
                    log(f"WARNING corrupt cache entry {kind} {key[:12]} ({e}); recomputing")
                    shutil.rmtree(path, ignore_errors=True)
            self.misses += 1
            log(f"cache miss: {kind} {key[:12]} (building)")
            bundle = build()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{key[:12]}-"))
            try:
                staged = tmp / "entry"
                write_bundle(staged, bundle)
                files = {p.name: _sha(p) for p in staged.iterdir()}
                with open(staged / "manifest.json", "w") as f:
                    json.dump({"files": files, "payload": canonical(payload), "kind": kind}, f, indent=1)
                for p in staged.iterdir():  # make the data durable before it becomes visible
                    with open(p, "rb") as fh:
                        os.fsync(fh.fileno())
                os.replace(staged, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return read_bundle(path), False
