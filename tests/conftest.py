"""Shared fixtures of the spine tests.

Every test runs with its own ``BENCH_CACHE`` / ``BENCH_DATA`` under ``tmp_path`` and with
``tmp_path`` as working directory, so nothing is written to the repository or the home cache.
Training uses sklearn's embedded ``digits`` (no download) with tiny protocols and few epochs.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

#: a 4-cell suite (none + dpsgd at eps=1, 2 seeds) that runs in a few seconds on one CPU thread
TINY_SUITE = {
    "name": "tiny",
    "description": "spine test suite",
    "datasets": {"digits": {"protocol": {"members": 300, "val": 100, "nonmembers": 300}}},
    "epsilons": [1.0],
    "delta": 1.0e-5,
    "seeds": [0, 1],
    "defenses": {
        "none": {"arch": "mlp", "epochs": 10, "batch_size": 32, "lr": 0.003},
        # RDP: its noise calibration is much cheaper than the default PRV's
        "dpsgd": {"arch": "mlp", "epochs": 2, "batch_size": 64, "lr": 1.0, "max_grad_norm": 1.0, "accountant": "rdp"},
    },
    "attacks": {"loss-threshold": {"n_eval": 200}},
}


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Same thread count in-process as in the CLI subprocesses (OMP_NUM_THREADS=1), so results
    computed here and there are bitwise comparable."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Private cache and (empty) data root per test; cwd = tmp_path (``runs/`` lands there)."""
    cache = tmp_path / "bench-cache"
    data = tmp_path / "bench-data"
    data.mkdir()
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    monkeypatch.setenv("BENCH_DATA", str(data))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("BENCH_PROGRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    return {"cache": cache, "data": data}


def write_suite(path: Path, base: dict | None = None, **changes) -> Path:
    """Write a suite YAML: ``base`` (default the tiny suite) with top-level keys replaced."""
    data = {**(base or TINY_SUITE), **changes}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def suite_file(tmp_path):
    """Factory: ``suite_file(name="x", seeds=[0])`` -> path of a suite YAML in tmp_path."""
    counter = {"n": 0}

    def make(base: dict | None = None, **changes) -> Path:
        counter["n"] += 1
        return write_suite(tmp_path / "suites" / f"suite{counter['n']}.yaml", base, **changes)

    return make


@pytest.fixture
def cli(capsys):
    """Run ``bench.cli.main`` in-process: returns (exit_code, stdout, stderr).

    An exception escaping ``main`` (what a user would see as a traceback) is returned as exit code
    ``"EXCEPTION"`` with the traceback in stderr, so the assertion message shows it."""
    from bench.cli import main

    def run(*argv):
        capsys.readouterr()
        env = dict(os.environ)
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors
            code = e.code
        except BaseException:  # noqa: B036 - reported to the test, not swallowed
            code = "EXCEPTION"
            out, err = capsys.readouterr()
            return code, out, err + traceback.format_exc()
        finally:
            os.environ.clear()  # main() sets BENCH_DATA from --data-root
            os.environ.update(env)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k", ro: bool = False):
    """A small tmpfs at ``path`` (skips the test where mounting is not allowed): a real full disk
    or read-only file system for fault tests."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def bench_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("BENCH_PROGRESS", None)
    env.update(extra or {})
    return env


def bench_cmd(*argv) -> list[str]:
    return [sys.executable, "-m", "bench", *[str(a) for a in argv]]


@pytest.fixture
def run_bench(tmp_path):
    """Run ``python -m bench ARGV`` as a subprocess (cwd tmp_path); returns CompletedProcess."""

    def run(*argv, env: dict | None = None, timeout: float = 300):
        return subprocess.run(bench_cmd(*argv), cwd=tmp_path, env=bench_env(env), capture_output=True,
                              text=True, timeout=timeout)

    return run


def assert_user_error(code, out: str, err: str, *needles: str) -> str:
    """Exit 2, exactly one stderr line ``bench: error: ...`` containing ``needles``, no traceback."""
    assert code == 2, f"exit code {code!r}\nstdout: {out}\nstderr: {err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("bench: error: "), lines[0]
    assert "Traceback" not in err + out
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def store_rows(run_dir: Path, sql: str, params: tuple = ()) -> list[dict]:
    con = sqlite3.connect(Path(run_dir) / "results.sqlite", timeout=60)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, params).fetchall()]
    finally:
        con.close()


def metric_table(run_dir: Path) -> dict:
    """{(dataset, defense, epsilon, seed, source, metric): value} of the finished cells, without
    wall-clock metrics."""
    rows = store_rows(run_dir, "SELECT c.dataset, c.defense, c.epsilon, c.seed, m.source, m.name, m.value "
                               "FROM metrics m JOIN cells c USING (cell_key) WHERE c.status='done'")
    return {(r["dataset"], r["defense"], r["epsilon"], r["seed"], r["source"], r["name"]): r["value"]
            for r in rows if not r["name"].endswith("_seconds")}


def cache_entries(cache_dir: Path) -> dict[str, int]:
    """{entry dir: manifest mtime_ns} of every complete cache entry."""
    return {str(p.parent): p.stat().st_mtime_ns for p in Path(cache_dir).rglob("manifest.json")}


def online(hosts=(("ossci-datasets.s3.amazonaws.com", 443), ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
                  ("yann.lecun.com", 80))) -> bool:
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            continue
    return False


def write_fake_mnist(root: Path, folder: str = "mnist", sub: str = "MNIST", n_train: int = 400, n_test: int = 100,
                     seed: int = 0) -> Path:
    """A tiny dataset in torchvision's MNIST raw layout (IDX files, plain and .gz) under
    ``root/folder/sub/raw``; labels cycle through 0..9 so every class is present."""
    raw = Path(root) / folder / sub / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[np.arange(n), labels, :] = 255  # class-dependent stripe: learnable
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x00000803, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x00000801, n) + labels.tobytes()}
        for name, blob in files.items():
            (raw / name).write_bytes(blob)
            with gzip.open(raw / f"{name}.gz", "wb") as f:
                f.write(blob)
    return raw


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """The tiny suite run once, uninterrupted, in-process: {"out", "cache", "suite", "result"}.

    Read-only for tests: copy ``out`` before changing it."""
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    base = tmp_path_factory.mktemp("finished")
    suite_path = write_suite(base / "tiny.yaml")
    out, cache = base / "out", base / "cache"
    res = run_suite(load_suite(str(suite_path)), out, cache_dir=cache, data_dir=base / "data",
                    echo=lambda m: None, progress=False)
    assert res["failed"] == 0 and res["done"] == 4, res
    return {"out": out, "cache": cache, "suite": suite_path, "result": res}


@pytest.fixture
def copy_run(tmp_path, finished_run):
    """A private copy of the finished run directory."""
    dst = tmp_path / "run-copy"
    shutil.copytree(finished_run["out"], dst)
    return dst
