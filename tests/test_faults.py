"""Faults and hostile input (the review "what trying to break it found"): every case gives one
clear line and a non-zero exit (or the recorded-failure path), never a traceback, and loses
nothing that was recorded before it. Each test here failed on the code before its fix.

Fault injection is real where the machine allows it: corrupt bytes in cache entries and stores,
a full disk and a read-only directory on a small tmpfs (skipped where ``mount`` is not allowed),
SIGINT to the process group of a ``--jobs 2`` run, SIGKILL of its driver, a planted pickle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    TINY_SUITE,
    assert_user_error,
    bench_cmd,
    bench_env,
    store_rows,
    tmpfs,
    write_fake_mnist,
    write_suite,
)

ONE_CELL = {**TINY_SUITE, "seeds": [0], "defenses": {"none": TINY_SUITE["defenses"]["none"]}}


@pytest.fixture
def small_run(tmp_path, cli):
    """One finished cell (none + loss-threshold on digits) in its own run dir and cache."""
    suite = write_suite(tmp_path / "one.yaml", ONE_CELL)
    out, cache = tmp_path / "run", tmp_path / "cache"
    code, o, e = cli("run", "--suite", suite, "--out", out, "--cache-dir", cache)
    assert code == 0, o + e
    return {"suite": suite, "out": out, "cache": cache}


def _flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- 1. reports read cached arrays through the verified loader ----------------------------------

def test_report_leaves_out_a_corrupt_cached_array_with_one_warning(cli, small_run, tmp_path):
    arts = store_rows(small_run["out"], "SELECT path FROM artifacts WHERE kind='attack'")
    npz = Path(arts[0]["path"]) / "arrays.npz"
    _flip_byte(npz)
    code, out, err = cli("report", small_run["out"], "--out", tmp_path / "rep")
    assert code == 0, out + err
    assert "Traceback" not in err and "BadZipFile" not in err
    warns = [ln for ln in err.splitlines() if "corrupt" in ln]
    assert warns and all(ln.startswith("warning: cache entry") for ln in warns), err
    assert (tmp_path / "rep" / "report.html").exists()


def test_inversion_grid_arrays_go_through_the_manifest_check(tmp_path, capsys):
    from bench.core.cache import Cache
    from reports.inversion_grid import _load_arrays

    cache = Cache(tmp_path / "c")
    payload = {"kind": "attack", "x": 1}
    cache.get_or_build("attack", payload, lambda: {"array.images": np.zeros((2, 1, 4, 4), np.float32)})
    from bench.core.cache import digest

    entry = cache.path("attack", digest(payload))
    assert _load_arrays(entry) is not None
    _flip_byte(entry / "arrays.npz")
    assert _load_arrays(entry) is None
    assert "corrupt" in capsys.readouterr().err


# -- 2, 3. corrupt and full stores ----------------------------------------------------------

@pytest.mark.parametrize("how", ["garbage", "garbled-page"])
def test_corrupt_store_is_one_line_for_run_report_and_check(cli, small_run, tmp_path, how):
    db = small_run["out"] / "results.sqlite"
    baseline = tmp_path / "b.json"
    assert cli("check", small_run["out"], "--baseline", baseline, "--write-baseline")[0] == 0
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    if how == "garbage":
        db.write_bytes(os.urandom(8192))
    else:  # a valid header, a garbled b-tree page
        data = bytearray(db.read_bytes())
        assert len(data) >= 3 * 4096
        data[4096 + 16:2 * 4096] = os.urandom(4096 - 16)
        db.write_bytes(bytes(data))
    before = db.read_bytes()
    for argv in (("run", "--suite", small_run["suite"], "--out", small_run["out"], "--cache-dir", small_run["cache"]),
                 ("report", small_run["out"], "--out", tmp_path / "rep"),
                 ("check", small_run["out"], "--baseline", baseline)):
        code, out, err = cli(*argv)
        assert_user_error(code, out, err, "results.sqlite")
    assert db.read_bytes() == before, "a command wrote into the corrupt store (e.g. a runs row)"


def test_full_disk_names_the_real_error_not_the_rollback(tmp_path):
    from bench.core.errors import BenchError
    from bench.core.store import Store

    store = Store(tmp_path / "run")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL on the next page
    cell = {"dataset": "d", "epsilon": 1.0, "delta": 1e-5, "defense": "x", "seed": 0}
    with pytest.raises(BenchError) as ei:
        store.record_cell(cell_key="k", run_id="r", cell=cell, status="done", split={}, privacy={},
                          info={"blob": "x" * 200_000}, error=None, wall_time=1.0, device="cpu", prov={})
    msg = str(ei.value)
    assert "full" in msg and "rollback" not in msg and "\n" not in msg
    assert store.cells() == []  # nothing half-written
    store.close()


def test_full_disk_during_a_run_is_one_line(tmp_path, cli):
    """A real full disk: the run directory on a 256 KiB tmpfs, filled up before the cell is recorded."""
    suite = write_suite(tmp_path / "one.yaml", ONE_CELL)
    with tmpfs(tmp_path / "small") as mnt:
        from bench.core import store as store_mod

        real = store_mod.Store.record_cell

        def fill_then_record(self, record=None, /, **kw):
            with contextlib.suppress(OSError):
                with open(mnt / "filler", "wb") as f:
                    while True:
                        f.write(b"\0" * 65536)
            big = {"logs": ["x" * 100_000]}
            if record is not None:  # the runner passes a CellRecord
                return real(self, dataclasses.replace(record, info=big))
            return real(self, **{**kw, "info": big})

        store_mod.Store.record_cell = fill_then_record
        try:
            code, out, err = cli("run", "--suite", suite, "--out", mnt / "run", "--cache-dir", tmp_path / "cache")
        finally:
            store_mod.Store.record_cell = real
        line = assert_user_error(code, out, err)
        assert "full" in line and "rollback" not in line


# -- 4, 5, 6, 11. hostile suite files and baselines ------------------------------------------

def test_binary_and_unreadable_suite_and_baseline_files(cli, tmp_path, small_run):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage\x9c")
    assert_user_error(*cli("run", "--suite", binary, "--dry-run"), "not UTF-8")
    assert_user_error(*cli("check", small_run["out"], "--baseline", binary))
    adir = tmp_path / "dir.yaml"
    adir.mkdir()
    assert_user_error(*cli("run", "--suite", adir, "--dry-run"))
    assert_user_error(*cli("check", small_run["out"], "--baseline", adir), "directory")
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.yaml"
        locked.write_text("name: x\n")
        locked.chmod(0)
        assert_user_error(*cli("run", "--suite", locked, "--dry-run"), "cannot read")


def test_nul_byte_in_a_suite_is_one_line(cli, tmp_path):
    p = tmp_path / "nul.yaml"
    p.write_bytes(b"name: x\ndescription: a\x00b\n")
    assert_user_error(*cli("run", "--suite", p, "--dry-run"), "malformed suite file")


def test_yaml_alias_bomb_is_rejected_before_it_expands(cli, tmp_path):
    """Seven levels of ten aliases under one valid key (10**7 leaves once expanded)."""
    bomb = ["  - &b0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    bomb += [f"  - &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]" for i in range(1, 7)]
    for key in ("description", "epsilons"):
        p = tmp_path / f"bomb-{key}.yaml"
        p.write_text(yaml.safe_dump({k: v for k, v in TINY_SUITE.items() if k != key}) + f"{key}:\n"
                     + "\n".join(bomb) + "\n")
        t0 = time.time()
        assert_user_error(*cli("run", "--suite", p, "--dry-run"), "aliases")
        assert time.time() - t0 < 5
    # and through --set
    assert_user_error(*cli("run", "--suite", write_suite(tmp_path / "ok.yaml"), "--dry-run",
                           "--set", "description=[&a [1, 2], *a]"), "aliases")


@pytest.mark.parametrize("seed", [2**64, 2**63, -1, 2**32])
def test_seeds_beyond_the_bound_are_rejected_at_parsing(cli, suite_file, seed):
    assert_user_error(*cli("run", "--suite", suite_file(seeds=[seed]), "--dry-run"), "seeds must be integers in 0..")


def test_largest_allowed_seed_is_accepted(cli, suite_file):
    from bench.harness.suite import MAX_SEED

    code, out, err = cli("run", "--suite", suite_file(seeds=[MAX_SEED]), "--dry-run")
    assert code == 0, err


# -- 7. read-only cache and report directories -----------------------------------------------

def test_read_only_cache_dir_is_one_line_before_anything_is_written(cli, tmp_path):
    suite = write_suite(tmp_path / "one.yaml", ONE_CELL)
    with tmpfs(tmp_path / "ro", ro=True) as ro:
        code, out, err = cli("run", "--suite", suite, "--out", tmp_path / "run", "--cache-dir", ro / "cache")
        assert_user_error(code, out, err, "cache")
        assert not (tmp_path / "run" / "results.sqlite").exists()
        (tmp_path / "ro2").mkdir()
    with tmpfs(tmp_path / "ro2", ro=True) as ro2:
        code, out, err = cli("run", "--suite", suite, "--out", tmp_path / "run2", "--cache-dir", ro2)
        assert_user_error(code, out, err, "not writable")


def test_cache_dir_below_a_file_is_one_line(cli, tmp_path):
    suite = write_suite(tmp_path / "one.yaml", ONE_CELL)
    (tmp_path / "afile").write_text("x")
    assert_user_error(*cli("run", "--suite", suite, "--out", tmp_path / "run", "--cache-dir",
                           tmp_path / "afile" / "cache"), "cannot create the artifact cache")


# -- 8. a truncated dataset file is named with its expected checksum --------------------------

def _patched_resources(monkeypatch, raw: Path):
    import torchvision.datasets as tvd

    res = [(f.name, hashlib.md5(f.read_bytes()).hexdigest()) for f in sorted(raw.glob("*.gz"))]  # noqa: S324
    monkeypatch.setattr(tvd.MNIST, "resources", res)
    return dict(res)


def test_truncated_gz_is_named_with_its_expected_md5(tmp_path, monkeypatch):
    from bench.core.errors import BenchError
    from bench.lib.datasets.mnist import MNIST

    raw = write_fake_mnist(tmp_path / "data")
    md5 = _patched_resources(monkeypatch, raw)
    for f in raw.iterdir():  # only the archives, as on a fresh download
        if not f.name.endswith(".gz"):
            f.unlink()
    gz = raw / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(BenchError) as ei:
        MNIST().load(tmp_path / "data", download=False)
    msg = str(ei.value)
    assert str(gz) in msg and md5[gz.name] in msg and "corrupt" in msg
    assert "could not be downloaded" not in msg


def test_truncated_extracted_file_is_named(tmp_path, monkeypatch):
    from bench.core.errors import BenchError
    from bench.lib.datasets.mnist import MNIST

    raw = write_fake_mnist(tmp_path / "data")
    _patched_resources(monkeypatch, raw)
    plain = raw / "train-images-idx3-ubyte"
    plain.write_bytes(plain.read_bytes()[:1000])
    with pytest.raises(BenchError) as ei:
        MNIST().load(tmp_path / "data", download=False)
    assert str(plain) in str(ei.value) and "corrupt" in str(ei.value)


def test_missing_files_lists_only_the_missing_ones(tmp_path, monkeypatch):
    from bench.core.errors import BenchError
    from bench.lib.datasets.mnist import MNIST

    raw = write_fake_mnist(tmp_path / "data")
    _patched_resources(monkeypatch, raw)
    for f in raw.iterdir():
        if f.name.startswith("t10k"):
            f.unlink()
    with pytest.raises(BenchError) as ei:
        MNIST().load(tmp_path / "data", download=False)
    msg = str(ei.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "train-images-idx3-ubyte.gz" not in msg


def test_folder_with_no_write_bit_is_copied_not_written_even_by_root(tmp_path, monkeypatch):
    """A shared data folder with mode r-x is never written into: root passes os.access on it, so
    the check also reads the mode bits. torchvision extracts in the cache's copy."""
    from bench.lib.datasets.mnist import MNIST

    raw = write_fake_mnist(tmp_path / "data")
    _patched_resources(monkeypatch, raw)
    for f in raw.iterdir():  # archives only, as the shared data mount has them
        if not f.name.endswith(".gz"):
            f.unlink()
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "data" / "mnist"
    dirs = [src, *[p for p in src.rglob("*") if p.is_dir()]]
    before = sorted(p.name for p in raw.iterdir())
    for d in reversed(dirs):
        d.chmod(0o555)
    try:
        data = MNIST().load(tmp_path / "data", download=True)
    finally:
        for d in dirs:
            d.chmod(0o755)
    assert sorted(p.name for p in raw.iterdir()) == before  # nothing extracted into the source
    copy = tmp_path / "cache" / "data" / "mnist" / "MNIST" / "raw"
    assert (copy / "train-images-idx3-ubyte").is_file() and len(data.train_x) == 400


