"""Disjoint teacher shards of the private members (PATE-style defenses: ``pate``, ``datalens``,
``pate-gan``): :func:`partition` (one member, one shard), :func:`shard_capacity` (the public size
every shard is padded to), :func:`padded_shards` (the shards as a padded position / mask table)
and :func:`row_universe` (the public row range the assignment is a function of)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from bench.core.errors import BenchError


def partition(rows: np.ndarray, labels: np.ndarray, n_teachers: int, how: str, seed: int,
              universe: Optional[int] = None) -> list[np.ndarray]:
    """Positions (into ``rows``) of each teacher's disjoint shard.

    ``record``: a seeded random permutation of the public row range ``[0, universe)`` of the
    dataset (its training split) is cut into ``teachers`` equal slot ranges; a member belongs to
    the teacher owning its own row. The assignment is a function of the member alone, so adding
    or removing one member changes exactly one shard (the add/remove relation of the privacy
    proof); shards hold up to ceil(universe / teachers) members.
    ``balanced``: DataLens' ``--shuffle`` (class-balanced round robin over a seeded shuffle, equal
    shards), without the original's re-use of images when a class runs out. Its assignment
    depends on the other members' labels, so the one-record-one-teacher argument holds only for
    a fixed assignment (documented)."""
    n = len(rows)
    if n < n_teachers:
        raise BenchError(f"datalens: {n} members cannot fill {n_teachers} teachers")
    if how == "record":
        universe = int(rows.max()) + 1 if universe is None else int(universe)
        rng = np.random.default_rng([seed, 911])
        rank = np.empty(universe, dtype=np.int64)
        rank[rng.permutation(universe)] = np.arange(universe)
        owner = rank[rows] * n_teachers // universe
        order = np.argsort(owner, kind="stable")
        cuts = np.searchsorted(owner[order], np.arange(1, n_teachers))
        return [np.sort(s) for s in np.split(order, cuts)]
    if how == "balanced":
        rng = np.random.default_rng([seed, 912])
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        inter = []
        pos = [0] * len(per_class)
        while len(inter) < n:
            for c, lst in enumerate(per_class):
                if pos[c] < len(lst):
                    inter.append(lst[pos[c]])
                    pos[c] += 1
        inter = np.asarray(inter)
        size = n // n_teachers
        return [np.sort(inter[i * size:(i + 1) * size]) for i in range(n_teachers)]
    raise BenchError(f"datalens: unknown partition {how!r}")


def shard_capacity(universe: int, n_teachers: int) -> int:
    """The public slot capacity of a shard: ceil(universe / teachers), the most members a
    ``record`` shard can hold (each teacher owns floor or ceil of universe / teachers slots of the
    row range); a ``balanced`` shard holds n // teachers <= this. Defenses pad their shards to it
    so that no step count, tensor shape or random draw depends on the realised shard sizes."""
    return max(1, math.ceil(int(universe) / int(n_teachers)))


def row_universe(task) -> int:
    """The public row range of the task's training pool (members, validation and non-member rows
    are all drawn from it): the dataset's training-split size, recorded by ``bench.lib.tasks`` as
    ``task.info["train_split_size"]``. (Taking the largest row index of the splits instead made
    the range, and so every shard, depend on whether one member was present.) Tasks built by
    hand without that entry fall back to the largest row index of the splits + 1."""
    n = (task.info or {}).get("train_split_size")
    if n:
        return int(n)
    return int(max(int(s.index.max()) for s in (task.members, task.val, task.nonmembers)
                   if s.index is not None and len(s) > 0)) + 1


def padded_shards(rows: np.ndarray, labels: np.ndarray, n_teachers: int, how: str, seed: int,
                  universe: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The shards of :func:`partition` as a table padded to the public slot capacity M
    (:func:`shard_capacity`), not to the realised largest shard: ``pos`` (N, M) positions into
    ``rows`` (0 in empty slots) and ``mask`` (N, M), True where a slot holds a member. A defense
    that draws one fake per slot (DataLens, PATE-GAN) so draws nothing whose count depends on the
    other members."""
    rows = np.asarray(rows)
    shards = partition(rows, labels, n_teachers, how, seed, universe)
    M = shard_capacity(int(rows.max()) + 1 if universe is None else universe, n_teachers)
    if max(len(s) for s in shards) > M:  # pragma: no cover - partition guarantees it
        raise BenchError("a shard exceeds the slot capacity")
    pos = np.zeros((n_teachers, M), dtype=np.int64)
    mask = np.zeros((n_teachers, M), dtype=bool)
    for i, s in enumerate(shards):
        pos[i, :len(s)] = s
        mask[i, :len(s)] = True
    return pos, mask, M
