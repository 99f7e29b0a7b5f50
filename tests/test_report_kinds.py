"""Reports find an attack's kind and summary columns in the run, not in its metric names (issue 16).

* a new attack that declares its ``kind`` and ``summary`` gets its columns in the summary, the
  membership and the inversion table, with no change to ``reports/``;
* the kind recorded in the store wins over metric names (an audit that reports an AUC is not a
  membership attack);
* a store written before kinds were recorded (no ``attacks`` rows) reports exactly as one with them:
  kinds from the registry, and for an attack the registry does not know, from its metric names;
* every built-in attack declares the metrics it emits, its ``summary`` among them.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from bench.core.api import Attack

#: a membership attack and an inversion attack that the reports have never heard of
FAKE_MIA, FAKE_INV, FAKE_AUDIT = "test-kinds-mia", "test-kinds-inv", "test-kinds-audit"


@pytest.fixture
def fake_attacks(monkeypatch):
    """Three attacks registered for one test (the registry is restored afterwards)."""
    from bench.core import registry

    registry.load_all()
    monkeypatch.setitem(registry._REGISTRY, "attacks", dict(registry._REGISTRY["attacks"]))

    class FakeMIA(Attack):
        kind = "membership"
        metrics = ("auc", "tpr_at_1%fpr", "power_at_5%fpr")
        summary = ("power_at_5%fpr", "auc")

    class FakeInversion(Attack):
        kind = "inversion"
        metrics = ("top1", "recall_of_faces")
        summary = ("recall_of_faces",)

    class FakeAudit(Attack):
        kind = "audit"
        metrics = ("eps_lb", "auc")  # a canary AUC: not a membership attack for all that

    for name, cls in ((FAKE_MIA, FakeMIA), (FAKE_INV, FakeInversion), (FAKE_AUDIT, FakeAudit)):
        registry.register_attack(name)(cls)
    return {FAKE_MIA: "membership", FAKE_INV: "inversion", FAKE_AUDIT: "audit"}


def write_run(run_dir: Path, attacks: dict[str, tuple[str, str, list[tuple[str, float]]]], *,
              record_kinds: bool = True, seeds=(0, 1)) -> Path:
    """A finished run through the Store API: defenses none (ε=∞) and dpsgd (ε=1) x ``seeds``.
    ``attacks``: {name in the suite: (registered method, kind, [(metric, value)])}; the kinds go
    to the store's ``attacks`` table unless ``record_kinds`` is False (a store of before)."""
    from bench.core.store import Store, provenance

    store = Store(run_dir)
    store.start_run("r", "kinds", {}, ["bench", "run"], provenance("cpu"))
    for defense, eps, unit in (("none", None, "none"), ("dpsgd", 1.0, "example")):
        for seed in seeds:
            config = {name: ({} if method == name else {"method": method}) for name, (method, _, _) in attacks.items()}
            cell = {"dataset": "mnist", "protocol": {}, "inversion": {}, "epsilon": float("inf") if eps is None else eps,
                    "delta": 1e-5, "defense": defense, "defense_config": {}, "attacks": config, "seed": seed}
            privacy = {"epsilon": eps, "delta": 1e-5 if eps else None, "unit": unit,
                       "accountant": "RDP (Opacus)" if eps else "none"}
            metrics = [("utility", "test_acc", 0.95 - 0.1 * bool(eps) - 0.01 * seed), ("utility", "val_acc", 0.94),
                       ("utility", "fit_seconds", 1.0)] + ([("privacy", "epsilon_spent", eps)] if eps else [])
            for name, (_, _, values) in attacks.items():
                metrics += [(name, m, v + 0.01 * seed) for m, v in values]
            store.record_cell(cell_key=f"{defense}-{seed}", run_id="r", cell=cell, status="done", split={},
                              privacy=privacy, info={}, error=None, wall_time=1.0, device="cpu",
                              prov=provenance("cpu"), metrics=metrics, artifacts=[],
                              attacks=[(n, m, k) for n, (m, k, _) in attacks.items()] if record_kinds else [])
    store.finish_run("r", "done")
    store.close()
    return run_dir


