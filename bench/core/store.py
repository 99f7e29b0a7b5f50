"""The run store: one SQLite database (``results.sqlite``) per run directory.

Tables: ``runs`` (one row per ``bench run`` invocation), ``cells`` (one row per grid cell, with
its full resolved config, split, privacy claim, status, traceback if it failed, wall time,
device and provenance), ``metrics`` (one row per number), ``attacks`` (each attack's method and
kind), ``timings`` (wall and CPU seconds per stage of the cell) and ``artifacts`` (cache keys and
files a cell produced). A finished cell is written in a single transaction, so a killed run
leaves either the whole cell or nothing. WAL mode plus a busy timeout lets several
``bench run`` processes (or ``--jobs`` workers) share one store safely.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from bench.core.errors import BenchError
from bench.core.records import Cell, CellRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, suite TEXT, suite_config TEXT, argv TEXT, started REAL, finished REAL,
  status TEXT, provenance TEXT);
CREATE TABLE IF NOT EXISTS cells (
  cell_key TEXT PRIMARY KEY, run_id TEXT, dataset TEXT, epsilon REAL, delta REAL, defense TEXT,
  seed INTEGER, status TEXT, config TEXT, split TEXT, privacy TEXT, info TEXT, error TEXT,
  wall_time REAL, device TEXT, provenance TEXT, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS metrics (
  cell_key TEXT, source TEXT, name TEXT, value REAL, PRIMARY KEY (cell_key, source, name));
CREATE TABLE IF NOT EXISTS attacks (
  cell_key TEXT, name TEXT, method TEXT, kind TEXT, PRIMARY KEY (cell_key, name));
CREATE TABLE IF NOT EXISTS timings (
  cell_key TEXT, seq INTEGER, stage TEXT, name TEXT, wall REAL, cpu REAL, self_wall REAL, self_cpu REAL,
  cached INTEGER, PRIMARY KEY (cell_key, seq));
CREATE TABLE IF NOT EXISTS artifacts (
  cell_key TEXT, name TEXT, kind TEXT, cache_key TEXT, path TEXT, PRIMARY KEY (cell_key, name));
"""

