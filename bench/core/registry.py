"""The method registry: ``@register_defense``, ``@register_attack``, ``@register_dataset``.

A new method is one file and one decorator. Built-in methods live in the ``defenses``,
``attacks`` and ``bench.lib.datasets`` packages and are imported on first lookup; third-party
methods are found through the entry-point groups ``bench.defenses``, ``bench.attacks`` and
``bench.datasets`` (each entry point names a module or object to import; importing it runs the
decorator).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from bench.core.catalog import KINDS, catalog
from bench.core.errors import BenchError, suggest

_REGISTRY: dict[str, dict[str, type]] = {k: {} for k in KINDS}
_LOADED = False
_PLUGIN_ERRORS: list[str] = []

_BUILTIN_PACKAGES = {"defenses": "defenses", "attacks": "attacks", "datasets": "bench.lib.datasets"}


def _register(kind: str, name: str):
    def deco(cls):
        if name in _REGISTRY[kind] and _REGISTRY[kind][name] is not cls:
            other = _REGISTRY[kind][name]
            if f"{other.__module__}.{other.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
                raise ValueError(f"{kind[:-1]} '{name}' is registered twice ({other} and {cls})")
        if kind == "attacks":
            from bench.core.api import ATTACK_KINDS

            if getattr(cls, "kind", None) not in ATTACK_KINDS:
                raise ValueError(f"attack '{name}' declares kind {getattr(cls, 'kind', None)!r}; "
                                 f"one of {', '.join(ATTACK_KINDS)} is required")
        cls.name = name
        _REGISTRY[kind][name] = cls
        return cls

    return deco


def register_defense(name: str):
    """Class decorator: register a :class:`bench.api.Defense` under ``name``."""
    return _register("defenses", name)


def register_attack(name: str):
    """Class decorator: register a :class:`bench.api.Attack` under ``name``."""
    return _register("attacks", name)


def register_dataset(name: str):
    """Class decorator: register a :class:`bench.lib.datasets.base.Dataset` under ``name``."""
    return _register("datasets", name)


def load_all() -> None:
    """Import the built-in method packages and the installed plugins (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for kind, pkg_name in _BUILTIN_PACKAGES.items():
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_") and mod.name != "base":
                importlib.import_module(f"{pkg_name}.{mod.name}")
        del kind
    for kind in KINDS:
        for ep in entry_points(group=f"bench.{kind}"):
            try:
                ep.load()
            except Exception as e:  # a broken plugin must not break the harness
                _PLUGIN_ERRORS.append(f"plugin '{ep.name}' ({ep.value}): {type(e).__name__}: {e}")


def plugin_errors() -> list[str]:
    load_all()
    return list(_PLUGIN_ERRORS)


def registered(kind: str) -> dict[str, type]:
    """What is registered so far, without loading anything more."""
    return dict(_REGISTRY[kind])


def names(kind: str) -> list[str]:
    load_all()
    return sorted(_REGISTRY[kind])


_HINTS: dict[str, dict] = {}


def _import_one(kind: str, name: str) -> None:
    """Import only the module that registers ``name`` (found once per process by
    :mod:`bench.core.catalog` in the sources), so that a suite naming three methods does not import
    all of them. Only a hint: a name it does not place falls back to :func:`load_all`."""
    if not _HINTS:
        _HINTS.update(catalog(registered)[0])
    entry = _HINTS.get(kind, {}).get(name)
    if entry is not None:
        try:
            importlib.import_module(entry.module)
        except Exception:  # noqa: BLE001 - load_all reports a broken plugin the usual way
            pass


def get(kind: str, name: str) -> type:
    if name not in _REGISTRY[kind] and not _LOADED:
        _import_one(kind, name)
    if name not in _REGISTRY[kind]:
        load_all()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise BenchError(
            f"unknown {kind[:-1]} '{name}'{suggest(name, _REGISTRY[kind])}; "
            f"known: {', '.join(sorted(_REGISTRY[kind]))}"
        ) from None


def get_defense(name: str) -> type:
    return get("defenses", name)


def get_attack(name: str) -> type:
    return get("attacks", name)


def get_dataset(name: str) -> type:
    return get("datasets", name)