def _header(md: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith("| "))
    return [c.strip() for c in line.strip("|").split("|")]


def _column(md: str, column: str) -> dict[str, str]:
    """{attack (or defense): cell} of one column of a Markdown table."""
    head = _header(md)
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")][1:]
    key = head.index("attack") if "attack" in head else head.index("defense")
    return {f"{r[head.index('defense')]}/{r[key]}": r[head.index(column)] for r in rows}


def _report(run: Path) -> Path:
    from reports.write import write_report

    write_report(run)
    return run / "report"


def test_a_new_attack_gets_its_columns_without_a_change_to_reports(tmp_path, fake_attacks):
    """The fake attacks run under suite aliases: the method comes from the cell's config, the kind
    from the store, the summary from the registered class."""
    run = write_run(tmp_path / "run", {
        "my-mia": (FAKE_MIA, "membership", [("auc", 0.61), ("tpr_at_1%fpr", 0.03), ("power_at_5%fpr", 0.2)]),
        "my-inv": (FAKE_INV, "inversion", [("top1", 0.4), ("recall_of_faces", 0.7)]),
        "my-audit": (FAKE_AUDIT, "audit", [("eps_lb", 0.5), ("auc", 0.9)]),
    })
    out = _report(run)
    summary = (out / "summary.md").read_text()
    head = _header(summary)
    # the model's accuracies, then each attack's declared summary, in its declared order
    assert head[5:10] == ["test acc (%)", "val acc (%)", "my-mia: power_at_5%fpr", "my-mia: AUC",
                          "my-inv: recall_of_faces"], head
    assert _column(summary, "my-mia: power_at_5%fpr")["none/none"] == "0.205 ± 0.007"
    membership = (out / "membership.md").read_text()
    assert {"AUC", "TPR@1%FPR (%)", "power_at_5%fpr"} <= set(_header(membership))
    assert _column(membership, "power_at_5%fpr") == {"none/my-mia": "0.205 ± 0.007", "dpsgd/my-mia": "0.205 ± 0.007"}
    assert "my-audit" not in membership and "my-inv" not in membership  # kinds, not metric names
    inversion = (out / "inversion.md").read_text()
    assert "recall_of_faces" in _header(inversion)
    assert _column(inversion, "recall_of_faces") == {"none/my-inv": "0.705 ± 0.007", "dpsgd/my-inv": "0.705 ± 0.007"}
    assert "my-mia" not in inversion
    study = (out / "study.md").read_text()
    assert {"my-mia: power_at_5%fpr", "my-mia: AUC", "my-inv: attack acc top-1 (%)"} <= set(_header(study))


def test_recorded_kind_wins_over_metric_names(tmp_path, fake_attacks):
    """The store records 'audit' for an attack reporting an AUC, and 'membership' for one the
    registry does not know: the tables follow the record."""
    from reports.frame import load_frame
    from reports.kinds import frame_kinds
    from reports.tables import membership_table

    run = write_run(tmp_path / "run", {
        "canaries": (FAKE_AUDIT, "audit", [("eps_lb", 0.5), ("auc", 0.9)]),
        "retired": ("no-such-attack", "membership", [("balanced_acc", 0.55)]),
    }, seeds=(0,))
    df = load_frame(run)
    assert frame_kinds(df) == {"canaries": "audit", "retired": "membership"}
    assert set(membership_table(df).display["attack"]) == {"retired"}


def _kinds(run: Path) -> dict[str, str]:
    from reports.frame import load_frame

    df = load_frame(run)
    return df.drop_duplicates("source").set_index("source")["attack_kind"].dropna().to_dict()


def _page(path: Path, run: Path) -> str:
    """report.html without what differs between two runs of the same numbers: the run directory's
    name and path, when the run started and when the page was rendered."""
    text = path.read_text().replace(str(run), "RUN").replace(f": {run.name}<", ": RUN<")
    return re.sub(r"(last started|rendered) [0-9-]+ [0-9:]+", r"\1", text)