DB_NAME = "results.sqlite"


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("privacy-bench", "torch", "torchvision", "opacus", "dp-accounting", "numpy", "scikit-learn",
                "scipy", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_sha() -> Optional[str]:
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str = "cpu", torch_threads: bool = True) -> dict:
    """Where a run ran. ``torch_threads=False``: leave torch's thread count out (a rerun that
    trains nothing and so never imports torch)."""
    return {"git_sha": git_sha(), "versions": _versions(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu": _cpu_model(), "device": device, "cpu_count": os.cpu_count(),
            "torch_threads": _torch_threads() if torch_threads else None,
            "torch_cpu_capability": _torch_cpu_capability() if torch_threads else None}


def _cpu_model() -> Optional[str]:
    """The processor's model name: the same seed and config give the same numbers on one machine,
    but not bit for bit across processors (torch picks its CPU kernels by instruction set)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _torch_cpu_capability():
    """The instruction set torch dispatches its CPU kernels to (e.g. AVX2, AVX512)."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        return None


def _torch_threads():
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # pragma: no cover
        return None


def _eps(v: float) -> Optional[float]:
    return None if v is None or math.isinf(v) else float(v)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextlib.contextmanager
def _sqlite_errors(path: Path):
    """sqlite3 errors as one line: a corrupt file, a full disk, a read-only directory."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        msg = " ".join(str(e).split())
        if isinstance(e, sqlite3.OperationalError):  # disk full, read-only, locked, I/O error
            raise BenchError(f"run store {path}: {msg} (a failed transaction is rolled back; what was recorded "
                             "before it is intact)") from None
        raise BenchError(f"run store {path} is not a readable results database ({msg}); move it away or "
                         "choose another --out") from None


class Store:
    def __init__(self, run_dir: str | Path, create: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise BenchError(f"run directory {self.run_dir} exists and is not a directory")
        if create:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BenchError(f"cannot create run directory {self.run_dir}: {e.strerror or e}") from None
        if self.path.exists() and not self.path.is_file():
            raise BenchError(f"run store {self.path} is not a file")
        with _sqlite_errors(self.path):
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                self._conn.row_factory = sqlite3.Row
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA busy_timeout=60000")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                # a garbled page is found now, before anything is written (a run row included)
                check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {' '.join(str(check).split())[:200]}")
                with self.transaction() as c:
                    for stmt in SCHEMA.split(";"):
                        if stmt.strip():
                            c.execute(stmt)
            except BaseException:
                self._conn.close()
                raise

    @staticmethod
    def exists(run_dir: str | Path) -> bool:
        return (Path(run_dir) / DB_NAME).exists()

    def close(self):
        self._conn.close()

    @contextlib.contextmanager
    def transaction(self):
        c = self._conn
        with _sqlite_errors(self.path):
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): a second ROLLBACK
                # would raise "no transaction is active" and hide the real error
                if c.in_transaction:
                    try:
                        c.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, run_id: str, suite: str, suite_config: dict, argv: list[str], prov: dict) -> None:
        """Record a new invocation (with the driver's pid and host, so that a later one can tell a
        killed run from a live one) after marking earlier runs whose driver is gone."""
        self.mark_dead_runs()
        prov = {**prov, "driver": {"pid": os.getpid(), "host": platform.node()}}
        with self.transaction() as c:
            c.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)",
                      (run_id, suite, json.dumps(suite_config), json.dumps(argv), time.time(), None, "running",
                       json.dumps(prov)))

    def mark_dead_runs(self) -> int:
        """``running`` runs of this host whose driver process no longer exists (killed with
        SIGKILL, a power cut) become ``killed``; returns how many. Runs of other hosts, or live
        ones sharing this store, are left alone."""
        rows = self.query("SELECT run_id, provenance FROM runs WHERE status='running'")
        dead = []
        for r in rows:
            try:
                drv = (json.loads(r["provenance"] or "{}") or {}).get("driver") or {}
            except ValueError:
                continue
            if drv.get("host") == platform.node() and isinstance(drv.get("pid"), int) and not _pid_alive(drv["pid"]):
                dead.append(r["run_id"])
        if dead:
            with self.transaction() as c:
                c.executemany("UPDATE runs SET status='killed' WHERE run_id=? AND status='running'",
                              [(d,) for d in dead])
        return len(dead)

    def finish_run(self, run_id: str, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET finished=?, status=? WHERE run_id=?", (time.time(), status, run_id))

    # -- cells -------------------------------------------------------------------------------
    def cell_status(self, cell_key: str) -> Optional[str]:
        rows = self.query("SELECT status FROM cells WHERE cell_key=?", (cell_key,))
        return rows[0]["status"] if rows else None

    def record_cell(self, record: CellRecord | None = None, /, **fields) -> None:
        """Write one finished (or failed) cell (a :class:`~bench.core.records.CellRecord`, or its
        fields as keywords; ``cell`` may be a :class:`~bench.core.records.Cell` or its dict) with all
        its metrics, artifacts and attack kinds in one transaction."""
        if record is None:
            for k in ("metrics", "artifacts", "attacks", "timings"):
                fields[k] = tuple(fields.get(k, ()))
            record = CellRecord(**fields)
        r = record
        cell = r.cell.as_dict() if isinstance(r.cell, Cell) else dict(r.cell)
        cell_key, metrics, attacks, artifacts = r.cell_key, r.metrics, r.attacks, r.artifacts
        with self.transaction() as c:
            c.execute("DELETE FROM metrics WHERE cell_key=?", (cell_key,))
            c.execute("DELETE FROM attacks WHERE cell_key=?", (cell_key,))
            c.execute("DELETE FROM timings WHERE cell_key=?", (cell_key,))
            c.execute("DELETE FROM artifacts WHERE cell_key=?", (cell_key,))
            c.execute("INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (cell_key, r.run_id, cell["dataset"], _eps(cell["epsilon"]), cell["delta"],
                       cell.get("variant") or cell["defense"],
                       cell["seed"], r.status, json.dumps(cell, default=str), json.dumps(r.split),
                       json.dumps(r.privacy), json.dumps(r.info, default=str), r.error, r.wall_time, r.device,
                       json.dumps(r.prov), r.started, time.time()))
            c.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?)",
                          [(cell_key, s, n, float(v)) for s, n, v in metrics])
            c.executemany("INSERT OR REPLACE INTO attacks VALUES (?,?,?,?)",
                          [(cell_key, *a) for a in attacks])
            c.executemany("INSERT OR REPLACE INTO timings VALUES (?,?,?,?,?,?,?,?,?)",
                          [(cell_key, i, s, n, float(w), float(cp), float(sw), float(sc), int(bool(h)))
                           for i, (s, n, w, cp, sw, sc, h) in enumerate(r.timings)])
            c.executemany("INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?,?)",
                          [(cell_key, *a) for a in artifacts])

    # -- queries -----------------------------------------------------------------------------
    def query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        with _sqlite_errors(self.path):
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]

    def cells(self, status: Optional[str] = None) -> list[dict]:
        if status:
            return self.query("SELECT * FROM cells WHERE status=? ORDER BY dataset, defense, epsilon, seed", (status,))
        return self.query("SELECT * FROM cells ORDER BY dataset, defense, epsilon, seed")

    def attack_kinds(self) -> dict[str, str]:
        """{attack name in the suite: its kind} as recorded by the runner (empty for stores written
        before kinds were recorded)."""
        return {r["name"]: r["kind"] for r in self.query("SELECT DISTINCT name, kind FROM attacks")}

    def metrics(self) -> list[dict]:
        return self.query("SELECT * FROM metrics")

    def timings(self) -> list[dict]:
        """Stage timings of the finished cells (empty for stores written before they were recorded)."""
        return self.query("SELECT t.* FROM timings t JOIN cells c USING (cell_key) WHERE c.status = 'done' "
                          "ORDER BY t.cell_key, t.seq")

    def runs(self) -> list[dict]:
        return self.query("SELECT * FROM runs ORDER BY started")
