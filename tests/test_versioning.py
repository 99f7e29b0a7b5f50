"""Code versions are derived by the harness (bench/harness/versioning.py): a method's results are
keyed on its own source, the library code it imports and the dataset loader, never on harness
plumbing; a shared artifact on the module that builds it. No method hashes sources itself."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from bench.harness import versioning as V


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """A throw-away plugin package: ``vpkg.helper`` (library code), ``vpkg.method`` (a defense
    importing it) and ``vpkg.other`` (a module the method does not import)."""
    root = tmp_path / "vpkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "helper.py").write_text("SCALE = 1.0\n\ndef build():\n    return {'x': SCALE}\n")
    (root / "other.py").write_text("UNUSED = 0\n")
    (root / "method.py").write_text(textwrap.dedent("""
        from bench.api import Defense
        from vpkg import helper

        class M(Defense):
            privacy_unit = "none"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    def fresh():
        V.clear_caches()
        for m in [m for m in sys.modules if m == "vpkg" or m.startswith("vpkg.")]:
            del sys.modules[m]
        importlib.invalidate_caches()
        return importlib.import_module("vpkg.method")

    yield root, fresh
    V.clear_caches()


def test_editing_an_imported_library_module_changes_the_version(pkg):
    root, fresh = pkg
    before = V.code_version(fresh().M)
    (root / "other.py").write_text("UNUSED = 1\n")
    assert V.code_version(fresh().M) == before, "a module the method does not import is not part of it"
    (root / "helper.py").write_text("SCALE = 2.0\n\ndef build():\n    return {'x': SCALE}\n")
    after = V.code_version(fresh().M)
    assert after["deps"] != before["deps"] and after["method"] == before["method"]


def test_editing_the_method_changes_its_own_hash(pkg):
    root, fresh = pkg
    before = V.code_version(fresh().M)
    (root / "method.py").write_text((root / "method.py").read_text() + "\n# an edit\n")
    assert V.code_version(fresh().M)["method"] != before["method"]


def test_an_artifact_is_keyed_on_the_module_that_builds_it(pkg):
    root, fresh = pkg
    fresh()
    helper = importlib.import_module("vpkg.helper")
    v1 = V.callable_version(helper.build)
    assert v1["module"] == "vpkg.helper"
    (root / "helper.py").write_text("SCALE = 3.0\n\ndef build():\n    return {'x': SCALE}\n")
    fresh()
    helper = importlib.import_module("vpkg.helper")
    assert V.callable_version(helper.build)["own"] != v1["own"]


def test_modules_that_import_each_other_are_versioned_without_recursion(pkg):
    root, fresh = pkg
    # helper imports method lazily, method imports helper: a cycle (the traversal used to recurse
    # until RecursionError, a traceback instead of a version)
    (root / "helper.py").write_text("SCALE = 1.0\n\ndef build():\n    from vpkg import method\n    return {'x': SCALE}\n")
    deps = V.project_imports("vpkg.method", ("bench", "vpkg"))
    assert "vpkg.helper" in deps and "vpkg.method" not in deps
    before = V.code_version(fresh().M)
    (root / "helper.py").write_text("SCALE = 2.0\n\ndef build():\n    from vpkg import method\n    return {'x': SCALE}\n")
    assert V.code_version(fresh().M)["deps"] != before["deps"]


def test_builtin_methods_depend_on_the_library_not_on_plumbing():
    deps = V.project_imports("defenses.dpsd")
    assert any(d.startswith("bench.lib.distill") for d in deps) and "bench.lib.models" in deps
    assert not [d for d in deps if V.is_plumbing(d)], deps
    assert V.is_plumbing("bench.core.cache") and V.is_plumbing("bench.harness.runner") and V.is_plumbing("bench.api")
    assert not V.is_plumbing("bench.lib.train")


def test_the_dataset_loader_is_part_of_the_data_version(monkeypatch):
    from bench.core import registry

    assert V.data_version("digits") != V.data_version("mnist")
    digits_file = V.module_file(registry.get_dataset("digits").__module__)
    before = V.data_version("digits")
    V.data_version.cache_clear()
    monkeypatch.setitem(V._FILE_HASHES, digits_file, "edited")
    try:
        assert V.data_version("digits") != before
    finally:
        V.data_version.cache_clear()
        V._FILE_HASHES.pop(digits_file, None)
