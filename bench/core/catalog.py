"""What is registered, read from the source without importing it (``bench list`` in a fraction of
a second instead of the seconds that importing torch and every method takes).

Each built-in method module and each entry-point module is parsed with ``ast``: a class decorated
with ``@register_defense("name")`` / ``@register_attack(...)`` / ``@register_dataset(...)`` gives the
name, its docstring's first line and its literal ``privacy_unit`` / ``kind``. A module where that is
not enough (no literal decorator, a non-literal attribute, a base class other than the API's) is
imported and read from the registry instead, as is a module that registers nothing (a broken plugin
then reports its import error as before). ``tests/test_catalog.py`` checks that the catalogue equals
the imported registry for every built-in and the test plugin.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional

#: the registry's kinds of methods (``bench.core.registry.KINDS`` is this tuple)
KINDS = ("defenses", "attacks", "datasets")
_DECORATORS = {"register_defense": "defenses", "register_attack": "attacks", "register_dataset": "datasets"}
_ATTRIBUTE = {"defenses": ("privacy_unit", "none"), "attacks": ("kind", "membership"), "datasets": (None, None)}
_BASES = {"defenses": {"Defense"}, "attacks": {"Attack"}, "datasets": {"Dataset"}}
_BUILTIN_PACKAGES = {"defenses": "defenses", "attacks": "attacks", "datasets": "bench.lib.datasets"}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    module: str
    doc: str
    #: ``privacy_unit`` of a defense, ``kind`` of an attack, "" for a dataset
    tag: str


def module_file(name: str) -> Optional[str]:
    """The source file of module ``name``, found on the file system without importing anything
    (``importlib.util.find_spec`` of ``pkg.mod`` would import ``pkg``); None for a name that is not
    a module (``pkg.module.Name``) or has no ``.py`` source."""
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, AttributeError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return spec.origin if spec.origin and spec.origin.endswith(".py") else None
    dirs = list(spec.submodule_search_locations or [])
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        nxt = []
        for d in dirs:
            pkg = Path(d) / part
            if (pkg / "__init__.py").is_file():
                if last:
                    return str(pkg / "__init__.py")
                nxt.append(str(pkg))
            elif last and (Path(d) / f"{part}.py").is_file():
                return str(Path(d) / f"{part}.py")
        if not nxt:
            return None
        dirs = nxt
    return None


def _module_path(module: str) -> Optional[Path]:
    f = module_file(module)
    return Path(f) if f else None


def _literal(node) -> Optional[str]:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


_SCANS: dict[tuple, Optional[list]] = {}


def scan(module: str) -> Optional[list[Entry]]:
    """The registrations of ``module`` from its source, or None when the source does not say
    enough (the caller imports the module instead). Memoised per file state (path, mtime, size)."""
    path = _module_path(module)
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    key = (module, str(path), st.st_mtime_ns, st.st_size)
    if key not in _SCANS:
        _SCANS[key] = _scan(module, path)
    return _SCANS[key]


def _scan(module: str, path: Path) -> Optional[list[Entry]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    out = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id in _DECORATORS):
                continue
            kind = _DECORATORS[dec.func.id]
            name = _literal(dec.args[0]) if len(dec.args) == 1 and not dec.keywords else None
            bases = {b.id if isinstance(b, ast.Name) else None for b in node.bases}
            if name is None or not bases <= _BASES[kind]:
                return None
            attr, default = _ATTRIBUTE[kind]
            tag = default or ""
            if attr:
                for stmt in node.body:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                        [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else []
                    if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                        tag = _literal(stmt.value)
                        if tag is None:
                            return None
            doc = ast.get_docstring(node) or ""
            out.append(Entry(kind, name, module, doc.strip().splitlines()[0] if doc.strip() else "", tag))
    return out or None


def _builtin_modules(kind: str) -> list[str]:
    pkg = _BUILTIN_PACKAGES[kind]
    init = module_file(pkg)
    mods = []
    for loc in [Path(init).parent] if init else []:
        for p in sorted(loc.glob("*.py")):
            if not p.stem.startswith("_") and p.stem != "base":
                mods.append(f"{pkg}.{p.stem}")
    return mods


def catalog(registered: Callable[[str], dict[str, type]]) -> tuple[dict[str, dict[str, Entry]], list[str]]:
    """({kind: {name: Entry}}, plugin errors) for the built-ins and the installed plugins.
    ``registered(kind)``: what the registry holds (``bench.core.registry.registered``), read for the
    modules that had to be imported (passed in, so that this module does not import the registry,
    which imports it)."""
    found: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}

    def take(entries: list[Entry]) -> None:
        for e in entries:
            found[e.kind][e.name] = e

    def from_registry(module: str) -> None:
        for kind in KINDS:
            for name, cls in registered(kind).items():
                if cls.__module__ == module:
                    doc = (cls.__doc__ or "").strip()
                    tag = getattr(cls, _ATTRIBUTE[kind][0]) if _ATTRIBUTE[kind][0] else ""
                    found[kind][name] = Entry(kind, name, module, doc.splitlines()[0] if doc else "", tag)

    errors: list[str] = []
    for kind in KINDS:
        for module in _builtin_modules(kind):
            entries = scan(module)
            if entries is None:
                importlib.import_module(module)
                from_registry(module)
            else:
                take(entries)
    for kind in KINDS:
        for ep in entry_points(group=f"bench.{kind}"):
            module = ep.value.split(":")[0]
            entries = scan(module) if ":" not in ep.value else None
            if entries is not None:
                take(entries)
                continue
            try:
                ep.load()
            except Exception as e:  # a broken plugin must not break the harness
                errors.append(f"plugin '{ep.name}' ({ep.value}): {type(e).__name__}: {e}")
                continue
            from_registry(module)
    return found, errors
