"""What a method implements, and what it gets from the runner.

Defense
    ``fit(ctx) -> Release``: train on ``ctx.task.members`` (or, for data-free methods, on
    nothing private at all), select on ``ctx.task.val``, and release the model(s) together
    with a :class:`PrivacyReport`. The target budget is ``ctx.epsilon`` / ``ctx.delta``.

Attack
    ``run(ctx, release) -> AttackResult``: attack a released model. ``kind`` says what it measures
    (membership, inversion, generator, audit) and so which release it needs: ``inversion`` attacks
    get the inversion-protocol release, the others the classification-protocol release.

A method never caches, stores or parallelises anything itself: it asks the context, and the
runner decides (content-addressed cache, SQLite store, executors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol

import numpy as np
import torch
from torch import nn

from bench.core.config import EmptyConfig

if TYPE_CHECKING:  # the library's Task is only a type here: the core imports nothing above it
    from bench.lib.tasks import Task

#: ``example`` / ``label`` / ``query``: (epsilon, delta)-DP for that neighbouring relation;
#: ``client``: user-level DP of a federated method (add/remove one client's whole data);
#: ``metric``: metric (d_X) privacy, **not** DP (epsilon is per unit of the metric named in
#: ``extra["metric"]``, never comparable with a DP epsilon); ``none``: no guarantee
PRIVACY_UNITS = ("example", "label", "query", "client", "metric", "none")

#: what an attack measures: ``membership`` inference, model ``inversion``, attacks on a released
#: ``generator``, and privacy ``audit`` (epsilon lower bounds)
ATTACK_KINDS = ("membership", "inversion", "generator", "audit")


@dataclass
class PrivacyReport:
    """The privacy claim of a release, always with its delta, accountant and unit.

    ``epsilon`` is math.inf for non-private methods (unit ``none``). ``extra`` holds further
    figures, e.g. the example-level epsilon of a method whose own unit is per query. Unit
    ``metric`` is metric privacy, not DP: its ``extra`` names the metric (``"metric"``) and its
    scale (``"metric_scale"``), and it must never be compared with or ranked against DP claims.

    ``selection`` says how the released model was chosen and whether that choice is inside the
    guarantee: e.g. the last iterate of fixed settings, a checkpoint picked on the validation split
    (rows that are not members, so outside a member-level epsilon, but private data of the owner),
    or DP hyperparameter selection accounted in ``epsilon``.
    """

    epsilon: float
    delta: float
    unit: str
    accountant: str
    mechanism: str = ""
    extra: dict = field(default_factory=dict)
    selection: str = ""

    def __post_init__(self):
        if self.unit not in PRIVACY_UNITS:
            raise ValueError(f"privacy unit must be one of {PRIVACY_UNITS}, got {self.unit!r}")

    @classmethod
    def non_private(cls) -> PrivacyReport:
        return cls(math.inf, 0.0, "none", "none", "none")

    def to_dict(self) -> dict:
        return {"epsilon": None if math.isinf(self.epsilon) else self.epsilon, "delta": self.delta,
                "unit": self.unit, "accountant": self.accountant, "mechanism": self.mechanism,
                "extra": self.extra, "selection": self.selection}

    @classmethod
    def from_dict(cls, d: dict) -> PrivacyReport:
        eps = math.inf if d.get("epsilon") is None else float(d["epsilon"])
        return cls(eps, float(d["delta"]), d["unit"], d["accountant"], d.get("mechanism", ""), d.get("extra", {}),
                   d.get("selection", ""))


def val_selection(what: str) -> str:
    """The ``PrivacyReport.selection`` of a release whose ``what`` (an epoch, a checkpoint, a
    student epoch...) was chosen by accuracy on the task's validation split."""
    return (f"{what} chosen by accuracy on the validation split: rows of the private dataset that are not "
            "members, so outside a member-level epsilon, but a use of private data that no epsilon here accounts")


#: ``PrivacyReport.selection`` of a release that makes no choice on any split
LAST_ITERATE = "last iterate of fixed settings (no selection on any split)"


@dataclass
class Release:
    """What a defense publishes: named modules (``model`` is the classifier every attack
    targets; ``generator`` etc. are optional), their architecture specs (to rebuild them from
    the cache), the privacy claim, and JSON-able training info (curves, selected epoch...)."""

    modules: dict[str, nn.Module]
    archs: dict[str, dict]
    privacy: PrivacyReport
    info: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.modules["model"]

    def to(self, device) -> Release:
        for m in self.modules.values():
            m.to(device)
        return self


