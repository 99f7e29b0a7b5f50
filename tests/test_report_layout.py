"""The layout of ``bench report`` (tracker issue 19, item 13 and the report half of item 7):

* every column of every table in ``report.html`` readable at a 1280-px window and on an A4
  landscape page (headers and long cells wrap; a table wider than that is split into parts by
  attack, each repeating the row keys) - checked in headless Chromium, screenshot in tmp_path;
* one naming scheme for columns (``<attack>: <metric>``, one spelling of TPR@1%FPR) and TPR in one
  unit (%) in every table;
* no table file, page section or plot for an attack kind that did not run;
* "official test split" only for datasets that have one; the accuracy heading promises a
  published column only when there is one;
* the leakage plot's band has a legend entry, its AUC axis spans at least 0.5-1;
* an output directory that cannot be written is one line on stderr and exit code 2.

The browser test needs chromium, chromedriver and selenium, like tests/test_html_report.py, and is
skipped without them (failed under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import pytest
import test_html_report
from conftest import tmpfs
from test_html_report import PNG_MAGIC, _console_errors, _open, make_run

#: headless Chromium, as tests/test_html_report.py starts it (skipped without it)
browser = test_html_report.browser

#: the metric names of the committed dpsd-audit run (reports/reference/dpsd-audit/summary.csv), so
#: the synthetic run below is as wide as the real study
_MIA = ["advantage", "auc", "balanced_acc", "eps_lb", "eps_lb_max_certifiable", "eps_lb_one_run",
        "eps_lb_one_run_max_certifiable", "tpr_at_0.1%fpr", "tpr_at_1%fpr", "n_members", "n_nonmembers",
        "auc_ci_lo", "auc_ci_hi", "attack_seconds"]
_LIRA_EXTRA = [f"{mode}_{m}" for mode in ("offline", "offline_fixed", "online", "online_fixed")
               for m in ("auc", "balanced_acc", "tpr_at_0.1%fpr", "tpr_at_1%fpr")] + ["in_refs_per_example"]
_ONE_RUN = ["audited_model_epsilon", "audited_model_test_acc", "canary_auc", "canary_tpr_at_1%fpr", "correct",
            "eps_lb", "eps_lb_max_certifiable", "guesses", "k_neg", "k_pos", "m", "n_guess_pairs", "n_included"]
_OWN_UNIT = ["audited_claimed_epsilon", "canary_auc", "canary_auc_student", "correct", "eps_lb_own_unit",
             "eps_lb_own_unit_max_certifiable", "eps_lb_own_unit_student",
             "eps_lb_own_unit_student_max_certifiable", "guesses", "m", "n_included"]
_INVERSION = ["top1", "top2", "top5_all", "top1_selected", "knn_dist", "fid", "lpips"]
#: a long accountant label, as the label-DP defense records it
_LONG_ACCOUNTANT = ("pure DP of RRWithPrior (per query, parallel composition); example level: RDP (dp_accounting)")


def wide_run(run_dir: Path, *, dataset: str = "mnist", membership: bool = True, inversion: bool = True,
             audits: bool = True, seeds=(0, 1), auc_spread: float = 0.06) -> Path:
    """A finished run written through the Store API: none (ε=∞) and four private defenses at ε=1;
    membership attacks lira / rmia / loss-threshold with every metric the real study records,
    the canary audits, and gmi inversion metrics - each kind only when asked for. No artifacts."""
    from bench.core.store import Store, provenance

    store = Store(run_dir)
    store.start_run("wide", "wide", {}, ["bench", "run"], provenance("cpu"))
    defenses = [("none", None, "none", "none"), ("dpsgd", 1.0, "example", "PRV (Opacus)"),
                ("dpsd", 1.0, "query", "PLD (dp_accounting)"), ("dpsd-authors", 1.0, "query", "PLD (dp_accounting)"),
                ("dpsd-label", 1.0, "label", _LONG_ACCOUNTANT)]
    for i, (defense, eps, unit, accountant) in enumerate(defenses):
        for seed in seeds:
            private = eps is not None
            attacks = {}
            metrics = [("utility", "test_acc", 0.9 - 0.1 * i - 0.01 * seed), ("utility", "val_acc", 0.89 - 0.1 * i),
                       ("utility", "fit_seconds", 1.0)]
            if private:
                metrics.append(("privacy", "epsilon_spent", eps))
            auc = 0.5 + auc_spread * (not private) + 0.002 * seed
            if membership:
                for a in ("lira", "rmia", "loss-threshold"):
                    attacks[a] = {}
                    for m in _MIA + (_LIRA_EXTRA if a == "lira" else []):
                        v = auc if "auc" in m else 0.0123 + 0.001 * seed if "tpr" in m else 0.51 + 0.01 * seed
                        metrics.append((a, m, v))
            if audits:
                attacks["one-run-audit"], attacks["own-unit-audit"] = {}, {}
                metrics += [("one-run-audit", m, 0.25 + 0.01 * seed) for m in _ONE_RUN]
                if private:
                    metrics += [("own-unit-audit", m, 0.3) for m in _OWN_UNIT]
            if inversion:
                attacks["gmi"] = {}
                metrics += [("gmi", m, 0.6 - 0.1 * private if m.startswith("top") else 12.5) for m in _INVERSION]
            cell = {"dataset": dataset, "epsilon": math.inf if eps is None else eps, "delta": 1e-5,
                    "defense": defense, "seed": seed, "defense_config": {}, "attacks": attacks}
            privacy = {"epsilon": eps, "delta": 1e-5 if private else None, "unit": unit, "accountant": accountant}
            store.record_cell(cell_key=f"{defense}-{seed}", run_id="wide", cell=cell, status="done",
                              split={"dataset": dataset}, privacy=privacy, info={}, error=None, wall_time=1.0,
                              device="cpu", prov=provenance("cpu"), metrics=metrics, artifacts=[])
    store.finish_run("wide", "done")
    store.close()
    return run_dir


def _report(run_dir: Path) -> Path:
    from reports.write import write_report

    write_report(run_dir)
    return run_dir / "report"


def _header(md: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith("| "))
    return [c.strip() for c in line.strip("|").split("|")]


def _rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    run = wide_run(tmp_path_factory.mktemp("wide") / "run")
    return run, _report(run)


# ------------------------------------------------------------------------------------------------
# Column names and units
# ------------------------------------------------------------------------------------------------

def test_one_naming_scheme_for_columns(wide):
    """Every attack column is '<attack>: <metric>', in the summary and the study table alike, with
    the labels of the membership table (one spelling of TPR@1%FPR, '(%)' on rates)."""
    run, out = wide
    summary = _header((out / "summary.md").read_text())
    study = _header((out / "study.md").read_text())
    membership = _header((out / "membership.md").read_text())
    attacks = ("lira", "rmia", "loss-threshold", "one-run-audit", "own-unit-audit", "gmi")
    for c in summary + study:
        a = next((a for a in attacks if c.startswith(a)), None)
        assert a is None or c.startswith(f"{a}: "), f"{c!r}: not '<attack>: <metric>'"
    for a in ("lira", "rmia", "loss-threshold"):
        for label in ("AUC", "TPR@1%FPR (%)"):
            assert f"{a}: {label}" in summary and f"{a}: {label}" in study, (a, label)
        for label in ("TPR@0.1%FPR (%)", "balanced acc (%)", "ε̂ lower bound (95 %)"):
            assert f"{a}: {label}" in summary and label in membership, (a, label)
    assert "gmi: attack acc top-1 (%)" in summary and "gmi: attack acc top-1 (%)" in study
    assert "lira: offline TPR@1%FPR (%)" in summary and "one-run-audit: canary TPR@1%FPR (%)" in summary
    assert not [c for c in summary + study if re.search(r"\b(LT|LiRA|RMIA) ", c)]  # no second spelling
    assert not [c for c in summary if "tpr_at" in c or "balanced_acc" in c], summary


def test_tpr_in_percent_in_every_table(wide):
    """TPR@1%FPR 0.0123 / 0.0133 over two seeds is 1.28 % in the summary, the membership and the
    study table alike (never the raw fraction 0.013)."""
    run, out = wide
    summary_md = (out / "summary.md").read_text()
    head, rows = _header(summary_md), _rows(summary_md)
    col = head.index("lira: TPR@1%FPR (%)")
    assert {r[col] for r in rows} == {"1.28 ± 0.07"}, {r[col] for r in rows}
    assert {r[head.index("lira: offline TPR@0.1%FPR (%)")] for r in rows} == {"1.28 ± 0.07"}
    mem = (out / "membership.md").read_text()
    mhead, mrows = _header(mem), _rows(mem)
    assert {r[mhead.index("TPR@1%FPR (%)")] for r in mrows} == {"1.28 ± 0.07"}
    study = (out / "study.md").read_text()
    shead, srows = _header(study), _rows(study)
    assert {r[shead.index("rmia: TPR@1%FPR (%)")] for r in srows} == {"1.28 ± 0.07"}
    # the CSVs keep the raw numbers
    import pandas as pd

    raw = pd.read_csv(out / "summary.csv")
    assert set(raw.loc[(raw.source == "lira") & (raw.metric == "tpr_at_1%fpr"), "mean"].round(6)) == {0.0128}


# ------------------------------------------------------------------------------------------------
# Only what ran
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["membership", "inversion"])
def test_no_file_or_section_for_an_attack_kind_that_did_not_run(tmp_path, kind):
    run = wide_run(tmp_path / "run", membership=kind == "membership", inversion=kind == "inversion",
                   audits=False, seeds=(0,))
    out = tmp_path / "run" / "report"
    out.mkdir()
    missing = "inversion" if kind == "membership" else "membership"
    (out / f"{missing}.md").write_text("left over from an earlier report")
    _report(run)
    names = {p.name for p in out.iterdir()}
    assert f"{kind}.md" in names and not {f"{missing}.md", f"{missing}.tex", f"{missing}.csv"} & names, names
    page = (out / "report.html").read_text()
    assert f'id="{kind}"' in page and f'id="{missing}"' not in page and f'href="#{missing}"' not in page
    if kind == "membership":
        assert 'id="grids"' not in page and "Model inversion" not in page
    else:
        assert 'id="roc"' not in page and "Membership inference leakage" not in page
    for placeholder in ("(no rows in this run)", "(no curves)", "(no membership attack", "(no inversion attack"):
        assert placeholder not in page


def test_no_leakage_plot_without_a_leakage_attack(tmp_path):
    run = wide_run(tmp_path / "run", membership=False, inversion=False, audits=True, seeds=(0,))
    out = _report(run)
    assert [p.name for p in (out / "plots").iterdir()] == ["accuracy_vs_eps_mnist.png"]


# ------------------------------------------------------------------------------------------------
# The accuracy table's words
# ------------------------------------------------------------------------------------------------

def test_official_test_split_only_for_datasets_that_have_one(tmp_path):
    from reports.frame import load_frame
    from reports.tables import accuracy_table

    digits = accuracy_table(load_frame(wide_run(tmp_path / "d", dataset="digits", membership=False,
                                                inversion=False, audits=False, seeds=(0,))))
    mnist = accuracy_table(load_frame(wide_run(tmp_path / "m", dataset="mnist", membership=False,
                                               inversion=False, audits=False, seeds=(0,))))
    assert "official test split" not in " ".join(digits.notes)
    assert "fixed held-out test split for digits" in digits.notes[0]
    assert "the official test split" in mnist.notes[0]
    from reports.tables import describe_test_split

    mixed = describe_test_split(["digits", "mnist"])
    assert "official test split for mnist" in mixed and "held-out test split for digits" in mixed
    assert "official" not in describe_test_split(["no-such-dataset"])


def test_accuracy_heading_promises_published_numbers_only_when_there_are_some(tmp_path):
    from reports.frame import load_frame
    from reports.tables import accuracy_table

    # digits: no published numbers at all; mnist at eps=1: the DPSD paper's
    digits = accuracy_table(load_frame(wide_run(tmp_path / "d", dataset="digits", membership=False,
                                                inversion=False, audits=False, seeds=(0,))))
    assert "published" not in digits.title and not [c for c in digits.display.columns if "published" in c]
    assert digits.title == "Test accuracy (%)"
    run = tmp_path / "m"
    make_run(run, epsilons=(1.0,), n_scores=20, n_recon=1, size=4, seeds=(0,), failed=False)
    mnist = accuracy_table(load_frame(run))
    assert mnist.title == "Test accuracy (%): ours vs published"
    assert "mnist ε=1 (published, %)" in mnist.display.columns


# ------------------------------------------------------------------------------------------------
# The leakage plot
# ------------------------------------------------------------------------------------------------

def _drawn_figures(monkeypatch) -> list:
    """Every figure saved while the patch holds (the PNGs are still written)."""
    from matplotlib.figure import Figure

    saved, real = [], Figure.savefig

    def capture(self, *a, **k):
        saved.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", capture)
    return saved


def test_leakage_plot_names_its_band_and_keeps_the_auc_axis(tmp_path, monkeypatch):
    """AUCs of 0.50-0.56 over seeds: the y axis still spans 0.5-1 (a 6-point spread is drawn as
    small as it is), and the ± 1 std band of the non-private line has a legend entry."""
    from reports.frame import load_frame
    from reports.plots import leakage_plot

    df = load_frame(wide_run(tmp_path / "run", membership=True, inversion=True, audits=False))
    saved = _drawn_figures(monkeypatch)
    assert leakage_plot(df, "mnist", tmp_path / "leak.png").read_bytes()[:8] == PNG_MAGIC
    (fig,) = saved
    panels = [ax for ax in fig.axes if ax.get_title()]
    auc = [ax for ax in panels if ax.get_title() in ("lira", "rmia", "loss-threshold")]
    assert len(auc) == 3
    for ax in auc:
        lo, hi = ax.get_ylim()
        assert lo <= 0.5 and hi >= 1.0, (ax.get_title(), lo, hi)
    (inv,) = [ax for ax in panels if ax.get_title() == "gmi"]
    assert inv.get_ylim()[0] <= 0 and inv.get_ylim()[1] >= 100  # top-1 in %, like the tables
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    legend += [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any("std over seeds" in t for t in legend), legend
    assert "chance" in legend


# ------------------------------------------------------------------------------------------------
# An output directory that cannot be written
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _read_only_dir(tmp_path: Path):
    """A directory nothing can be written to: mode 0555, or - for root, who ignores the mode - a
    read-only tmpfs (skipped where mounting is not allowed)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").write_text("")
    except OSError:
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    d.chmod(0o755)
    (d / "probe").unlink()
    with tmpfs(d, size="64k", ro=True):
        yield d