def test_loading_waits_for_another_process_extracting_the_same_folder(tmp_path, monkeypatch):
    """torchvision extracts in place; while another holder has the folder's lock (another process
    extracting), a load waits instead of reading a half-written file."""
    import fcntl
    import threading

    from bench.lib.datasets.mnist import MNIST

    raw = write_fake_mnist(tmp_path / "data")
    _patched_resources(monkeypatch, raw)
    for f in raw.iterdir():
        if not f.name.endswith(".gz"):
            f.unlink()
    lock = tmp_path / "data" / ".mnist.lock"
    out = {}
    with open(lock, "a") as fh:  # a separate open file description: conflicts like another process
        fcntl.flock(fh, fcntl.LOCK_EX)
        t = threading.Thread(target=lambda: out.setdefault("data", MNIST().load(tmp_path / "data", download=True)))
        t.start()
        t.join(1.5)
        assert t.is_alive() and not (raw / "train-images-idx3-ubyte").exists()  # waiting, nothing written
        fcntl.flock(fh, fcntl.LOCK_UN)
    t.join(60)
    assert not t.is_alive() and len(out["data"].train_x) == 400


# -- 9. LPIPS backbone weights: hash-checked, weights_only --------------------------------------

class _Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": _Planted(str(marker))}, f)


def test_planted_pickle_in_the_hub_cache_does_not_run(tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    from bench.lib.inversion import metrics as inv

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    path = inv.alexnet_weights_path() or str(Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth")
    marker = tmp_path / "pwned.txt"
    _plant(Path(path), marker)
    monkeypatch.setattr(inv, "_LPIPS", {})
    model, reason = inv.lpips_model()
    assert not marker.exists(), "the planted pickle ran"
    assert model is None and "does not match" in reason

    # a file whose name carries its own hash passes the hash check: weights_only must still refuse it
    blob = Path(path).read_bytes()
    named = Path(path).parent / f"alexnet-owt-{hashlib.sha256(blob).hexdigest()[:8]}.pth"
    named.write_bytes(blob)
    monkeypatch.setattr(inv, "alexnet_weights_path", lambda: str(named))
    monkeypatch.setattr(inv, "_LPIPS", {})
    model, reason = inv.lpips_model()
    assert not marker.exists(), "the planted pickle ran"
    assert model is None and "LPIPS unavailable" in reason


def test_real_alexnet_layout_loads_into_the_lpips_trunk(tmp_path):
    """The loader maps torchvision's ``features.i`` onto lpips's ``slice*.i`` (random weights,
    saved as a real state dict, so the hash and weights_only paths pass)."""
    lpips = pytest.importorskip("lpips")
    import torch
    import torchvision

    from bench.lib.inversion import load_alexnet_trunk

    state = torchvision.models.alexnet(weights=None).state_dict()
    tmp = tmp_path / "w.pth"
    torch.save(state, tmp)
    path = tmp_path / f"alexnet-owt-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(path)
    m = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)
    load_alexnet_trunk(m.net, str(path))
    assert torch.equal(m.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(m.net.slice5._modules["10"].bias, state["features.10.bias"])


# -- 10, 11. --jobs 2: Ctrl-C, a killed driver, run status ---------------------------------------

MANY_CELLS = {**TINY_SUITE, "seeds": list(range(10)),
              "defenses": {"none": {"arch": "mlp", "epochs": 60, "batch_size": 32, "lr": 0.003}}}


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_jobs2(tmp_path):
    suite = write_suite(tmp_path / "many.yaml", MANY_CELLS)
    out = tmp_path / "run"
    p = subprocess.Popen(bench_cmd("run", "--suite", suite, "--out", out, "--jobs", "2", "--cache-dir",
                                   tmp_path / "cache"), cwd=tmp_path, env=bench_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        ln = p.stdout.readline()
        if not ln:
            break
        lines.append(ln)
        if ln.startswith("[1/10]"):
            return p, out, lines
    p.kill()
    pytest.fail("no cell finished:\n" + "".join(lines))


def test_ctrl_c_on_jobs_2_stops_at_once_and_marks_the_run(tmp_path):
    p, out, lines = _start_jobs2(tmp_path)
    workers = _children(p.pid)
    t0 = time.time()
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    rest, _ = p.communicate(timeout=60)
    took = time.time() - t0
    assert p.returncode == 130, "".join(lines) + rest
    assert took < 15, f"Ctrl-C took {took:.1f}s"
    assert "Traceback" not in rest
    cells = store_rows(out, "SELECT status FROM cells")
    assert len(cells) <= 4, f"{len(cells)} cells were recorded after Ctrl-C"
    assert all(c["status"] == "done" for c in cells)
    assert [r["status"] for r in store_rows(out, "SELECT status FROM runs")] == ["interrupted"]
    time.sleep(1)
    assert not [w for w in workers if _alive(w)], "workers outlived the driver"


def test_killed_driver_takes_its_workers_with_it(tmp_path):
    p, out, lines = _start_jobs2(tmp_path)
    workers = [w for w in _children(p.pid)]
    assert workers
    p.kill()
    p.wait(timeout=10)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.25)
    left = [w for w in workers if _alive(w)]
    for w in left:
        with contextlib.suppress(OSError):
            os.kill(w, signal.SIGKILL)
    assert not left, "orphaned workers kept running after the driver was killed"
    n = len(store_rows(out, "SELECT * FROM cells"))
    time.sleep(2)
    assert len(store_rows(out, "SELECT * FROM cells")) == n, "cells were still being written"
    # the next run sees that the killed one is gone
    from bench.core.store import Store

    s = Store(out)
    assert s.mark_dead_runs() == 1
    assert [r["status"] for r in s.runs()] == ["killed"]
    s.close()


def test_a_crash_in_the_driver_is_not_recorded_as_done(tmp_path, monkeypatch):
    from bench.harness import runner
    from bench.harness.suite import load_suite

    def boom(r):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "summary_line", boom)
    with pytest.raises(RuntimeError):
        runner.run_suite(load_suite(str(write_suite(tmp_path / "one.yaml", ONE_CELL))), tmp_path / "run",
                         cache_dir=tmp_path / "cache", echo=lambda m: None, progress=False)
    assert [r["status"] for r in store_rows(tmp_path / "run", "SELECT status FROM runs")] == ["crashed"]


def test_list_into_a_closed_pipe_is_quiet(tmp_path):
    r = subprocess.run(f"{sys.executable} -m bench list suites | head -1", shell=True, cwd=tmp_path,
                       env=bench_env(), capture_output=True, text=True, timeout=120)
    assert r.stdout.count("\n") == 1
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_an_architecture_that_does_not_fit_the_dataset_is_one_line(tmp_path, cli):
    """dpsgd with the tanh-cnn (8x8 kernels) on 8x8 digits: one line naming the fix."""
    suite = write_suite(tmp_path / "one.yaml", {**ONE_CELL, "defenses": {"dpsgd": {"arch": "tanh-cnn", "epochs": 1, "accountant": "rdp"}}})
    code, out, err = cli("run", "--suite", suite, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    assert code == 1
    errs = [r["error"] for r in store_rows(tmp_path / "run", "SELECT error FROM cells")]
    assert len(errs) == 1 and errs[0].startswith("BenchError: architecture 'tanh-cnn' does not fit 1x8x8")
    assert "\n" not in errs[0] and "arch: mlp" in errs[0]


# -- 14. help, packaging, suite descriptions ---------------------------------------------------

def test_jobs_help_states_the_real_default():
    from bench.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    jobs = next(a for a in run._actions if a.dest == "jobs")
    assert jobs.default == 1 and "default: 1" in jobs.help and "(default: all)" not in jobs.help


def test_package_data_globs_match_files():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for pkg, globs in data.items():
        for g in globs:
            assert list((REPO / pkg).glob(g)), f"package-data {pkg}: {g} matches nothing"
    assert "published.yaml" in data.get("reports", [])  # read by the reports at run time


def test_suite_descriptions_do_not_promise_every_attack():
    from bench.core import registry
    from bench.harness.suite import load_suite, suite_names

    everything = set(registry.names("attacks"))
    for name in suite_names():
        s = load_suite(name)
        used = {c.get("method", a) for a, c in s.attacks.items()}
        if re.search(r"every (defen[cs]e and )?attack", s.description):
            assert used == everything, f"{name} says 'every attack' but runs {sorted(used)}"


def test_near_noiseless_budget_is_one_line_not_an_oom_kill():
    """epsilon = 1e4 over 400 Gaussian compositions: the PLD accountant would need ~1e9 points (the
    process was killed for memory after its teacher had trained); refused in one line, pointing to
    RDP, which handles it. Ordinary budgets are untouched."""
    from bench.core.errors import BenchError
    from bench.lib import distill as D

    t0 = time.time()
    with pytest.raises(BenchError, match="accountant: rdp") as ei:
        D.calibrate_gaussian(1e4, 1e-5, 400)
    assert "\n" not in str(ei.value) and time.time() - t0 < 30
    z = D.calibrate_gaussian(1e4, 1e-5, 400, "rdp")
    assert 0 < z < 1
    with pytest.raises(BenchError):
        D.gaussian_epsilon(z, 400, 1e-5)
    assert D.pld_points(D.calibrate_gaussian(1.0, 1e-5, 1, "rdp"), 400) < D.PLD_MAX_POINTS
