"""CLI start-up: wall seconds of `bench --help`, `bench list`, `bench run --dry-run` and a warm
`smoke` rerun, each a fresh process (what a user waits for), and a first dry run of `mnist-eps1` (no
memo: it imports torch and every method module). Issue 18's targets: <= 1 s for the first three,
<= 2 s for the warm rerun.

Run: ``tox -e bench -- benchmarks/test_cli_startup.py`` (or ``pytest benchmarks/test_cli_startup.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = {
    "help": ["--help"],
    "list": ["list"],
    "dry-run": ["run", "--suite", "smoke", "--dry-run"],
    "warm-smoke": ["run", "--suite", "smoke", "--out", "{out}"],
}


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "BENCH_CACHE": str(base / "cache"), "OMP_NUM_THREADS": "1"}
    out = base / "smoke"
    subprocess.run([sys.executable, "-m", "bench", "run", "--suite", "smoke", "--out", str(out)], env=env,
                   check=True, capture_output=True, timeout=600)
    return out, env


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_wall_time(benchmark, warm_run, name):
    out, env = warm_run
    argv = [a.replace("{out}", str(out)) for a in COMMANDS[name]]

    def call():
        subprocess.run([sys.executable, "-m", "bench", *argv], env=env, check=True, capture_output=True, timeout=300)

    benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["target_seconds"] = 2.0 if name == "warm-smoke" else 1.0


def test_first_dry_run_wall_time(benchmark, tmp_path):
    """A dry run never writes the memo, so with an empty cache every call resolves the suite in
    full: torch and the method modules of `mnist-eps1` (every method) are imported."""
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "empty-cache"), "OMP_NUM_THREADS": "1"}

    def call():
        subprocess.run([sys.executable, "-m", "bench", "run", "--suite", "mnist-eps1", "--dry-run"], env=env,
                       check=True, capture_output=True, timeout=300)

    benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["target_seconds"] = 1.0
