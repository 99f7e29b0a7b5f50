"""The typed objects that flow through the harness: a grid :class:`Cell` (what to run) and a
:class:`CellRecord` (what one cell produced, written to the store in one transaction). Both are
frozen: a cell is a value, never edited on its way through the executors.

``Cell.as_dict()`` is the JSON form the cache keys and the store's ``cells.config`` column are
computed from (``variant`` only when the suite names one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Cell:
    """One grid cell: dataset x epsilon x defense (variant) x seed, with every attack of the suite."""

    dataset: str
    protocol: dict
    inversion: dict
    epsilon: float
    delta: float
    defense: str
    defense_config: dict
    attacks: dict
    seed: int
    #: the suite's name for the defense when it differs from the registered method's
    variant: Optional[str] = None

    @property
    def label(self) -> str:
        """The row name in tables: the suite variant, else the defense."""
        return self.variant or self.defense

    def as_dict(self) -> dict:
        d = {"dataset": self.dataset, "protocol": self.protocol, "inversion": self.inversion,
             "epsilon": self.epsilon, "delta": self.delta, "defense": self.defense,
             "defense_config": self.defense_config, "attacks": self.attacks, "seed": self.seed}
        if self.variant is not None:
            d["variant"] = self.variant
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        return cls(d["dataset"], d["protocol"], d["inversion"], d["epsilon"], d["delta"], d["defense"],
                   d["defense_config"], d["attacks"], d["seed"], d.get("variant"))


@dataclass(frozen=True)
class CellRecord:
    """Everything one cell writes to the store. ``metrics``: (source, name, value) with source
    ``utility``, ``privacy``, ``inversion-target`` or the attack's suite name; ``artifacts``:
    (name, cache kind, cache key, path); ``attacks``: (suite name, registered method, kind)."""

    cell_key: str
    run_id: str
    #: the cell (a plain dict is accepted for records written by hand, e.g. in tests)
    cell: Cell | dict
    status: str
    split: Optional[dict]
    privacy: Optional[dict]
    info: Optional[dict]
    error: Optional[str]
    wall_time: float
    device: str
    prov: dict
    metrics: tuple[tuple[str, str, float], ...] = ()
    artifacts: tuple[tuple[str, str, str, str], ...] = ()
    attacks: tuple[tuple[str, str, str], ...] = ()
    #: (stage, name, wall, cpu, self_wall, self_cpu, cached) per timed stage, in completion order
    #: (bench/harness/timing.py)
    timings: tuple[tuple, ...] = ()
    started: Optional[float] = None
