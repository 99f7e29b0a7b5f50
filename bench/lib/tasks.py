"""Data protocols: seeded, recorded splits that every defense and attack shares.

Classification protocol (``protocol: classification``)
    The dataset's training split is shuffled with the cell seed and cut into three disjoint
    parts: **members** (the private training set a defense may use), **val** (all model and
    hyperparameter selection), and the **non-member pool** (same distribution, never trained on;
    membership attacks draw their negatives and reference data here). Utility is measured on the
    official **test** split, which nothing selects on.

Inversion protocol (``protocol: inversion``)
    The classes are cut into **private** classes (default MNIST digits 0-4, relabelled 0..k-1)
    and **public** classes (5-9). Members/val/non-members are drawn from the private classes'
    training images as above; the attacker's auxiliary data ``public`` is every training image of
    the public classes; ``test`` is the private classes' test images.

Sizes default to the dataset's ``default_sizes`` (MNIST: 48 000 members, 2 000 validation,
10 000 non-members, so utility stays comparable with papers that train on the full 60 000) and
can be shrunk per suite, e.g. ``protocol: {members: 1000}`` for membership-attack calibration.
A size larger than what is available is an error, not a silent clip.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.core.registry import get_dataset
from bench.lib.datasets.base import RawData, data_root


@dataclass
class ProtocolConfig:
    kind: Literal["classification", "inversion"] = "classification"
    members: Optional[int] = None
    val: Optional[int] = None
    nonmembers: Optional[int] = None
    #: inversion protocol: the private classes (the rest are public)
    private_classes: Optional[list[int]] = None
    #: resize images to this side length (e.g. 32 for the inversion protocol); None keeps them
    image_size: Optional[int] = None

    def validate(self):
        for k in ("members", "val", "nonmembers", "image_size"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise BenchError(f"protocol.{k} must be positive, got {v}")


@dataclass
class Split:
    x: torch.Tensor  # float32 in [0, 1], (N, C, H, W)
    y: torch.Tensor  # int64
    index: np.ndarray = field(repr=False, default=None)  # rows in the dataset's train/test arrays

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx) -> Split:
        idx = np.asarray(idx)
        return Split(self.x[idx], self.y[idx], None if self.index is None else self.index[idx])


@dataclass
class Task:
    dataset: str
    protocol: str
    seed: int
    num_classes: int
    image_shape: tuple
    members: Split
    val: Split
    test: Split
    nonmembers: Split
    public: Optional[Split] = None
    info: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Hash of the exact rows in every split: part of every cache key."""
        return self.info["fingerprint"]

    def candidate_pool(self) -> Split:
        """members + non-member pool, concatenated (rows keep their dataset indices)."""
        return Split(torch.cat([self.members.x, self.nonmembers.x]), torch.cat([self.members.y, self.nonmembers.y]),
                     np.concatenate([self.members.index, self.nonmembers.index]))

    def derive(self, member_rows, tag: str) -> Task:
        """The same task with another member set, drawn from :meth:`candidate_pool` by dataset row
        index (e.g. the random halves reference/shadow models train on). Validation, test and the
        non-member pool are unchanged; the fingerprint covers the new rows and the tag."""
        pool = self.candidate_pool()
        pos = {int(r): i for i, r in enumerate(pool.index)}
        rows = np.sort(np.asarray(member_rows, dtype=np.int64))
        try:
            sel = np.array([pos[int(r)] for r in rows], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"row {e} is not in the task's candidate pool") from None
        h = hashlib.sha256(f"{self.fingerprint}|{tag}|".encode() + rows.tobytes()).hexdigest()[:16]
        info = {**self.info, "fingerprint": h, "derived_from": self.fingerprint, "derived_tag": tag,
                "sizes": {**self.info["sizes"], "members": int(len(rows))}}
        return dataclasses.replace(self, members=pool.subset(sel), info=info)


def _resize(x: np.ndarray, size: Optional[int]) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if size is None or t.shape[-1] == size:
        return t
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=4)
def _load_raw(dataset: str, root: str) -> RawData:
    return get_dataset(dataset)().load(Path(root))


