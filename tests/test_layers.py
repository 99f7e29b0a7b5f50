"""The layer contract (``.importlinter``, docs/architecture.md) holds, and the checker has power:
it fails on a method importing another method, on the core importing the library, and on a cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"


def lint_imports(cwd: Path, pythonpath: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, str(CONFIG), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": pythonpath}, timeout=300)


def test_the_project_keeps_every_contract():
    r = lint_imports(ROOT, str(ROOT))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and r.stdout.count("KEPT") >= 5


def _skeleton(tmp: Path) -> Path:
    """A minimal tree with the project's package names and layers, every contract kept."""
    files = {
        "bench/__init__.py": "", "bench/__main__.py": "import bench.cli\n", "bench/cli.py": "import reports.write\n",
        "bench/api.py": "import bench.core.api\n", "bench/core/__init__.py": "", "bench/core/api.py": "",
        "bench/harness/__init__.py": "", "bench/harness/runner.py": "import bench.lib.tasks\n",
        "bench/lib/__init__.py": "", "bench/lib/tasks.py": "import bench.core.api\n",
        "attacks/__init__.py": "", "attacks/a.py": "import bench.api\nimport bench.lib.tasks\n",
        "defenses/__init__.py": "", "defenses/d.py": "import bench.api\n",
        "reports/__init__.py": "", "reports/frame.py": "import bench.core.api\n", "reports/write.py": "import reports.frame\n",
    }
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return tmp


def test_the_skeleton_passes(tmp_path):
    root = _skeleton(tmp_path)
    r = lint_imports(root, str(root))
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.parametrize("path,text,broken", [
    ("attacks/a.py", "import bench.api\nimport defenses.d\n", "No method imports another method"),
    ("defenses/d.py", "import bench.harness.runner\n", "Methods use only the public API"),
    ("bench/core/api.py", "import bench.lib.tasks\n", "Layers"),
    ("reports/frame.py", "import attacks.a\n", "Reports read the store"),
    ("reports/frame.py", "import reports.write\n", "No import cycles"),
])
def test_each_violation_is_caught(tmp_path, path, text, broken):
    root = _skeleton(tmp_path)
    (root / path).write_text(text)
    r = lint_imports(root, str(root))
    assert r.returncode != 0
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(broken)]
    assert line and line[0].rstrip().endswith("BROKEN"), r.stdout[-3000:]
