"""Typed method configs: every defense/attack/dataset declares a dataclass ``Config``.

``make_config`` validates a plain mapping (from YAML or ``--set``, so values may be strings)
against it with pydantic: unknown keys are rejected with the list of valid ones (and a
did-you-mean), values are coerced/checked against the annotations, and a field whose type is
itself a dataclass is validated recursively from a mapping, with the same checks at every level.
Every failure is one :class:`BenchError` line, ``<where>.<field>[.<nested>...]: <what>``.

Each dataclass is validated through a pydantic ``TypeAdapter`` of a ``TypedDict`` holding only
the keys given (so defaults are the dataclass's own, untouched, and the resolved config is the
same as before); the annotations are mapped onto pydantic types with the benchmark's policy:

- ``int``: integers, integral floats (``3.0``) and integer strings (``"3"``); never a bool.
- ``float``: numbers and numeric strings (``"1e-3"``, ``"inf"``); never a bool; never NaN.
- ``bool``: bools and the strings true/false/yes/no/1/0 (any case); nothing else.
- ``str``: strings only. ``Literal[...]``: one of the values.
- ``list[X]``/``tuple[X, ...]``: a list or tuple (not a string, set or mapping), items checked.
- ``dict``/``dict[K, V]``: any mapping (copied). ``Any`` and other annotations: passed through.
- ``Optional[X]`` takes None; a union tries its members in order (the first that fits wins).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    WrapValidator,
)
from pydantic_core import PydanticCustomError, PydanticKnownError
from typing_extensions import NotRequired, Required, TypedDict

from bench.core.errors import BenchError, suggest


@dataclasses.dataclass
class EmptyConfig:
    """A method without parameters."""


class _Invalid(Exception):
    """A config error at ``loc`` (a path of keys and list indices below the config's root)."""

    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg)
        self.loc, self.msg = tuple(loc), msg


def _located(msg: str, loc: tuple = ()) -> PydanticCustomError:
    """A pydantic error carrying a finished message and the path below the value that raised it."""
    return PydanticCustomError("bench_config", "{msg}", {"msg": msg, "sub": tuple(loc)})


# pydantic error type -> what the value should have been (the message goes on ", got <value>")
_EXPECTED = {
    # (finite_number: an int from inf; floats allow inf)
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float", "int_parsing_size", "finite_number"),
                    "expected an integer"),
    **dict.fromkeys(("float_type", "float_parsing"), "expected a number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "expected true/false"),
    **dict.fromkeys(("string_type", "string_unicode"), "expected a string"),
    **dict.fromkeys(("list_type", "tuple_type", "iterable_type"), "expected a list"),
    **dict.fromkeys(("dict_type", "mapping_type", "dataclass_type"), "expected a mapping"),
}


def _explain(err: dict) -> tuple[tuple, str]:
    """A pydantic error (one entry of ``ValidationError.errors()``) as (path, one-line message)."""
    loc, kind = tuple(err["loc"]), err["type"]
    if kind == "bench_config":
        return loc + tuple(err["ctx"]["sub"]), err["ctx"]["msg"]
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a fixed-length tuple too short
        return loc[:-1], f"expected a list of more items, got {err['input']!r}"
    if kind == "missing" and loc:
        return loc[:-1], f"missing required config key '{loc[-1]}'"
    if kind == "too_long":
        return loc, f"expected a list of at most {err['ctx']['max_length']} items, got {err['input']!r}"
    if kind in _EXPECTED:
        return loc, f"{_EXPECTED[kind]}, got {err['input']!r}"
    return loc, " ".join(str(err["msg"]).split())


