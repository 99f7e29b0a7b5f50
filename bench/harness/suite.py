"""Suites: YAML files that declare a grid, and its expansion into cells.

Keys: ``name``, ``description``, ``datasets`` (a list of names, or a mapping name ->
``{protocol: {...}, inversion: {...}}``), ``epsilons``, ``delta``, ``seeds``, ``defenses`` (mapping
name -> config), ``attacks`` (mapping name -> config). A cell is dataset x epsilon x defense x
seed; defenses whose privacy unit is ``none`` are not private and get one cell per dataset and
seed (epsilon = inf) whatever the epsilon grid.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bench.core import registry
from bench.core.config import config_dict, make_config
from bench.core.errors import BenchError, suggest
from bench.core.records import Cell

TOP_KEYS = {"name", "description", "datasets", "epsilons", "delta", "seeds", "defenses", "attacks"}


def suite_dir():
    return resources.files("bench") / "suites"


def suite_names() -> list[str]:
    return sorted(p.name[:-5] for p in suite_dir().iterdir() if p.name.endswith(".yaml"))


#: seeds are bounded so that every derived seed (``seed * 7919 + 11`` and the like) stays inside
#: the 64-bit integers that torch, numpy and SQLite accept
MAX_SEED = 2**32 - 1


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors/aliases: an alias bomb (``&a [*b, *b, ...]``) expands
    exponentially under any key, and no suite needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not allowed in suite files "
                                 f"(line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def safe_yaml(text: str):
    """Parse ``text`` as YAML with the safe loader and no aliases (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def _one_line(msg) -> str:
    return " ".join(str(msg).split())


def _read_yaml(text: str, where: str) -> dict:
    try:
        data = safe_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1}" if mark else ""
        raise BenchError(f"malformed suite file {where}{pos}: {_one_line(getattr(e, 'problem', None) or e)}") from None
    if not isinstance(data, dict):
        raise BenchError(f"malformed suite file {where}: expected a mapping at the top level")
    return data


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BenchError(f"{what} {path} is not UTF-8 text") from None
    except OSError as e:
        raise BenchError(f"cannot read {what} {path}: {e.strerror or e}") from None


def load_suite_file(name_or_path: str) -> tuple[str, dict]:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise BenchError(f"suite file not found: {p}")
        data = _read_yaml(_read_text(p, "suite file"), str(p))
        return data.get("name") or p.stem, data
    names = suite_names()
    if name_or_path not in names:
        raise BenchError(f"unknown suite '{name_or_path}'{suggest(name_or_path, names)}; "
                         f"known: {', '.join(names)} (or give a path to a .yaml file)")
    text = (suite_dir() / f"{name_or_path}.yaml").read_text()
    data = _read_yaml(text, f"{name_or_path}.yaml")
    return data.get("name") or name_or_path, data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set a.b.c=value`` overrides (value parsed as YAML)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise BenchError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise BenchError(f"--set expects key=value, got '{item}'")
        try:
            value = safe_yaml(raw)
        except yaml.YAMLError as e:
            why = " (YAML aliases are not allowed)" if "aliases" in str(e) else ""
            raise BenchError(f"--set {key}: cannot parse value '{_one_line(raw)[:120]}'{why}") from None
        node = data
        for k in parts[:-1]:
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise BenchError(f"--set {key}: '{k}' is not a mapping")
            node = node[k]
        node[parts[-1]] = value
    return data


def _epsilon(v: Any) -> float:
    if isinstance(v, str) and v.strip().lower() in ("inf", "infinity", "∞"):
        return math.inf
    if isinstance(v, bool):
        raise BenchError(f"epsilon must be a positive number, got {v!r}")
    try:
        eps = float(v)
    except (TypeError, ValueError):
        raise BenchError(f"epsilon must be a positive number, got {v!r}") from None
    if math.isnan(eps) or eps <= 0:
        raise BenchError(f"epsilon must be a positive number, got {v!r}")
    return eps


@dataclass
class Suite:
    name: str
    description: str
    datasets: dict[str, dict]
    epsilons: list[float]
    delta: float
    seeds: list[int]
    defenses: dict[str, dict]
    attacks: dict[str, dict]
    raw: dict

    def cells(self) -> list[Cell]:
        out = []
        for ds, ds_cfg in self.datasets.items():
            for variant, dcfg in self.defenses.items():
                dcfg = dict(dcfg)
                dname = dcfg.pop("method", variant)
                private = registry.get_defense(dname).privacy_unit != "none"
                for eps in (self.epsilons if private else [math.inf]):
                    for seed in self.seeds:
                        out.append(Cell(ds, ds_cfg["protocol"], ds_cfg["inversion"], eps, self.delta, dname, dcfg,
                                        self.attacks, seed, variant if variant != dname else None))
        return out


