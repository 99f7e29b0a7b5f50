"""Shared pieces of the baseline defenses that train a student on data they did not read
directly (``datalens``, ``pate``, ``vae-metric``; ``tldmi`` uses the freezing helpers only).

* :func:`train_student`: minibatch training of a student classifier on synthetic or
  teacher-labelled data, selecting the epoch on a given selection split, with per-epoch
  accuracy curves on further (diagnostic) splits;
* :func:`holdout`: a seeded train / selection split of a synthetic or answered set;
* Gaussian RDP accounting on top of Google's ``dp_accounting`` (:class:`GaussianRdpLedger`,
  :func:`max_gaussian_compositions`): a defense composes Gaussian events (noise multiplier =
  noise std / L2 sensitivity) and asks the library accountant for epsilon. Nothing here
  computes an epsilon by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.lib.tasks import Split
from bench.lib.train import fit_classifier

# ---------------------------------------------------------------------------------------------
# student training


def holdout(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, selection) with ``round(frac * n)`` (at least one)
    selection rows; ``frac = 0`` gives an empty selection part."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    k = 0 if frac <= 0 else max(1, int(round(frac * n)))
    k = min(k, n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])


def train_student(model: nn.Module, train: Split, select: Optional[Split], *, epochs: int, lr: float,
                  batch_size: int, optimizer: str = "adam", weight_decay: float = 0.0, device="cpu",
                  seed: int = 0, curves: Optional[dict[str, Split]] = None,
                  progress: Callable = lambda it, **k: it, desc: str = "student epochs") -> tuple[nn.Module, dict]:
    """Cross-entropy training of ``model`` on ``train`` through :func:`bench.train.fit_classifier`;
    keeps the epoch with the best accuracy on ``select`` (the last epoch when ``select`` is None or
    empty; history key ``select_acc``). ``curves`` maps a name to a split whose accuracy is recorded
    after every epoch (diagnostics only: never used for selection)."""
    use_select = select is not None and len(select) > 0
    model, hist = fit_classifier(model, train, select if use_select else None, epochs=epochs, lr=lr,
                                 batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                                 device=device, generator=torch.Generator().manual_seed(seed), progress=progress,
                                 select_on_val=use_select, curves=curves, desc=desc)
    hist["select_acc"] = hist.pop("val_acc")
    model.eval()
    return model, hist


# ---------------------------------------------------------------------------------------------
# accounting (dp_accounting)


def _rdp_accountant(orders: Optional[Sequence[float]] = None, relation: str = "add_remove"):
    from dp_accounting import rdp
    from dp_accounting.privacy_accountant import NeighboringRelation as Rel

    rel = Rel.ADD_OR_REMOVE_ONE if relation == "add_remove" else Rel.REPLACE_ONE
    if orders is None:
        return rdp.RdpAccountant(neighboring_relation=rel)
    return rdp.RdpAccountant(list(orders), neighboring_relation=rel)


def gaussian_rdp_epsilon(events: Sequence[tuple[float, int]], delta: float,
                         orders: Optional[Sequence[float]] = None) -> float:
    """Epsilon at ``delta`` of the composition of Gaussian mechanisms, ``events`` = [(noise
    multiplier z = std / L2 sensitivity, count), ...], by dp_accounting's RDP accountant
    (conversion: Canonne-Kamath-Steinke 2020, Prop. 12, as implemented there)."""
    from dp_accounting import dp_event

    acc = _rdp_accountant(orders)
    for z, count in events:
        if count > 0:
            acc.compose(dp_event.GaussianDpEvent(float(z)), int(count))
    return float(acc.get_epsilon(delta))


class GaussianRdpLedger:
    """Running composition of Gaussian events in a dp_accounting RDP accountant."""

    def __init__(self, delta: float, orders: Optional[Sequence[float]] = None):
        self.delta = delta
        self.orders = orders
        self.counts: dict[float, int] = {}

    def compose(self, noise_multiplier: float, count: int = 1) -> None:
        self.counts[float(noise_multiplier)] = self.counts.get(float(noise_multiplier), 0) + int(count)

    def events(self, extra: Sequence[tuple[float, int]] = ()) -> list[tuple[float, int]]:
        return [*self.counts.items(), *extra]

    def epsilon(self, extra: Sequence[tuple[float, int]] = ()) -> float:
        """Epsilon so far (plus hypothetical ``extra`` events, e.g. to check a budget)."""
        ev = self.events(extra)
        if not any(c > 0 for _, c in ev):
            return 0.0
        return gaussian_rdp_epsilon(ev, self.delta, self.orders)


def max_gaussian_compositions(noise_multiplier: float, target_epsilon: float, delta: float,
                              orders: Optional[Sequence[float]] = None, upper: int = 10**9) -> int:
    """Largest T such that T self-compositions of the Gaussian mechanism with multiplier
    ``noise_multiplier`` spend at most ``target_epsilon`` at ``delta`` (bisection on the library
    accountant; epsilon is monotone in T)."""
    if gaussian_rdp_epsilon([(noise_multiplier, 1)], delta, orders) > target_epsilon:
        return 0
    lo, hi = 1, 2
    while hi < upper and gaussian_rdp_epsilon([(noise_multiplier, hi)], delta, orders) <= target_epsilon:
        lo, hi = hi, hi * 2
    hi = min(hi, upper)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if gaussian_rdp_epsilon([(noise_multiplier, mid)], delta, orders) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def calibrate_gaussian_scale(make_events: Callable[[float], Sequence[tuple[float, int]]], target_epsilon: float,
                             delta: float, lo: float = 1e-3, hi: float = 1e6, rel_tol: float = 1e-4) -> float:
    """Smallest scale s (bisection in log space) with ``epsilon(make_events(s)) <= target_epsilon``;
    ``make_events(s)`` returns the Gaussian events of a run whose noise grows with s."""
    def eps(s):
        return gaussian_rdp_epsilon(make_events(s), delta)

    if eps(hi) > target_epsilon:
        raise ValueError(f"no noise scale up to {hi} reaches epsilon {target_epsilon}")
    while eps(lo) <= target_epsilon and lo > 1e-12:
        lo /= 10
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def adam(params, lr: float, beta1: float, weight_decay: float = 0.0):
    """Adam (beta2 0.999, eps 1e-8 as TF's; decoupled weight decay when ``weight_decay`` > 0),
    the fused CPU kernel when this torch has it (same update, several times faster on the stacked
    teacher tensors)."""
    cls = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    kw = dict(lr=lr, betas=(beta1, 0.999), eps=1e-8, weight_decay=weight_decay)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return cls(params, **kw)


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
    are all drawn from it): the dataset's training-split size, recorded by ``bench.tasks`` as
    ``task.info["train_split_size"]``. (Taking the largest row index of the splits instead made
    the range, and so every shard, depend on whether one member was present.) Tasks built by
    hand without that entry fall back to the largest row index of the splits + 1."""
    n = (task.info or {}).get("train_split_size")
    if n:
        return int(n)
    return int(max(int(s.index.max()) for s in (task.members, task.val, task.nonmembers)
                   if s.index is not None and len(s) > 0)) + 1