@pytest.mark.parametrize("where", ["read-only directory", "read-only directory itself", "a file in the way",
                                   "a report file taken"])
def test_unwritable_report_directory_is_one_line_and_exit_2(tmp_path, cli, where):
    run = wide_run(tmp_path / "run", membership=False, inversion=False, audits=False, seeds=(0,))
    with contextlib.ExitStack() as stack:
        if where.startswith("read-only directory"):
            ro = stack.enter_context(_read_only_dir(tmp_path))
            out = ro if where.endswith("itself") else ro / "report"
        elif where == "a file in the way":
            (tmp_path / "file").write_text("not a directory")
            out = tmp_path / "file" / "report"
        else:
            out = tmp_path / "report"
            (out / "summary.md").mkdir(parents=True)  # the report's first file cannot be written
        code, o, e = cli("report", run, "--out", out)
    assert code == 2, e
    assert "Traceback" not in e and len(e.strip().splitlines()) == 1, e
    assert e.startswith(f"bench: error: cannot write the report to {out}: "), e


# ------------------------------------------------------------------------------------------------
# The page in a real browser: every column readable on screen and in print
# ------------------------------------------------------------------------------------------------

_OVERFLOW = """
const bad = [];
document.querySelectorAll('table').forEach((t, i) => {
  const box = t.parentElement;
  if (t.scrollWidth > box.clientWidth || t.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
    bad.push(`table ${i} (${t.querySelector('th').textContent}...): ${t.scrollWidth}px in ${box.clientWidth}px`);
  t.querySelectorAll('th, td').forEach(c => {
    if (c.scrollWidth > c.clientWidth + 1) bad.push(`table ${i} cell '${c.textContent}' clipped`);
  });
});
return {bad: bad, width: document.documentElement.clientWidth, tables: document.querySelectorAll('table').length,
        heads: Array.from(document.querySelectorAll('th')).map(x => x.textContent),
        height: document.documentElement.scrollHeight};"""


