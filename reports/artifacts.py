"""Cached attack arrays for reports, read through the cache's verified loader.

Reports never open a cache entry's files directly: ``bench.cache.load_arrays`` checks every file
against the entry's manifest (SHA-256) first. An entry that fails the check (a flipped byte, a
truncated file) is left out of the report with one warning line on stderr, and what is drawn
from it (an ROC curve, an audit recomputation, an inversion grid row) says so by its absence; it
never reaches a plot or a bound.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np

from bench.core.cache import CorruptEntry, load_arrays


def cached_arrays(entry: str | Path, *required: str) -> Optional[dict[str, np.ndarray]]:
    """``{name: array}`` (the ``array.`` prefix stripped) of the verified cache entry at ``entry``,
    or None when the entry is missing, corrupt (one warning line) or lacks a ``required`` array."""
    try:
        arrays = load_arrays(entry)
    except CorruptEntry as e:
        print(f"warning: cache entry {entry} is corrupt ({e}); left out of the report "
              "(rerun the cell's command to rebuild it)", file=sys.stderr)
        return None
    if arrays is None:
        return None
    out = {k[len("array."):]: v for k, v in arrays.items() if k.startswith("array.")}
    if any(r not in out for r in required):
        return None
    return out