def _strip_kinds(run: Path) -> None:
    """Make ``run`` a store of before kinds were recorded: no ``attacks`` table at all."""
    con = sqlite3.connect(run / "results.sqlite")
    con.execute("DROP TABLE attacks")
    con.commit()
    con.close()


def test_a_store_without_recorded_kinds_reports_as_before(tmp_path):
    """loss-threshold and gmi (built in: their registered kinds) and an attack no registry knows
    (its metric names: AUC -> membership): the same tables, figures and page with and without the
    store's ``attacks`` rows."""
    from bench.core.store import Store

    attacks = {"loss-threshold": ("loss-threshold", "membership", [("auc", 0.55), ("tpr_at_1%fpr", 0.02),
                                                                   ("eps_lb", 0.1), ("n_members", 100.0)]),
               "rmia": ("rmia", "membership", [("auc", 0.58), ("tpr_at_1%fpr", 0.03), ("eps_lb", 0.2),
                                               ("n_references", 2.0)]),
               "retired-mia": ("retired-mia", "membership", [("auc", 0.52), ("balanced_acc", 0.51)]),
               "gmi": ("gmi", "inversion", [("top1", 0.4), ("knn_dist", 12.0), ("fid", 80.0)])}
    new = write_run(tmp_path / "new", attacks)
    old = write_run(tmp_path / "old", attacks, record_kinds=False)
    _strip_kinds(old)
    store = Store(old, create=False)  # opening it creates the table, empty
    assert store.attack_kinds() == {}
    store.close()
    assert _kinds(old) == _kinds(new) == {"loss-threshold": "membership", "rmia": "membership",
                                        "retired-mia": "membership", "gmi": "inversion"}
    a, b = _report(new), _report(old)
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert {"membership.md", "inversion.md", "study.md", "plots/leakage_vs_eps_mnist.png"} <= set(names)
    for name in names:
        if name == "report.html":
            assert _page(a / name, new) == _page(b / name, old)
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    summary = _header((a / "summary.md").read_text())
    assert summary[5:12] == ["test acc (%)", "val acc (%)", "loss-threshold: AUC", "loss-threshold: TPR@1%FPR (%)",
                             "rmia: AUC", "rmia: TPR@1%FPR (%)", "rmia: ε̂ lower bound (95 %)"], summary
    membership = (a / "membership.md").read_text()
    assert {r.split("/")[1] for r in _column(membership, "AUC")} == {"loss-threshold", "retired-mia", "rmia"}
    study = _header((a / "study.md").read_text())
    # the attack with reference models first, then in the order of the suite
    assert [c for c in study if c.endswith(": AUC")] == ["rmia: AUC", "loss-threshold: AUC"], study


# ------------------------------------------------------------------------------------------------
# The built-in attacks' declarations
# ------------------------------------------------------------------------------------------------

REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "reference"


def test_every_attack_declares_its_metrics_and_summary():
    from bench.core import registry
    from bench.core.api import ATTACK_KINDS

    for name in registry.names("attacks"):
        cls = registry.get_attack(name)
        if cls.__module__.split(".")[0] != "attacks":
            continue
        assert cls.kind in ATTACK_KINDS, name
        assert cls.metrics and len(set(cls.metrics)) == len(cls.metrics), name
        assert set(cls.summary) <= set(cls.metrics), (name, set(cls.summary) - set(cls.metrics))


def test_declared_metrics_cover_the_committed_reference_runs():
    """Every metric the committed dpsd-audit study recorded (reports/reference/dpsd-audit/summary.csv)
    is among its attack's declared ``metrics``."""
    from bench.core import registry

    raw = pd.read_csv(REFERENCE / "dpsd-audit" / "summary.csv")
    attacks = sorted(set(raw.source) - {"utility", "privacy", "inversion-target"})
    assert {"lira", "rmia", "loss-threshold", "one-run-audit", "own-unit-audit", "gmi"} <= set(attacks)
    for a in attacks:
        missing = set(raw.loc[raw.source == a, "metric"]) - set(registry.get_attack(a).metrics)
        assert not missing, (a, sorted(missing))


