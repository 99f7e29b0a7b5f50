"""Dataset base class and the data-root / cache conventions.

Data root: ``--data-root`` or the ``BENCH_DATA`` environment variable, default
``~/.cache/privacy-bench/data``. Each dataset lives in ``<root>/<folder>/`` in torchvision's
layout (e.g. ``<root>/mnist/MNIST/raw/train-images-idx3-ubyte.gz``). A read-only root (such as a
shared data mount) is never written to: the dataset folder is copied into the writable cache
first (``BENCH_CACHE``, default ``~/.cache/privacy-bench``) and torchvision extracts there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.core.locks import file_lock


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "privacy-bench").expanduser()


def data_root() -> Path:
    return Path(os.environ.get("BENCH_DATA") or cache_root() / "data").expanduser()


def read_only(folder: Path) -> bool:
    """Whether ``folder`` must not be written to: this process may not write to it, or no one may
    (no write bit in its mode). The second test matters for root, which passes ``os.access`` on a
    folder whose mode says read-only, such as a shared data mount: that folder is copied, not
    written into."""
    return not os.access(folder, os.W_OK) or not (folder.stat().st_mode & 0o222)


def folder_lock(folder: Path):
    """An exclusive lock on ``folder`` (a ``.<name>.lock`` file beside it) for the time torchvision
    checks and extracts its archives: two processes loading one fresh dataset folder at once
    (``bench run`` beside another, or ``--jobs``) would otherwise read a half-written extracted
    file and report it as corrupt."""
    return file_lock(folder.parent / f".{folder.name}.lock")


@dataclass
class RawData:
    """Full arrays of a dataset: images as float32 in [0, 1], shape (N, C, H, W)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])


def dataset_info(name: str) -> type[Dataset]:
    """The registered dataset class ``name`` (its constants: sizes, input statistics, public
    partner, paper settings); the one-line unknown-dataset error otherwise."""
    from bench.core.registry import get_dataset

    return get_dataset(name)


class Dataset:
    """A registered dataset. Subclasses set the class attributes and implement :meth:`load`."""

    name: str = ""
    #: folder under the data root
    folder: str = ""
    #: the raw files expected under ``<root>/<folder>/``, for the offline error message
    expected_files: tuple[str, ...] = ()
    #: default protocol sizes (members, validation, non-member pool); see bench.lib.tasks
    default_sizes: dict = {}
    #: default private classes for the inversion protocol
    default_private_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    #: whether the dataset ships an official test split (reports say "the official test split"
    #: only then; otherwise the loader's fixed held-out split plays that role)
    official_test_split: bool = True
    source: str = ""
    #: per-channel (mean, std) of the training split in [0, 1] pixel units (e.g. a generator's
    #: "dataset statistics" output layer); None when not tabulated
    input_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    #: a dataset of the same shape and a disjoint domain, the natural public data of transfer-
    #: learning defenses (TL-DMI); None when there is none
    public_partner: str | None = None
    #: published per-method hyperparameters for this dataset, keyed by method name (each method
    #: documents its entry's layout), e.g. DataLens' README table; methods must not fall back to
    #: another dataset's entry silently
    paper_settings: dict = {}

    def load(self, root: Path, download: bool = True) -> RawData:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers for torchvision-backed datasets -------------------------------------------
    def writable_folder(self, root: Path) -> Path:
        """``<root>/<folder>``, or a copy of it in the cache when ``root`` is read-only
        (:func:`read_only`)."""
        src = root / self.folder
        if src.exists() and read_only(src):
            dst = cache_root() / "data" / self.folder
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{self.folder}-"))
                shutil.copytree(src, tmp, dirs_exist_ok=True)
                for p in [tmp, *tmp.rglob("*")]:
                    p.chmod(0o755 if p.is_dir() else 0o644)
                try:
                    os.replace(tmp, dst)
                except OSError:  # another process won the race
                    shutil.rmtree(tmp, ignore_errors=True)
            return dst
        return src

    def missing_error(self, root: Path, err: Exception) -> BenchError:
        """Missing files are named (only those); all present but unreadable says so instead."""
        missing = [f"{root / self.folder}/{f}" for f in self.expected_files if not (root / self.folder / f).exists()]
        if not missing and self.expected_files:
            return BenchError(f"dataset '{self.name}': the files under {root / self.folder} are present but could "
                              f"not be loaded ({type(err).__name__}: {' '.join(str(err).split())[:200]})")
        return BenchError(
            f"dataset '{self.name}' is not available under {root} and could not be downloaded "
            f"({type(err).__name__}); missing: {', '.join(missing)} — set --data-root or BENCH_DATA"
        )