def parse_suite(name: str, data: dict) -> Suite:
    from bench.lib.tasks import ProtocolConfig  # here, not at the top: listing suites needs no torch

    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise BenchError(f"suite '{name}': unknown key '{unknown[0]}'{suggest(unknown[0], TOP_KEYS)}; "
                         f"valid keys: {', '.join(sorted(TOP_KEYS))}")
    for k in ("datasets", "defenses", "seeds"):
        if data.get(k) is None or data.get(k) in ([], {}, ""):
            raise BenchError(f"suite '{name}': '{k}' is required and must not be empty")
    # datasets
    raw_ds = data["datasets"]
    if isinstance(raw_ds, str):
        raw_ds = [raw_ds]
    if isinstance(raw_ds, list):
        raw_ds = {d: {} for d in raw_ds}
    if not isinstance(raw_ds, dict):
        raise BenchError(f"suite '{name}': 'datasets' must be a list or a mapping")
    datasets = {}
    for ds, cfg in raw_ds.items():
        registry.get_dataset(ds)
        cfg = cfg or {}
        if not isinstance(cfg, dict):
            raise BenchError(f"suite '{name}': datasets.{ds} must be a mapping with keys protocol/inversion, "
                             f"got {cfg!r}")
        for part in ("protocol", "inversion"):
            if cfg.get(part) is not None and not isinstance(cfg[part], dict):
                raise BenchError(f"suite '{name}': datasets.{ds}.{part} must be a mapping, got {cfg[part]!r}")
        bad = [k for k in cfg if k not in ("protocol", "inversion")]
        if bad:
            raise BenchError(f"suite '{name}': datasets.{ds}: unknown key '{bad[0]}'; valid keys: inversion, protocol")
        prot = config_dict(make_config(ProtocolConfig, {"kind": "classification", **(cfg.get("protocol") or {})},
                                       f"datasets.{ds}.protocol"))
        inv = config_dict(make_config(ProtocolConfig, {"kind": "inversion", **(cfg.get("inversion") or {})},
                                      f"datasets.{ds}.inversion"))
        datasets[ds] = {"protocol": prot, "inversion": inv}
    # privacy grid
    eps_raw = data.get("epsilons", [1.0])
    if not isinstance(eps_raw, list):
        eps_raw = [eps_raw]
    if not eps_raw:
        raise BenchError(f"suite '{name}': 'epsilons' must not be empty")
    epsilons = [_epsilon(e) for e in eps_raw]
    try:
        delta = float(data.get("delta", 1e-5))
    except (TypeError, ValueError):
        raise BenchError(f"suite '{name}': delta must be a number in (0, 1), got {data.get('delta')!r}") from None
    if not (0 < delta < 1) or math.isnan(delta):
        raise BenchError(f"suite '{name}': delta must be in (0, 1), got {data.get('delta')!r}")
    seeds = data["seeds"] if isinstance(data["seeds"], list) else [data["seeds"]]
    if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds):
        raise BenchError(f"suite '{name}': seeds must be integers in 0..{MAX_SEED}, got "
                         f"{_one_line(repr(seeds))[:200]}")
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"suite '{name}': seeds must be distinct, got {seeds!r}")
    if len(set(epsilons)) != len(epsilons):
        raise BenchError(f"suite '{name}': epsilons must be distinct, got {eps_raw!r}")

    def methods(key: str, getter) -> dict[str, dict]:
        raw = data.get(key) or {}
        if isinstance(raw, list):
            raw = {m: {} for m in raw}
        if not isinstance(raw, dict):
            raise BenchError(f"suite '{name}': '{key}' must be a list or a mapping")
        out = {}
        for m, cfg in raw.items():
            if cfg is not None and not isinstance(cfg, dict):
                raise BenchError(f"suite '{name}': {key}.{m} must be a mapping of parameters")
            cfg = dict(cfg or {})
            method = cfg.pop("method", m)  # an alias: `dpsd-label: {method: dpsd, mode: label}`
            if not isinstance(method, str):
                raise BenchError(f"suite '{name}': {key}.{m}.method must be a registered name")
            cls = getter(method)
            resolved = config_dict(make_config(cls.Config, cfg, f"{key}.{m}"))
            out[m] = {**resolved, "method": method} if method != m else resolved
        return out

    return Suite(name, str(data.get("description", "")), datasets, epsilons, delta, [int(s) for s in seeds],
                 methods("defenses", registry.get_defense), methods("attacks", registry.get_attack), data)


def load_suite(name_or_path: str, overrides: list[str] | None = None) -> Suite:
    name, data = load_suite_file(name_or_path)
    data = apply_overrides(data, overrides or [])
    return parse_suite(name, data)
