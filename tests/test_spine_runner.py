"""The runner end to end: failures, resuming, the kill test, concurrent runs on one store, and
reproducibility. Runs use the tiny digits suite of conftest (4 cells, seconds)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    TINY_SUITE,
    bench_cmd,
    bench_env,
    cache_entries,
    metric_table,
    store_rows,
    write_suite,
)

from bench.core.api import Attack, Defense
from bench.core.registry import register_attack, register_defense


@register_defense("spine-test-raises")
class _Raises(Defense):
    """Test fixture: always fails."""

    privacy_unit = "none"

    def fit(self, ctx):
        raise RuntimeError("boom from the spine test defense")


@register_defense("spine-test-flaky")
class _Flaky(Defense):
    """Test fixture: fails while SPINE_FLAKY_FAIL=1, else defers to `none`."""

    privacy_unit = "none"

    def fit(self, ctx):
        if os.environ.get("SPINE_FLAKY_FAIL") == "1":
            raise RuntimeError("flaky failure")
        return ctx.fit_defense("none", {"arch": "mlp", "epochs": 1})


@register_attack("spine-test-attack-raises")
class _AttackRaises(Attack):
    """Test fixture: an attack that fails."""

    def run(self, ctx, release):
        raise ValueError("attack exploded")


NONE_FAST = {"arch": "mlp", "epochs": 2, "batch_size": 64, "lr": 0.003}


def _all_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def test_failing_cell_is_recorded_with_traceback_others_finish_exit_1(cli, suite_file, tmp_path):
    suite = suite_file(seeds=[0], defenses={"spine-test-raises": {}, "none": NONE_FAST})
    out = tmp_path / "out"
    code, o, e = cli("run", "--suite", suite, "--out", out, "--cache-dir", tmp_path / "c")
    assert code == 1, o + e
    assert "FAILED (RuntimeError: boom from the spine test defense)" in o
    assert "1 done, 1 failed" in o
    cells = {c["defense"]: c for c in store_rows(out, "SELECT * FROM cells")}
    bad, good = cells["spine-test-raises"], cells["none"]
    assert bad["status"] == "failed"
    assert bad["error"].startswith("Traceback (most recent call last)")
    assert "test_spine_runner.py" in bad["error"] and "RuntimeError: boom from the spine test defense" in bad["error"]
    assert bad["finished"] is not None and bad["wall_time"] >= 0
    assert good["status"] == "done" and good["error"] is None
    names = {r["name"] for r in store_rows(out, "SELECT name FROM metrics WHERE cell_key=?", (good["cell_key"],))}
    assert {"test_acc", "val_acc", "auc"} <= names
    assert not store_rows(out, "SELECT * FROM metrics WHERE cell_key=?", (bad["cell_key"],))
    assert [r["status"] for r in store_rows(out, "SELECT status FROM runs")] == ["failed"]


def test_failing_attack_fails_its_cell_only(suite_file, tmp_path):
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    suite = load_suite(str(suite_file(seeds=[0, 1], defenses={"none": NONE_FAST},
                                      attacks={"spine-test-attack-raises": {}})))
    res = run_suite(suite, tmp_path / "out", cache_dir=tmp_path / "c", echo=lambda m: None, progress=False)
    assert res["failed"] == 2 and res["done"] == 0
    for c in store_rows(tmp_path / "out", "SELECT * FROM cells"):
        assert "ValueError: attack exploded" in c["error"]
    # the release was cached before the attack failed: a rerun would not retrain it
    assert len([p for p in cache_entries(tmp_path / "c") if "/release/" in p]) == 2


def test_failed_cell_is_retried_and_done_cells_are_skipped(cli, suite_file, tmp_path, monkeypatch):
    suite = suite_file(seeds=[0], defenses={"none": NONE_FAST, "spine-test-flaky": {}}, attacks={})
    argv = ("run", "--suite", suite, "--out", tmp_path / "out", "--cache-dir", tmp_path / "c")
    monkeypatch.setenv("SPINE_FLAKY_FAIL", "1")
    code, o, e = cli(*argv)
    assert code == 1 and "1 done, 1 failed, 0 skipped" in o, o + e
    monkeypatch.delenv("SPINE_FLAKY_FAIL")
    code, o, e = cli(*argv)
    assert code == 0, o + e
    assert "2 cells, 1 already done, 1 to run" in o and "1 done, 0 failed, 1 skipped" in o
    assert {c["status"] for c in store_rows(tmp_path / "out", "SELECT status FROM cells")} == {"done"}


def test_rerunning_a_finished_suite_trains_nothing(cli, finished_run, copy_run):
    cache = finished_run["cache"]
    before_cache = _all_files(cache)
    before_cells = {c["cell_key"]: c["finished"] for c in store_rows(copy_run, "SELECT * FROM cells")}
    code, o, e = cli("run", "--suite", finished_run["suite"], "--out", copy_run, "--cache-dir", cache)
    assert code == 0, o + e
    assert "4 cells, 4 already done, 0 to run" in o
    assert "0 done, 0 failed, 4 skipped (already done)" in o
    assert _all_files(cache) == before_cache, "the cache changed: something was rebuilt or rewritten"
    assert {c["cell_key"]: c["finished"] for c in store_rows(copy_run, "SELECT * FROM cells")} == before_cells
    assert len(store_rows(copy_run, "SELECT * FROM runs")) == 2


def test_same_suite_in_fresh_cache_dirs_gives_identical_metrics(finished_run, tmp_path):
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    # seed 0 only (2 of the 4 cells) to save time; the kill test compares all 4 cells
    res = run_suite(load_suite(str(finished_run["suite"]), ["seeds=[0]"]), tmp_path / "out",
                    cache_dir=tmp_path / "cache", echo=lambda m: None, progress=False)
    assert res["done"] == 2
    a = {k: v for k, v in metric_table(finished_run["out"]).items() if k[3] == 0}
    b = metric_table(tmp_path / "out")
    assert len(a) > 10 and {k[1] for k in a} == {"none", "dpsgd"}
    assert a == b  # bitwise: same seeds, same splits, same noise
    # and the very same content-addressed keys
    rel = {str(Path(p).relative_to(tmp_path / "cache")) for p in cache_entries(tmp_path / "cache")}
    assert len(rel) == 4
    assert rel <= {str(Path(p).relative_to(finished_run["cache"])) for p in cache_entries(finished_run["cache"])}
    keys = {c["cell_key"] for c in store_rows(tmp_path / "out", "SELECT cell_key FROM cells")}
    assert keys <= {c["cell_key"] for c in store_rows(finished_run["out"], "SELECT cell_key FROM cells")}


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, every: float = 0.05):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(every)
    return False


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def background_runs(tmp_path_factory):
    """Two `bench run` subprocesses started together (each pays the torch import, so they overlap):

    * ``kill``: the tiny suite into a fresh directory and cache, SIGKILLed by a watcher thread as
      soon as the store shows one finished cell;
    * ``shared``: suite ``a`` (seeds 1, 0) into a shared run directory and cache, while this process
      runs suite ``b`` (seeds 1, 2) into the same directory and cache once ``a`` has registered.
    """
    import threading

    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    base = tmp_path_factory.mktemp("background")
    kill = {"suite": write_suite(base / "tiny.yaml"), "out": base / "kill-out", "cache": base / "kill-cache"}
    kill["argv"] = ["run", "--suite", kill["suite"], "--out", kill["out"], "--cache-dir", kill["cache"]]
    slow_none = {**TINY_SUITE, "defenses": {"none": {"arch": "mlp", "epochs": 40, "batch_size": 32, "lr": 0.003}}}
    shared = {"a": write_suite(base / "a.yaml", slow_none, name="a", seeds=[1, 0]),
              "b": write_suite(base / "b.yaml", slow_none, name="b", seeds=[1, 2]),
              "out": base / "shared", "cache": base / "shared-cache"}

    def start(argv):
        return subprocess.Popen(bench_cmd(*argv), cwd=base, env=bench_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    p_kill = start(kill["argv"])
    p_a = start(["run", "--suite", shared["a"], "--out", shared["out"], "--cache-dir", shared["cache"]])
    kill_db = kill["out"] / "results.sqlite"

    def watcher():
        kill["saw_done"] = _wait_for(lambda: _count(kill_db, "SELECT count(*) FROM cells WHERE status='done'") >= 1,
                                     600, p_kill, every=0.02)
        kill["alive"] = p_kill.poll() is None
        if kill["alive"]:
            p_kill.send_signal(signal.SIGKILL)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    try:
        shared_db = shared["out"] / "results.sqlite"
        shared["a_started"] = _wait_for(lambda: _count(shared_db, "SELECT count(*) FROM runs") >= 1, 600, p_a)
        lines: list[str] = []
        if shared["a_started"]:
            shared["b_result"] = run_suite(load_suite(str(shared["b"])), shared["out"], cache_dir=shared["cache"],
                                           echo=lines.append, progress=False)
        shared["b_log"] = "\n".join(lines)
    finally:
        thread.join(timeout=600)
        if p_kill.poll() is None and "alive" not in kill:  # the watcher gave up
            p_kill.kill()
        kill["log"], kill["rc"] = p_kill.communicate(timeout=600)[0], p_kill.returncode
        shared["a_log"], shared["a_rc"] = p_a.communicate(timeout=600)[0], p_a.returncode
    return {"kill": kill, "shared": shared}


def test_kill_and_resume(cli, finished_run, background_runs):
    """SIGKILL a run after its first finished cell; rerunning the same command recomputes no
    finished cell, reuses every cache entry, and ends with the results of an uninterrupted run
    (`finished_run`: the same suite and seeds, another directory and cache)."""
    k = background_runs["kill"]
    assert k["saw_done"], f"no cell finished:\n{k['log']}"
    assert k["alive"], f"the run finished before it could be killed; make its cells slower:\n{k['log']}"
    assert k["rc"] == -signal.SIGKILL
    out, cache, db = k["out"], k["cache"], k["out"] / "results.sqlite"

    done = {c["cell_key"]: c["finished"] for c in store_rows(out, "SELECT * FROM cells WHERE status='done'")}
    assert 1 <= len(done) < 4, len(done)
    assert _integrity(db) == "ok"
    paths = [a["path"] for a in store_rows(out, "SELECT path FROM artifacts")]
    assert paths and all(Path(p).is_dir() for p in paths)
    entries = cache_entries(cache)  # every complete entry at kill time, finished cells' and others'
    assert set(paths) <= set(entries)
    runs = store_rows(out, "SELECT * FROM runs")
    assert len(runs) == 1 and runs[0]["status"] == "running" and runs[0]["finished"] is None

    code, o, e = cli(*k["argv"])  # the same command again
    assert code == 0, o + e
    assert f"4 cells, {len(done)} already done, {4 - len(done)} to run" in o
    cells = store_rows(out, "SELECT * FROM cells")
    assert len(cells) == 4 and {c["status"] for c in cells} == {"done"}
    for c in cells:  # (a) finished cells untouched
        if c["cell_key"] in done:
            assert c["finished"] == done[c["cell_key"]], "a finished cell was recomputed"
    after = cache_entries(cache)
    for p, mtime in entries.items():
        assert after.get(p) == mtime, f"cache entry {p} was rewritten"
    assert _integrity(db) == "ok"
    # (b) the same results as an uninterrupted run with the same seeds
    assert metric_table(out) == metric_table(finished_run["out"])


def test_two_concurrent_runs_share_one_store(background_runs):
    """A `bench run` subprocess and an in-process run write one store at the same time, sharing
    one cache; both finish, the database is intact, and the shared cell was built once."""
    s = background_runs["shared"]
    print(f"--- a (subprocess)\n{s.get('a_log')}\n--- b (in-process)\n{s.get('b_log')}")  # shown on failure
    assert s["a_started"], s.get("a_log")
    assert s["a_rc"] == 0, s["a_log"]
    assert s["b_result"]["failed"] == 0 and s["b_result"]["done"] + s["b_result"]["skipped"] == 2, s["b_log"]
    db = s["out"] / "results.sqlite"
    assert _integrity(db) == "ok"
    cells = store_rows(s["out"], "SELECT seed, status FROM cells")
    assert sorted(c["seed"] for c in cells) == [0, 1, 2] and {c["status"] for c in cells} == {"done"}
    runs = store_rows(s["out"], "SELECT suite, status, finished FROM runs")
    assert sorted(r["suite"] for r in runs) == ["a", "b"]
    assert all(r["status"] == "done" and r["finished"] for r in runs)
    # seed 1 is in both suites: its release and attack result were built once in all
    seed1 = [ln for ln in (s["a_log"] + "\n" + s["b_log"]).splitlines() if " seed=1:" in ln]
    assert 1 <= len(seed1) <= 2, seed1  # b skips it when a had already finished it
    built = sum(int(m.group(1)) for ln in seed1 for m in [re.search(r"(\d+) built", ln)] if m)
    assert built == 2, seed1
    assert len(cache_entries(s["cache"])) == 6  # 3 releases + 3 attack results


def test_jobs_greater_than_cells_falls_back_to_sequential_cells(suite_file, tmp_path, monkeypatch):
    """--jobs N with fewer than N cells to run uses the jobs inside cells, not a process pool."""
    from bench.harness import runner
    from bench.harness.suite import load_suite

    seen = []
    real = runner.make_executor

    def spy(n, *a, **k):
        seen.append(n)
        return real(n, *a, **k)

    monkeypatch.setattr(runner, "make_executor", spy)
    suite = load_suite(str(suite_file(seeds=[0], defenses={"none": NONE_FAST}, attacks={})))
    res = runner.run_suite(suite, tmp_path / "o", jobs=4, cache_dir=tmp_path / "c", echo=lambda m: None,
                           progress=False)
    assert res["done"] == 1 and seen == [1]


@pytest.mark.parametrize("field", ["test_acc", "val_acc"])
def test_utility_is_measured_by_the_runner(finished_run, field):
    vals = [r["value"] for r in store_rows(finished_run["out"], "SELECT value FROM metrics WHERE name=?", (field,))]
    assert len(vals) == 4 and all(0.0 <= v <= 1.0 for v in vals)


def test_store_rows_carry_privacy_split_and_provenance(finished_run):
    import json

    for c in store_rows(finished_run["out"], "SELECT * FROM cells"):
        priv, split, prov = json.loads(c["privacy"]), json.loads(c["split"]), json.loads(c["provenance"])
        assert split["sizes"]["members"] == 300 and split["fingerprint"]
        assert "versions" in prov and prov["device"] == "cpu"
        # the processor and torch's kernel instruction set: numbers are bit-reproducible on one
        # machine, not across processors, so a store says which one it ran on
        assert "cpu" in prov and prov["torch_cpu_capability"]
        if c["defense"] == "dpsgd":
            assert priv["unit"] == "example" and priv["delta"] == 1e-5 and "RDP" in priv["accountant"] and 0 < priv["epsilon"] <= 1.0 + 1e-6
            assert c["epsilon"] == 1.0
        else:
            assert priv["unit"] == "none" and priv["epsilon"] is None and c["epsilon"] is None
