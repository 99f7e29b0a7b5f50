"""`bench list` reads the registry from the sources (bench/core/catalog.py): it must say exactly
what importing every method says, and fall back to importing where the source does not say enough."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from bench.core import registry
from bench.core.catalog import catalog, scan

_ATTR = {"defenses": "privacy_unit", "attacks": "kind", "datasets": None}


def test_the_catalogue_equals_the_imported_registry():
    found, errors = catalog(registry.registered)
    registry.load_all()
    assert not errors
    for kind in registry.KINDS:
        builtin = {n: c for n, c in registry.registered(kind).items()
                   if c.__module__.split(".")[0] in ("defenses", "attacks", "bench")}
        assert set(builtin) <= set(found[kind]), (kind, set(builtin) - set(found[kind]))
        for name, cls in builtin.items():
            e = found[kind][name]
            doc = (cls.__doc__ or "").strip()
            assert e.module == cls.__module__ and e.doc == (doc.splitlines()[0] if doc else "")
            assert e.tag == (getattr(cls, _ATTR[kind]) if _ATTR[kind] else ""), (kind, name)


def test_listing_imports_neither_torch_nor_a_method():
    """(The method packages' own ``__init__`` files are found on the way; no method module is.)"""
    code = ("import sys; from bench.cli import main; main(['list']); "
            "bad = [m for m in sys.modules if m == 'torch' or m.split('.')[0] in ('defenses', 'attacks') and '.' in m]; "
            "print('IMPORTED', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "IMPORTED []" in out, out[-500:]
    assert "dpsd" in out and "unit=query" in out and "kind=inversion" in out


def test_resolving_every_method_imports_only_torch_of_the_heavy_libraries(tmp_path):
    """A first dry run (no memo yet) imports every method module of the largest suite: the
    libraries only some stages use (scikit-learn, SciPy, torchvision, pandas, matplotlib, LPIPS,
    kymatio) are imported where they are used, so the start-up pays for torch alone."""
    heavy = ("sklearn", "scipy", "torchvision", "pandas", "matplotlib", "lpips", "kymatio")
    code = ("import sys; from bench.cli import main; rc = main(['run', '--suite', 'mnist-eps1-full', '--dry-run']); "
            f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})); "
            "print('RC', rc, 'IMPORTED', bad, 'TORCH', 'torch' in sys.modules)")
    env = {**os.environ, "BENCH_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env).stdout
    assert "RC 0 IMPORTED [] TORCH True" in out, out[-800:]


def test_what_the_source_cannot_say_is_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "catpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "literal.py").write_text(textwrap.dedent('''
        from bench.api import Attack, register_attack

        @register_attack("cat-literal")
        class A(Attack):
            """A literal attack."""
            kind = "audit"
    '''))
    (pkg / "computed.py").write_text(textwrap.dedent('''
        from bench.api import Attack, register_attack

        KIND = "generator"

        @register_attack("cat-computed")
        class B(Attack):
            """A computed kind."""
            kind = KIND
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    (lit,) = scan("catpkg.literal")
    assert (lit.name, lit.tag, lit.doc) == ("cat-literal", "audit", "A literal attack.")
    assert scan("catpkg.computed") is None  # the caller imports it
    assert scan("catpkg") is None and scan("no_such_module_here") is None