def _path(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


# -- the annotation policy ---------------------------------------------------------------------


def _int_not_bool(v):
    if isinstance(v, bool):
        raise PydanticKnownError("int_type")
    return v


def _float_not_bool(v):
    if isinstance(v, bool):
        raise PydanticKnownError("float_type")
    return v


def _not_nan(v: float) -> float:
    if math.isnan(v):
        raise _located("NaN is not allowed")
    return v


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _bool_words(v):
    return _BOOL_WORDS.get(v.lower(), v) if isinstance(v, str) else v


def _list_or_tuple(v):
    if not isinstance(v, (list, tuple)):
        raise PydanticKnownError("list_type")
    return v


def _one_of(allowed: list):
    def check(v, handler):
        try:
            return handler(v)
        except ValidationError:
            raise _located(f"{v!r} is not one of {allowed}") from None

    return check


def _first_member_error(v, handler):
    """A union failed: report its first member's error (pydantic lists one per member, in order,
    each under the member's label), as the coercer did."""
    try:
        return handler(v)
    except ValidationError as e:
        err = e.errors()[0]
        loc, msg = _explain({**err, "loc": tuple(err["loc"])[1:]})
        raise _located(msg, loc) from None


def _nested(cls: type):
    def check(v):
        if isinstance(v, cls):
            _finish(v)
            return v
        if not isinstance(v, Mapping):
            raise PydanticKnownError("dict_type")
        try:
            return _build(cls, v)
        except _Invalid as e:
            raise _located(e.msg, e.loc) from None

    return check


_INT = Annotated[int, BeforeValidator(_int_not_bool)]
_FLOAT = Annotated[float, AfterValidator(_not_nan), BeforeValidator(_float_not_bool)]
_BOOL = Annotated[bool, Strict(), BeforeValidator(_bool_words)]
_STR = Annotated[str, Strict()]


def _schema(tp: Any) -> Any:
    """The pydantic type that checks a value for annotation ``tp`` under the policy above."""
    if tp is Any:
        return Any
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return Annotated[Any, PlainValidator(_nested(tp))]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return Annotated[tp, WrapValidator(_one_of(list(args)))]
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        inner = _schema(members[0]) if len(members) == 1 else Annotated[
            Union[tuple(_schema(m) for m in members)],  # noqa: UP007 (a runtime tuple of members)
            Field(union_mode="left_to_right"), WrapValidator(_first_member_error)]
        return Optional[inner] if len(members) < len(args) else inner
    if tp is list or origin is list:
        return Annotated[list[_schema(args[0]) if args else Any], BeforeValidator(_list_or_tuple)]
    if tp is tuple or origin is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            inner = tuple[_schema(args[0]) if args else Any, ...]
        else:
            inner = tuple[tuple(_schema(a) for a in args)]
        return Annotated[inner, BeforeValidator(_list_or_tuple)]
    if tp is dict or origin is dict:
        return dict[_schema(args[0]), _schema(args[1])] if args else dict[Any, Any]
    return {bool: _BOOL, int: _INT, float: _FLOAT, str: _STR}.get(tp, Any)


@functools.cache
def _adapter(cls: type) -> tuple[TypeAdapter, tuple[str, ...]]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    keys = {}
    for f in fields:
        required = f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        keys[f.name] = (Required if required else NotRequired)[_schema(hints[f.name])]
    values = TypedDict(f"{cls.__qualname__}.values", keys)  # type: ignore[misc]
    values.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return TypeAdapter(values), tuple(f.name for f in fields)


def _first_error(errors: list[dict], values: Mapping) -> dict:
    """The error to report: the first given key's (in the mapping's order), then a missing key."""
    order = {k: i for i, k in enumerate(values)}
    return min(errors, key=lambda e: (e["type"] == "missing",
                                      order.get(e["loc"][0], len(order)) if e["loc"] else -1))


def _finish(cfg: Any) -> None:
    """Call ``validate()`` on a config and (first) on nested configs it holds by default."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name, None)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            _finish(v)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()


def _build(cls: type, values: Mapping) -> Any:
    adapter, names = _adapter(cls)
    unknown = [k for k in values if k not in names]
    if unknown:
        valid = ", ".join(sorted(names)) or "(none)"
        raise _Invalid((), f"unknown config key '{unknown[0]}'{suggest(unknown[0], names)}; valid keys: {valid}")
    try:
        kwargs = adapter.validate_python(dict(values))
    except ValidationError as e:
        raise _Invalid(*_explain(_first_error(e.errors(), values))) from None
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # e.g. an init=False field was given
        raise _Invalid((), str(e)) from None
    for name in names:  # nested configs left at their defaults are checked too
        v = getattr(cfg, name, None)
        if name not in kwargs and dataclasses.is_dataclass(v) and not isinstance(v, type):
            _finish(v)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def make_config(cls: type, values: dict | None, where: str) -> Any:
    """Build and validate a config dataclass instance from a mapping."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls} is not a dataclass")
    try:
        return _build(cls, dict(values or {}))
    except _Invalid as e:
        raise BenchError(f"{where}{_path(e.loc)}: {e.msg}") from None


def config_dict(cfg: Any) -> dict:
    """The resolved config as a JSON-able dict (defaults included)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})
