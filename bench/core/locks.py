"""Exclusive inter-process file locks (``fcntl.flock``), shared by the artifact cache and the
dataset loaders."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing, parent folders included) for the
    duration of the block. Each call opens its own file description, so two holders in one process
    exclude each other as two processes do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