@functools.lru_cache(maxsize=4)
def _raw_digest(dataset: str, root: str) -> str:
    """SHA-256 of the loaded arrays: two different copies of a dataset never share cache entries."""
    raw = _load_raw(dataset, root)
    h = hashlib.sha256()
    for a in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def build_task(dataset: str, protocol: dict | ProtocolConfig | None, seed: int,
               root: str | Path | None = None) -> Task:
    """Load ``dataset`` and cut it under ``protocol`` with ``seed`` (deterministic)."""
    cls = get_dataset(dataset)
    cfg = protocol if isinstance(protocol, ProtocolConfig) else make_config(
        ProtocolConfig, protocol or {}, f"protocol of {dataset}")
    raw = _load_raw(dataset, str(Path(root) if root else data_root()))
    sizes = {k: getattr(cfg, k) if getattr(cfg, k) is not None else cls.default_sizes[k]
             for k in ("members", "val", "nonmembers")}

    train_y, test_y = raw.train_y, raw.test_y
    public = None
    if cfg.kind == "inversion":
        private = list(cfg.private_classes if cfg.private_classes is not None else cls.default_private_classes)
        n_all = len(raw.classes)
        if not private or any(c < 0 or c >= n_all for c in private) or len(set(private)) != len(private):
            raise BenchError(f"protocol.private_classes must be distinct classes in 0..{n_all - 1}, got {private}")
        public_classes = [c for c in range(n_all) if c not in private]
        remap = {c: i for i, c in enumerate(private)}
        pool = np.flatnonzero(np.isin(train_y, private))
        test_rows = np.flatnonzero(np.isin(test_y, private))
        pub_rows = np.flatnonzero(np.isin(train_y, public_classes))
        num_classes = len(private)
        mapy = np.vectorize(remap.__getitem__, otypes=[np.int64])
        if sizes == {k: cls.default_sizes[k] for k in sizes}:  # defaults scale to the private share
            frac = len(pool) / len(train_y)
            sizes = {k: int(v * frac) for k, v in sizes.items()}
    else:
        private, public_classes = None, None
        pool = np.arange(len(train_y))
        test_rows = np.arange(len(test_y))
        num_classes = len(raw.classes)

        def mapy(a):
            return a

    need = sum(sizes.values())
    if need > len(pool):
        raise BenchError(f"{dataset}: protocol asks for {need} training rows "
                         f"({sizes}) but only {len(pool)} are available")
    rng = np.random.default_rng(seed)
    perm = pool[rng.permutation(len(pool))]
    m, v = sizes["members"], sizes["val"]
    rows = {"members": np.sort(perm[:m]), "val": np.sort(perm[m:m + v]),
            "nonmembers": np.sort(perm[m + v:m + v + sizes["nonmembers"]])}

    def mk(x, y, idx):
        return Split(_resize(x[idx], cfg.image_size), torch.from_numpy(mapy(y[idx]).astype(np.int64)), idx)

    splits = {k: mk(raw.train_x, train_y, r) for k, r in rows.items()}
    test = mk(raw.test_x, test_y, test_rows)
    if cfg.kind == "inversion":
        public = Split(_resize(raw.train_x[pub_rows], cfg.image_size),
                       torch.from_numpy(train_y[pub_rows].astype(np.int64)), pub_rows)
    h = hashlib.sha256()
    root_s = str(Path(root) if root else data_root())
    h.update(json.dumps({"dataset": dataset, "protocol": dataclasses.asdict(cfg), "seed": seed,
                         "data": _raw_digest(dataset, root_s)}, sort_keys=True).encode())
    for r in (*rows.values(), test_rows, pub_rows if cfg.kind == "inversion" else np.zeros(0, np.int64)):
        h.update(np.ascontiguousarray(r, dtype=np.int64).tobytes())
    info = {"dataset": dataset, "protocol": dataclasses.asdict(cfg), "seed": seed,
            "sizes": {**{k: len(r) for k, r in rows.items()}, "test": len(test_rows),
                      "public": 0 if public is None else len(public)},
            "private_classes": private, "public_classes": public_classes,
            # public: the size of the dataset's training split every protocol row is drawn from
            # (DataLens/PATE shard the row range by it; never a function of the member set)
            "train_split_size": int(len(train_y)),
            "fingerprint": h.hexdigest()[:16]}
    return Task(dataset, cfg.kind, seed, num_classes, tuple(test.x.shape[1:]), splits["members"],
                splits["val"], test, splits["nonmembers"], public, info)
