"""The resolved-suite memo (bench/harness/memo.py): a repeated dry run and a warm rerun take it
without importing torch, print what the full path prints, and any change of the suite or of a
source it depends on falls back to the full path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import store_rows, write_suite

from bench.harness import memo
from bench.harness import versioning as V

NONE = {"arch": "mlp", "epochs": 2, "batch_size": 64, "lr": 0.003}
PROBE = ("import sys; from bench.cli import main; code = main(sys.argv[1:]); "
         "print('TORCH', 'torch' in sys.modules); sys.exit(code)")


def _bench(env, *argv):
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    base = tmp_path_factory.mktemp("memo")
    env = {**os.environ, "BENCH_CACHE": str(base / "cache"), "OMP_NUM_THREADS": "1"}
    suite = write_suite(base / "s.yaml", seeds=[0, 1], defenses={"none": NONE}, attacks={"loss-threshold": {"n_boot": 20}})
    cold = _bench(env, "run", "--suite", suite, "--out", base / "out")
    assert cold.returncode == 0, cold.stderr[-2000:]
    return base, env, suite, cold


def test_a_warm_rerun_takes_the_memo_without_torch(warm):
    base, env, suite, cold = warm
    assert "TORCH True" in cold.stdout
    r = _bench(env, "run", "--suite", suite, "--out", base / "out")
    assert r.returncode == 0 and "TORCH False" in r.stdout, r.stdout + r.stderr
    assert "2 cells, 2 already done, 0 to run" in r.stdout and "2 skipped (already done)" in r.stdout
    runs = store_rows(base / "out", "SELECT status, provenance FROM runs ORDER BY started")
    assert [x["status"] for x in runs] == ["done", "done"] and '"resolved_from_memo": true' in runs[-1]["provenance"]


def test_a_repeated_dry_run_prints_the_same_cells_without_torch(warm):
    base, env, suite, _ = warm
    full = _bench({**env, "BENCH_CACHE": str(base / "other-cache")}, "run", "--suite", suite, "--dry-run")
    fast = _bench(env, "run", "--suite", suite, "--dry-run")
    assert "TORCH True" in full.stdout and "TORCH False" in fast.stdout
    strip = lambda s: [ln for ln in s.splitlines() if not ln.startswith("TORCH")]  # noqa: E731
    assert strip(full.stdout) == strip(fast.stdout) and "2 cells (dry run" in fast.stdout


def test_the_memo_keys_are_the_runners(warm, monkeypatch):
    from bench.harness.runner import cell_key
    from bench.harness.suite import load_suite, load_suite_file

    base, env, suite, _ = warm
    monkeypatch.setenv("BENCH_CACHE", env["BENCH_CACHE"])
    name, data = load_suite_file(str(suite))
    hit = memo.lookup(memo.fingerprint(name, data))
    assert hit is not None
    assert hit["keys"] == [cell_key(c) for c in load_suite(str(suite)).cells()]


def test_a_changed_suite_or_source_is_a_new_fingerprint(warm, monkeypatch):
    from bench.harness.suite import apply_overrides, load_suite_file

    base, env, suite, _ = warm
    name, data = load_suite_file(str(suite))
    fp = memo.fingerprint(name, data)
    assert memo.fingerprint(name, apply_overrides(data, ["defenses.none.epochs=3"])) != fp
    none_file = V.module_file("defenses.none")
    monkeypatch.setitem(V._FILE_HASHES, none_file, "edited")
    V._direct_imports.cache_clear()
    V.project_imports.cache_clear()
    assert memo.fingerprint(name, data) != fp
    monkeypatch.undo()
    tasks_file = V.module_file("bench.lib.tasks")
    monkeypatch.setitem(V._FILE_HASHES, tasks_file, "edited")
    assert memo.fingerprint(name, data) != fp
    assert memo.fingerprint(name, apply_overrides(data, ["defenses={no-such-defense: {}}"])) is None


def test_a_cell_not_done_takes_the_full_path(warm, tmp_path):
    import shutil
    import sqlite3

    base, env, suite, _ = warm
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    con = sqlite3.connect(out / "results.sqlite")
    con.execute("UPDATE cells SET status='failed' WHERE rowid = (SELECT MIN(rowid) FROM cells)")
    con.commit()
    con.close()
    r = _bench(env, "run", "--suite", suite, "--out", out)
    assert r.returncode == 0 and "TORCH True" in r.stdout and "1 already done, 1 to run" in r.stdout, r.stdout
