"""Code versions: which source a cached result depends on, derived from the import graph.

A release, an attack result or a shared artifact is keyed on the source of the code that made
it: the method's (or the ``build`` callable's) module, every project module it imports,
transitively (found with ``ast``, so nothing is imported to find out), and the modules that load
and cut the cell's dataset (the registered dataset class's module and the task builder's, with
their imports). Harness plumbing -- the core (``bench.core``: API types, registry, config
validation, cache, store), the harness (``bench.harness``), the public API facade and the CLI --
cannot change a number and is never part of a version. No list of modules is kept by hand: a
new dataset loader, library module or plugin package is versioned the moment it is imported.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect

from bench import __version__
from bench.core import registry
from bench.core.catalog import module_file
from bench.core.keys import digest

#: packages whose modules are harness plumbing (prefix match) or exactly these modules
_PLUMBING_PACKAGES = ("bench.core", "bench.harness")
_PLUMBING_MODULES = {"bench", "bench.api", "bench.cli", "bench.__main__"}
_BUILTIN_PACKAGES = ("bench", "attacks", "defenses", "reports")

_FILE_HASHES: dict[str, str] = {}


def is_plumbing(module: str) -> bool:
    return module in _PLUMBING_MODULES or any(module == p or module.startswith(p + ".") for p in _PLUMBING_PACKAGES)


def file_hash(path: str) -> str:
    if path not in _FILE_HASHES:
        try:
            with open(path, "rb") as f:
                _FILE_HASHES[path] = hashlib.sha256(f.read()).hexdigest()[:16]
        except OSError:
            _FILE_HASHES[path] = "missing"
    return _FILE_HASHES[path]


@functools.cache
def _direct_imports(module: str, packages: tuple[str, ...]) -> frozenset:
    """Modules of ``packages`` that ``module``'s source imports (at any depth of its code: a lazy
    import inside a function counts), plumbing excluded."""
    path = module_file(module)
    if path is None:
        return frozenset()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            if n.split(".")[0] in packages and not is_plumbing(n) and module_file(n):
                found.add(n)
    return frozenset(found - {module})


@functools.cache
def project_imports(module: str, packages: tuple[str, ...] = _BUILTIN_PACKAGES) -> frozenset:
    """Modules of ``packages`` that ``module`` imports, transitively, plumbing excluded (a
    traversal, so modules that import each other are fine)."""
    out: set[str] = set()
    todo = [module]
    while todo:
        for n in _direct_imports(todo.pop(), packages):
            if n != module and n not in out:
                out.add(n)
                todo.append(n)
    return frozenset(out)


def clear_caches() -> None:
    """Forget every file hash and import graph read so far (tests that edit sources)."""
    _FILE_HASHES.clear()
    _direct_imports.cache_clear()
    project_imports.cache_clear()


def _packages_for(module: str) -> tuple[str, ...]:
    top = module.split(".")[0]
    return _BUILTIN_PACKAGES if top in _BUILTIN_PACKAGES else (*_BUILTIN_PACKAGES, top)


def module_version(module: str) -> dict:
    """The version of ``module``: its own source and every project module it imports."""
    deps = sorted(project_imports(module, _packages_for(module)))
    return {"own": file_hash(module_file(module) or module),
            "deps": digest({d: file_hash(module_file(d) or d) for d in deps})[:16]}


@functools.cache
def data_version(dataset: str) -> str:
    """The version of the code that loads and cuts ``dataset``: the registered dataset class's
    module and the task builder's, with their imports."""
    from bench.lib.tasks import build_task  # imported here: versioning itself stays torch-free

    mods = {build_task.__module__, registry.get_dataset(dataset).__module__}
    return digest({m: module_version(m) for m in sorted(mods)})[:16]


def code_version(cls: type) -> dict:
    """What code a cached release or attack result of method ``cls`` depends on: its own source
    file, every project module it imports (shared library code such as ``bench/lib/distill``,
    ``bench/lib/models.py``), and the package version. Editing a method or one of its library
    modules invalidates exactly the results that used it."""
    v = module_version(cls.__module__)
    return {"bench": __version__, "method": file_hash(inspect.getsourcefile(cls)), "deps": v["deps"]}


def callable_version(fn) -> dict:
    """The version of a shared artifact's ``build`` callable: the module that defines it (for a
    closure, the module of the function it is written in), with that module's imports."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None) or "unknown"
    return {"bench": __version__, "module": module, **module_version(module)}
