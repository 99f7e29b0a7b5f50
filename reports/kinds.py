"""What each attack of a run is: its registered method, its kind and its summary metrics.

The kind of an attack (``membership``, ``inversion``, ``generator``, ``audit``;
:data:`bench.core.api.ATTACK_KINDS`) decides which table and plot shows it; its ``summary``
(the class attribute) decides which of its metrics lead the summary table. Reports never guess
them from metric names where the run says what they are:

1. the kind the runner recorded in the store's ``attacks`` table (:meth:`Store.attack_kinds`);
2. for stores written before kinds were recorded: the registered class's ``kind``
   (:func:`bench.core.registry.get_attack` of the method the cell's config names);
3. for an attack the registry does not know (e.g. a plugin no longer installed): the old rule
   on its metric names (:func:`guess_kind`).

:func:`reports.frame.load_frame` puts the result in the frame's ``attack_method`` and
``attack_kind`` columns; :func:`frame_kinds` and :func:`frame_summary` read them back (and
resolve a frame built without them by the attack's name).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from bench.core import registry
from bench.core.errors import BenchError

#: sources of a frame that are the model's own numbers, not an attack's
MODEL_SOURCES = ("utility", "privacy", "inversion-target")
#: the model's own metrics that lead the summary table, before every attack's ``summary``
MODEL_SUMMARY = (("utility", "test_acc"), ("utility", "val_acc"))


def registered(method: str) -> type | None:
    """The registered attack class of ``method``; None when the registry does not know it."""
    try:
        return registry.get_attack(method)
    except BenchError:
        return None


def guess_kind(metrics: Iterable[str]) -> str | None:
    """The kind of an attack no store record or registry entry names, from its metric names:
    ``top1`` -> inversion, ``auc`` -> membership, an ε lower bound -> audit, else None."""
    names = set(metrics)
    if "top1" in names:
        return "inversion"
    if "auc" in names:
        return "membership"
    if names & {"eps_lb", "eps_lb_own_unit"}:
        return "audit"
    return None


def run_attacks(recorded: dict[str, str], cells: list[dict]) -> dict[str, tuple[str, str | None]]:
    """{attack name in the suite: (registered method, kind)} of ``cells`` (store rows), in the
    order the suite lists them. ``recorded``: :meth:`Store.attack_kinds`; an attack without a
    record gets its registered class's kind, None when the registry does not know it either."""
    out: dict[str, tuple[str, str | None]] = {}
    for c in cells:
        for alias, acfg in (json.loads(c["config"]).get("attacks") or {}).items():
            if alias not in out:
                method = (acfg or {}).get("method", alias)
                cls = None if alias in recorded else registered(method)
                out[alias] = (method, recorded.get(alias) or (cls.kind if cls is not None else None))
    for alias, kind in recorded.items():
        out.setdefault(alias, (alias, kind))
    return out


def _attack_sources(df: pd.DataFrame) -> list[str]:
    """The attack sources of ``df`` in the order they first appear (each cell's attacks in the
    order of the suite: the runner writes them so)."""
    return [s for s in dict.fromkeys(df["source"]) if s not in MODEL_SOURCES]


def _first(df: pd.DataFrame, source: str, column: str):
    if column not in df.columns:
        return None
    vals = df.loc[(df.source == source) & df[column].notna(), column]
    return vals.iloc[0] if len(vals) else None


def frame_kinds(df: pd.DataFrame) -> dict[str, str | None]:
    """{attack source of ``df``: its kind}, in order of first appearance: the frame's
    ``attack_kind`` column (:func:`reports.frame.load_frame`); for a frame without it, the
    registered class of the source's name, then :func:`guess_kind`."""
    out = {}
    for s in _attack_sources(df):
        kind = _first(df, s, "attack_kind")
        if kind is None:
            cls = registered(_first(df, s, "attack_method") or s)
            kind = cls.kind if cls is not None else guess_kind(df.loc[df.source == s, "metric"])
        out[s] = kind
    return out


def frame_summary(df: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """{attack source of ``df``: the ``summary`` its registered class declares} (empty for an
    attack the registry does not know), in order of first appearance."""
    out = {}
    for s in _attack_sources(df):
        cls = registered(_first(df, s, "attack_method") or s)
        out[s] = tuple(getattr(cls, "summary", ()) or ()) if cls is not None else ()
    return out


def attacks_of_kind(df: pd.DataFrame, kinds: Iterable[str]) -> list[str]:
    """The attack sources of ``df`` whose kind is one of ``kinds``, in order of first appearance."""
    kinds = set(kinds)
    return [s for s, k in frame_kinds(df).items() if k in kinds]


def summary_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(source, metric) of the summary table's leading columns: the model's test and validation
    accuracy, then each attack's ``summary`` metrics, attacks in the order of the suite."""
    cols = list(MODEL_SUMMARY) + [(s, m) for s, ms in frame_summary(df).items() for m in ms]
    return list(dict.fromkeys(cols))