def test_every_column_is_readable_at_1280_px_and_in_print(browser, wide, tmp_path):
    """As wide as the real study (over 80 summary columns): at a 1280-px window: no table wider
    than its box, no clipped cell, every summary column present; again with print media at the
    width of an A4 landscape page. Screenshot: tmp_path/report-1280.png."""
    from reports.frame import load_frame
    from reports.tables import display_table, summary_table

    run, out = wide
    browser.set_window_size(1280, 1000)
    _open(browser, out / "report.html")
    state = browser.execute_script(_OVERFLOW)
    assert 1200 <= state["width"] <= 1280, state["width"]
    assert state["bad"] == [], state["bad"]
    columns = set(display_table(summary_table(load_frame(run))).columns)
    assert len(columns) > 80 and columns <= set(state["heads"]), columns - set(state["heads"])
    browser.set_window_size(1280, min(state["height"] + 200, 16000))
    shot = tmp_path / "report-1280.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == PNG_MAGIC
    assert shot.stat().st_size > 50_000
    # print: A4 landscape, 10 mm margins = 277 mm = 1047 CSS px of page width
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    browser.set_window_size(1047, 1000)
    state = browser.execute_script(_OVERFLOW)
    assert state["width"] <= 1047 and state["bad"] == [], (state["width"], state["bad"])
    pdf = browser.print_page()
    assert len(pdf) > 10_000
    assert _console_errors(browser) == []
    print(f"screenshot: {shot}")