def test_generator_table_shows_privacy_loss_and_the_utility_matrix(tmp_path):
    """The generator table (issue 21): one row per (dataset, defense, ε) with the student's
    accuracy, each generator attack's AUC and privacy loss and the utility matrix with p1 − p2,
    mean ± std over seeds; membership attacks stay out of it, and a run without a generator
    attack has no generator table."""
    from reports.frame import load_frame
    from reports.tables import generator_table, paper_tables

    run = write_run(tmp_path / "run", {
        "gen-distance": ("gen-distance", "generator", [("auc", 0.60), ("privacy_loss", 0.20)]),
        "gen-utility": ("gen-utility", "generator", [("p1", 0.9), ("p2", 0.5), ("p3", 0.7), ("p4", 0.95),
                                                      ("p1_minus_p2", 0.4)]),
        "loss-threshold": ("loss-threshold", "membership", [("auc", 0.55)])})
    t = generator_table(load_frame(run))
    d = t.display.set_index("defense")
    assert list(d.index) == ["none", "dpsgd"] and set(d["seeds"]) == {2}
    assert d.loc["none", "gen-distance: AUC"] == "0.605 ± 0.007"   # 0.60 and 0.61 over the two seeds
    assert d.loc["dpsgd", "gen-distance: privacy loss"] == "0.205 ± 0.007"
    assert d.loc["none", "gen-utility: p1 − p2"] == "0.405 ± 0.007"
    assert d.loc["none", "test acc (%)"] == "94.50 ± 0.71"
    assert not [c for c in d.columns if c.startswith("loss-threshold")]
    assert "gen-utility: AUC" not in d.columns and "gen-distance: p1" not in d.columns
    row = t.data[(t.data.defense == "dpsgd") & (t.data.metric == "p1_minus_p2")].iloc[0]
    assert row["count"] == 2 and abs(row["mean"] - 0.405) < 1e-9
    assert "generator" in [x.name for x in paper_tables(load_frame(run))]

    plain = write_run(tmp_path / "plain", {"loss-threshold": ("loss-threshold", "membership", [("auc", 0.55)])})
    assert "generator" not in [x.name for x in paper_tables(load_frame(plain))]


def test_client_table_one_row_per_seed_with_holm_over_the_rows(tmp_path):
    """The per-client view table (issue 17): one row per (cell, attack) that reported the view,
    the pooled and class-matched AUC, the clients' AUC range and the permutation p-value with its
    Holm adjustment over the table's rows; no table without the view."""
    from reports.frame import load_frame
    from reports.tables import client_table, holm, paper_tables

    view = [("auc", 0.55), ("auc_class_matched", 0.52), ("client_auc_min", 0.45), ("client_auc_max", 0.60),
            ("client_auc_max_p", 0.01), ("clients_scored", 10.0), ("client_members_min", 24.0)]
    run = write_run(tmp_path / "run", {"loss-threshold": ("loss-threshold", "membership", view)})
    t = client_table(load_frame(run))
    d = t.display
    assert len(d) == 4 and list(d["seed"]) == [0, 1, 0, 1] and list(d["defense"]) == ["none", "none", "dpsgd", "dpsgd"]
    assert list(d["client AUC max"]) == ["0.600", "0.610", "0.600", "0.610"]
    assert list(d["AUC, class-matched"])[1] == "0.530" and list(d["clients scored"])[0] == "10"
    # p = 0.01 (seed 0) and 0.02 (seed 1), twice: Holm over 4 rows gives 0.04, 0.04, 0.04, 0.04
    assert list(d["p (max), Holm over the rows"]) == ["0.040", "0.040", "0.040", "0.040"]
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert holm([0.5, 0.2]) == [0.5, 0.4]
    assert "clients" in [x.name for x in paper_tables(load_frame(run))]
    plain = write_run(tmp_path / "plain", {"loss-threshold": ("loss-threshold", "membership", [("auc", 0.55)])})
    assert "clients" not in [x.name for x in paper_tables(load_frame(plain))]