@dataclass
class AttackResult:
    """Scores with membership labels (membership attacks), metrics, and artifacts.

    ``arrays`` are kept with the result (e.g. ``scores``, ``labels`` for ROC curves; ``images``
    for inversion grids) and cached as .npz; ``metrics`` are floats stored in the run store.
    """

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FitRequest:
    """One release for :meth:`Context.fit_many`: ``defense`` with ``config`` trained on the dataset
    rows ``member_rows`` (drawn from ``task.candidate_pool()``), named ``tag`` (part of the derived
    task's fingerprint); ``epsilon`` and ``seed`` default to the cell's."""

    defense: str
    config: Optional[dict]
    member_rows: tuple[int, ...]
    tag: str
    epsilon: Optional[float] = None
    seed: Optional[int] = None

    @classmethod
    def of(cls, r: FitRequest | dict) -> FitRequest:
        if isinstance(r, FitRequest):
            return r
        return cls(r["defense"], r.get("config"), tuple(int(i) for i in r["member_rows"]), str(r["tag"]),
                   r.get("epsilon"), r.get("seed"))


class Context(Protocol):
    """The runner's side of a cell, as seen by a method."""

    task: Task
    epsilon: float
    delta: float
    seed: int
    device: torch.device
    dataset_config: dict
    #: the defense (name and resolved config) of the cell: attacks train reference/shadow models
    #: "with the same defense, config and epsilon as the target" through these
    defense: str
    defense_config: dict
    #: where the raw datasets are read from (methods that load a second dataset, e.g. TL-DMI's
    #: public partner, load it from here)
    data_root: str

    def task_for(self, kind: str, seed: Optional[int] = None, protocol: Optional[dict] = None) -> Task:
        """The cell dataset's task under the suite's ``protocol`` (kind ``classification``) or
        ``inversion`` config, cut with ``seed`` (default: the cell's); with ``protocol``, under that
        explicit protocol config instead (e.g. an inversion judge's own classification protocol)."""

    def fit_defense(self, name: str, config: Optional[dict] = None, *, task: Optional[Task] = None,
                    epsilon: Optional[float] = None, seed: Optional[int] = None) -> Release:
        """A (cached) release of another defense, e.g. the non-private teacher of ``none``."""

    def fit_many(self, requests: list[FitRequest | dict]) -> list[Release]:
        """Fit several (cached) releases, in parallel when the run has ``--jobs`` to spare
        (:class:`FitRequest`, or a dict with its fields)."""

    def artifact(self, kind: str, key: dict, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A (cached, shared) artifact: ``build`` returns a dict of tensors/arrays/JSON values,
        built once per ``(kind, key)`` across cells, processes and runs. The harness adds the
        version of the code that builds it (the source of the module that defines ``build`` and
        of the project modules it imports) and of the dataset's loader to the key: ``key`` holds
        only the data and settings (config, seeds, fingerprints), never source hashes."""

    def progress(self, iterable, **kwargs): ...

    def log(self, message: str) -> None: ...


class Defense:
    """Base class of defenses. Set ``Config`` (a dataclass) and ``privacy_unit``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    #: the neighbouring relation of the method's own guarantee: example | label | query | none, or
    #: ``metric`` for metric privacy (not DP)
    privacy_unit: ClassVar[str] = "none"
    #: one-line citation of the method's paper
    paper: ClassVar[str] = ""

    def __init__(self, config):
        self.config = config

    def fit(self, ctx: Context) -> Release:  # pragma: no cover - abstract
        raise NotImplementedError


class Attack:
    """Base class of attacks. Set ``Config`` (a dataclass), ``kind`` (one of :data:`ATTACK_KINDS`)
    and ``metrics`` (the names of the floats ``run`` reports; the report's summary columns are the
    ``summary`` subset of them). The store records the kind and reports read it from there."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    kind: ClassVar[str] = "membership"
    #: metric names the attack emits (documentation and report columns; a run may add more)
    metrics: ClassVar[tuple[str, ...]] = ()
    #: the metrics shown in the report's summary table, most important first
    summary: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""

    @classmethod
    def protocol(cls) -> str:
        """The task protocol whose release the attack gets: ``inversion`` attacks get the
        inversion-protocol release (private and public classes apart), every other kind the
        classification-protocol release."""
        return "inversion" if cls.kind == "inversion" else "classification"

    def __init__(self, config):
        self.config = config

    def run(self, ctx: Context, release: Release) -> AttackResult:  # pragma: no cover - abstract
        raise NotImplementedError