def test_the_layout_check_fails_on_a_table_that_does_not_fit(browser, wide, tmp_path):
    """The check above can fail: the same page with the summary forced onto one line per row."""
    out = wide[1]
    bad = tmp_path / "wide.html"
    bad.write_text((out / "report.html").read_text().replace("</style>", "td,th{white-space:nowrap}</style>"))
    browser.set_window_size(1280, 1000)
    _open(browser, bad)
    assert browser.execute_script(_OVERFLOW)["bad"]


def test_published_number_is_shown_only_beside_the_variants_it_describes():
    import json

    import pandas as pd

    from reports.tables import accuracy_table, published_applies

    entry = {"when": {"teachers": 1, "teacher_clients": {}}}
    assert published_applies(entry, {"teachers": 1, "teacher_clients": {}})
    assert published_applies(entry, {"teachers": 1, "teacher_clients": None})
    assert published_applies(entry, {})  # a hand-made store without the setting
    assert not published_applies(entry, {"teachers": 1, "teacher_clients": {"partition": "iid"}})
    assert not published_applies(entry, {"teachers": 100, "teacher_clients": {}})
    assert published_applies({}, {"teachers": 100})

    def rows(defense, cfg, value):
        return [{"dataset": "mnist", "defense": defense, "method": "dpsd", "seed": s, "epsilon": "1",
                 "target_epsilon": 1.0, "unit": "query", "delta": 1e-5, "accountant": "PLD", "selection": "",
                 "defense_config": json.dumps(cfg), "source": "utility", "metric": "test_acc", "value": value,
                 "attack_method": None, "attack_kind": None} for s in (0, 1)]

    df = pd.DataFrame(rows("dpsd", {"teachers": 1, "teacher_clients": {}}, 0.5)
                      + rows("feddpsd-query", {"teachers": 1, "teacher_clients": {"partition": "iid"}}, 0.4)
                      + rows("dpsd-ensemble", {"teachers": 250, "teacher_clients": {}}, 0.3))
    t = accuracy_table(df)
    pub = t.display.set_index("method")["mnist ε=1 (published, %)"]
    assert pub["dpsd"].startswith("96.03") and pub["feddpsd-query"] == "—" and pub["dpsd-ensemble"] == "—"
    published_rows = set(t.data[t.data.kind == "published"]["method"])
    assert "dpsd" in published_rows and not {"feddpsd-query", "dpsd-ensemble"} & published_rows
