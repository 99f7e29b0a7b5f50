"""Typed method configs: every defense/attack/dataset declares a dataclass ``Config``.

``make_config`` validates a plain mapping (from YAML or ``--set``) against it: unknown keys are
rejected with the list of valid ones, and values are coerced/checked against the annotations.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from bench.core.errors import BenchError, suggest


@dataclasses.dataclass
class EmptyConfig:
    """A method without parameters."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise BenchError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except BenchError as e:  # try the next member of the union
                errors.append(str(e))
        raise BenchError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp in (list, tuple, dict):
        origin = tp
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise BenchError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise BenchError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise BenchError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise BenchError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise BenchError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise BenchError(f"{where}: expected a number, got {value!r}") from None
        if math.isnan(out):
            raise BenchError(f"{where}: NaN is not allowed")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise BenchError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def make_config(cls: type, values: dict | None, where: str) -> Any:
    """Build and validate a config dataclass instance from a mapping."""
    values = dict(values or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        valid = ", ".join(sorted(fields)) or "(none)"
        raise BenchError(
            f"{where}: unknown config key '{unknown[0]}'{suggest(unknown[0], fields)}; valid keys: {valid}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise BenchError(f"{where}: {e}") from None
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def config_dict(cfg: Any) -> dict:
    """The resolved config as a JSON-able dict (defaults included)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})
