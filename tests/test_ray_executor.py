"""The Ray executor (``bench run --executor ray``) against a local Ray instance: the same suite and
seeds give the same table as the local executor, reference models run as nested Ray tasks, and
the driver (not the Ray workers) writes the store.

One Ray session (``ray.init(num_cpus=2)``) serves the whole module; Ray's start-up costs seconds.
Skipped when ``ray`` is not installed, except in CI (``CI=true``), where ``.ci/run`` installs the
``ray`` extra and a missing Ray is a failure.
"""

from __future__ import annotations

import os

import pytest
from conftest import metric_table, store_rows, write_suite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ray is not installed but CI=true: .ci/run must install the 'ray' extra")
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _table(run_dir):
    """The report's summary table and every stored number except wall-clock times."""
    from reports.frame import load_frame
    from reports.tables import display_table, summary_table

    disp = display_table(summary_table(load_frame(run_dir)))
    values = {k: v for k, v in metric_table(run_dir).items() if not k[-1].endswith("_seconds")}
    return disp.to_dict("records"), values


def _run(suite_path, out, cache, executor):
    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    lines = []
    res = run_suite(load_suite(str(suite_path)), out, cache_dir=cache, echo=lines.append, progress=False,
                    executor=executor)
    assert res["failed"] == 0, "\n".join(lines)
    return res, lines


def test_smoke_suite_under_ray_gives_the_local_table(ray_session, tmp_path, monkeypatch):
    from bench.harness import runner

    calls = {"execute_cell": 0}
    real = runner.execute_cell

    def spy(job):  # the driver must record Ray results itself, never through execute_cell
        calls["execute_cell"] += 1
        return real(job)

    local, _ = _run("smoke", tmp_path / "local", tmp_path / "cache-local", "local")
    monkeypatch.setattr(runner, "execute_cell", spy)
    # a fresh cache: the Ray run recomputes everything rather than reading the local results
    res, lines = _run("smoke", tmp_path / "ray", tmp_path / "cache-ray", "ray")
    assert res["done"] == local["done"] == 2 and calls["execute_cell"] == 0
    assert "executor: ray" in lines[0]
    ours, theirs = _table(tmp_path / "ray"), _table(tmp_path / "local")
    assert ours[1] and ours[1] == theirs[1]
    assert ours[0] == theirs[0]
    # resuming under Ray skips the finished cells
    again, _ = _run("smoke", tmp_path / "ray", tmp_path / "cache-ray", "ray")
    assert again["skipped"] == 2 and again["done"] == 0


def test_reference_models_run_as_ray_tasks(ray_session, tmp_path):
    """RMIA's reference models are fitted through ``ctx.fit_many``: under Ray each one is a task
    (logged by the cell); the numbers equal the local executor's."""
    suite = write_suite(tmp_path / "refs.yaml", seeds=[0], defenses={"none": {"arch": "mlp", "epochs": 2,
                                                                            "batch_size": 64, "lr": 0.003}},
                        attacks={"rmia": {"n_references": 2}})
    _run(suite, tmp_path / "local", tmp_path / "cache-local", "local")
    _run(suite, tmp_path / "ray", tmp_path / "cache-ray", "ray")
    import json

    logs = json.loads(store_rows(tmp_path / "ray", "SELECT info FROM cells")[0]["info"])["logs"]
    assert any("as Ray tasks" in ln for ln in logs), logs
    assert _table(tmp_path / "ray") == _table(tmp_path / "local")


def test_ray_executor_without_ray_is_one_line_error(cli, monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, out, err = cli("run", "--suite", "smoke", "--out", tmp_path / "r", "--executor", "ray")
    assert code == 2 and err.count("\n") == 1 and "pip install 'privacy-bench[ray]'" in err, err
    assert not (tmp_path / "r" / "results.sqlite").exists()


def test_address_without_ray_executor_is_a_user_error(cli, tmp_path):
    code, out, err = cli("run", "--suite", "smoke", "--out", tmp_path / "r", "--address", "auto")
    assert code == 2 and "--executor ray" in err and "Traceback" not in err
