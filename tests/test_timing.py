"""Stage timings (issue 18 item 1): the runner records wall and CPU seconds per stage of every cell,
`bench report` shows them, `bench run` projects the remaining time."""

from __future__ import annotations

import time

import pytest
from conftest import store_rows

from bench.harness.runner import projected_left
from bench.harness.timing import StageClock

NONE = {"arch": "mlp", "epochs": 2, "batch_size": 64, "lr": 0.003}
ONE_RUN = {"m": 60}  # fits an audited model through ctx.fit_defense
LIRA = {"n_references": 2, "n_boot": 20}  # fits references through ctx.fit_many


def test_nested_stages_split_own_and_inclusive_time():
    clock = StageClock()
    with clock.stage("attack", "a"):
        time.sleep(0.05)
        with clock.stage("references", "r x2") as f:
            time.sleep(0.1)
            f["cached"] = True
    inner, outer = clock.records
    assert inner.stage == "references" and inner.cached and inner.self_wall == pytest.approx(inner.wall)
    assert outer.wall >= inner.wall + 0.04 and outer.self_wall == pytest.approx(outer.wall - inner.wall, abs=1e-6)
    with pytest.raises(ValueError):
        with clock.stage("lunch", "x"):
            pass


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    from conftest import write_suite

    from bench.harness.runner import run_suite
    from bench.harness.suite import load_suite

    base = tmp_path_factory.mktemp("timing")
    suite = write_suite(base / "s.yaml", seeds=[0], defenses={"none": NONE},
                        attacks={"loss-threshold": {"n_boot": 20}, "lira": LIRA, "one-run-audit": ONE_RUN})
    lines: list[str] = []
    run_suite(load_suite(str(suite)), base / "cold", cache_dir=base / "c", echo=lines.append, progress=False)
    run_suite(load_suite(str(suite)), base / "warm", cache_dir=base / "c", echo=lines.append, progress=False)
    return base, lines


def test_every_stage_is_recorded_and_adds_up(timed_run):
    base, _ = timed_run
    rows = store_rows(base / "cold", "SELECT * FROM timings ORDER BY seq")
    stages = {(r["stage"], r["name"]) for r in rows}
    assert {("fit", "none"), ("attack", "loss-threshold"), ("attack", "lira"), ("attack", "one-run-audit"),
            ("references", "none x2"), ("defense-fit", "none")} <= stages, stages
    wall = store_rows(base / "cold", "SELECT wall_time FROM cells")[0]["wall_time"]
    own = sum(r["self_wall"] for r in rows)
    assert 0 < own <= wall + 1e-6 and own >= 0.5 * wall  # the timed stages are most of the cell
    assert not any(r["cached"] for r in rows if r["stage"] == "fit")
    for r in rows:
        assert 0 <= r["self_wall"] <= r["wall"] + 1e-9 and r["cpu"] >= 0


def test_a_rebuilt_store_on_a_warm_cache_records_cache_hits(timed_run):
    base, _ = timed_run
    rows = store_rows(base / "warm", "SELECT * FROM timings")
    assert rows and all(r["cached"] for r in rows), rows
    assert {r["stage"] for r in rows} == {"fit", "attack"}  # a cached attack runs none of its inner stages


def test_the_report_has_the_timing_tables(timed_run, tmp_path):
    from reports.write import write_report

    base, _ = timed_run
    files = {p.name: p for p in write_report(base / "cold", tmp_path / "r")}
    text = files["timing.md"].read_text()
    assert "all cells (sum)" in text and "references (s)" in text and "defense-fit (s)" in text
    assert "lira (s)" in files["timing-attacks.md"].read_text()
    assert "Where the time went" in files["report.html"].read_text()


def test_projected_remaining_time():
    assert projected_left(60.0, 2, 6) == " (about 2m00s left)"
    assert projected_left(7200.0, 1, 2) == " (about 2h00m left)"
    assert projected_left(10.0, 3, 3) == "" and projected_left(0.0, 0, 3) == ""
