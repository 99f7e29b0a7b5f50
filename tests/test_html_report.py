"""``bench report``: the paper-style tables (with the published numbers), the curves, and the one
self-contained ``report.html`` - opened in headless Chromium, screenshotted, and failed on console
errors or images that did not load.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
the ``selenium`` package (the ``test`` extra). Without them they are skipped, except in CI
(``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("BENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# A synthetic finished run: the store's cells, metrics and attack artifacts (scores for ROC
# curves, reconstructions for inversion grids), written through the real Store API.
# ------------------------------------------------------------------------------------------------

def make_run(run_dir: Path, *, dataset: str = "mnist", seeds=(0, 1), epsilons=(1.0, 8.0), n_recon: int = 3,
             size: int = 16, n_scores: int = 400, failed: bool = True, selection: dict | None = None,
             inversion_target: bool = False) -> dict:
    """Defenses none (ε=∞), dpsgd (example) and dpsd (query) x ``epsilons`` x ``seeds``; attacks
    loss-threshold (membership) and gmi (inversion). Returns the expected test accuracies."""
    from bench.core.store import Store, provenance

    rng = np.random.default_rng(0)
    store = Store(run_dir)
    store.start_run("synthetic-run", "synthetic", {}, ["bench", "run"], provenance("cpu"))
    cache = Path(run_dir) / "fake-cache"
    expected: dict = {}
    cells = [("none", math.inf, "none")] + [(d, e, u) for d, u in (("dpsgd", "example"), ("dpsd", "query"))
                                            for e in epsilons]
    for defense, eps, unit in cells:
        for seed in seeds:
            acc = 0.99 - (0.0 if math.isinf(eps) else 0.3 / eps) - 0.01 * seed
            expected.setdefault((defense, eps), []).append(acc)
            key = f"{defense}-{eps}-{seed}"
            cell = {"dataset": dataset, "epsilon": eps, "delta": 1e-5, "defense": defense, "seed": seed,
                    "defense_config": {}, "attacks": {"loss-threshold": {}, "gmi": {}}}
            private = not math.isinf(eps)
            privacy = {"epsilon": eps * 0.99 if private else None, "delta": 1e-5 if private else None,
                       "unit": unit, "accountant": "RDP (Opacus)" if private else "none"}
            if selection:
                privacy["selection"] = selection.get(defense, "")
            metrics = [("utility", "test_acc", acc), ("utility", "val_acc", acc + 0.002),
                       ("utility", "fit_seconds", 1.0)]
            if private:
                metrics.append(("privacy", "epsilon_spent", eps * 0.99))
            labels = np.r_[np.ones(n_scores // 2), np.zeros(n_scores // 2)].astype(np.int8)
            scores = rng.normal(size=n_scores) + labels * (1.0 if not private else 0.2)
            mdir = cache / key / "mia"
            mdir.mkdir(parents=True)
            (mdir / "manifest.json").write_text("{}")
            np.savez(mdir / "arrays.npz", **{"array.scores": scores, "array.labels": labels})
            metrics += [("loss-threshold", "auc", 0.5 + 0.1 * (not private) + 0.01 * seed),
                        ("loss-threshold", "tpr_at_0.1%fpr", 0.002), ("loss-threshold", "tpr_at_1%fpr", 0.02),
                        ("loss-threshold", "balanced_acc", 0.55)]
            k = 5
            images = rng.random((k, n_recon, 1, size, size), dtype=np.float32)
            idir = cache / key / "inv"
            idir.mkdir(parents=True)
            (idir / "manifest.json").write_text("{}")
            np.savez(idir / "arrays.npz", **{"array.images": images,
                                             "array.eval_pred": rng.integers(0, k, (k, n_recon)).astype(np.int16),
                                             "array.selected": np.zeros(k, dtype=np.int16),
                                             "array.classes": np.arange(k, dtype=np.int16)})
            metrics += [("gmi", "top1", 0.6 - 0.1 * private), ("gmi", "top2", 0.8), ("gmi", "top5_all", 0.9),
                        ("gmi", "top1_selected", 0.7), ("gmi", "knn_dist", 12.5), ("gmi", "fid", 80.0),
                        ("gmi", "lpips", 0.3)]
            if inversion_target:  # the inversion-protocol release's utility, as the runner records it
                metrics.append(("inversion-target", "test_acc", acc + 0.005))
            store.record_cell(cell_key=key, run_id="synthetic-run", cell=cell, status="done", split={},
                              privacy=privacy, info={}, error=None, wall_time=2.0, device="cpu",
                              prov=provenance("cpu"), metrics=metrics,
                              artifacts=[("attack:loss-threshold", "attack", key + "m", str(mdir)),
                                         ("attack:gmi", "attack", key + "i", str(idir))])
    if failed:
        cell = {"dataset": dataset, "epsilon": 1.0, "delta": 1e-5, "defense": "dpdfd", "seed": 0,
                "defense_config": {}, "attacks": {}}
        store.record_cell(cell_key="failed", run_id="synthetic-run", cell=cell, status="failed", split=None,
                          privacy=None, info={}, error="Traceback...\nRuntimeError: <boom> & co", wall_time=1.0,
                          device="cpu", prov=provenance("cpu"))
    store.finish_run("synthetic-run", "done")
    store.close()
    return expected


def _report(run_dir):
    from reports.write import write_report

    paths = write_report(run_dir)
    return Path(run_dir) / "report", paths


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One synthetic run (5 finished cells, 1 failed) and its report, shared by the module:
    (run_dir, expected accuracies, report dir, written paths). Read-only for tests."""
    run = tmp_path_factory.mktemp("html") / "run"
    expected = make_run(run, epsilons=(1.0,))
    out, paths = _report(run)
    return run, expected, out, paths


# ------------------------------------------------------------------------------------------------
# Tables, curves and the page (no browser needed)
# ------------------------------------------------------------------------------------------------

def test_robustness_vs_utility_figure_when_inversion_attacks_record_their_targets_accuracy(tmp_path):
    from reports.frame import load_frame
    from reports.plots import robustness_figure, write_plots

    run = tmp_path / "run"
    make_run(run, epsilons=(1.0,), n_scores=40, failed=False, inversion_target=True)
    df = load_frame(run)
    fig = robustness_figure(df, "mnist")
    ax = fig.axes[0]
    assert ax.get_title() == "gmi" and "target's test accuracy" in ax.get_xlabel()
    # one point per (defense, eps): x = the inversion target's accuracy, y = the attack's top-1
    # (make_run: accuracy 0.99 - 0.3 / eps - 0.01 seed over seeds 0, 1, plus 0.005 for the inversion target)
    xs = sorted(round(float(c.lines[0].get_xdata()[0]), 3) for c in ax.containers)
    assert xs == [69.0, 69.0, 99.0]
    labels = ax.get_legend_handles_labels()[1]
    assert set(labels) == {"none", "dpsgd (ε=1, example)", "dpsd (ε=1, query)"}
    names = {p.name for p in write_plots(df, tmp_path / "plots")}
    assert "robustness_vs_utility_mnist.png" in names
    # without target accuracies (older runs) there is no such figure
    run2 = tmp_path / "run2"
    make_run(run2, epsilons=(1.0,), n_scores=40, failed=False)
    assert robustness_figure(load_frame(run2), "mnist") is None


def test_accuracy_table_says_how_each_release_was_selected(tmp_path):
    from bench.api import LAST_ITERATE, val_selection

    run = tmp_path / "run"
    make_run(run, epsilons=(1.0,), n_scores=40, failed=False,
             selection={"none": val_selection("the epoch"), "dpsgd": LAST_ITERATE})
    out, _ = _report(run)
    md = (out / "accuracy.md").read_text()
    assert "| selection" in next(ln for ln in md.splitlines() if ln.startswith("| method"))
    assert "on validation (outside ε)" in next(ln for ln in md.splitlines() if ln.startswith("| none "))
    assert "none (last iterate)" in next(ln for ln in md.splitlines() if ln.startswith("| dpsgd "))
    assert "— (not recorded)" in next(ln for ln in md.splitlines() if ln.startswith("| dpsd "))
    note = next(ln for ln in md.splitlines() if ln.startswith("- Selection"))
    assert "none: the epoch chosen by accuracy on the validation split" in note and "dpsgd: last iterate" in note


def test_accuracy_table_has_ours_and_the_published_numbers_with_sources(tmp_path):
    import statistics

    run = tmp_path / "run"
    expected = make_run(run, epsilons=(1.0, 8.0), n_scores=40, failed=False)
    out, paths = _report(run)
    md = (out / "accuracy.md").read_text()
    for (defense, eps), vals in expected.items():
        cell = f"{100 * statistics.mean(vals):.2f} ± {100 * statistics.stdev(vals):.2f}"
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| {defense} "))
        assert cell in row, (defense, eps, row)
    # the published MNIST eps=1 numbers of the DPSD paper, in their own column, cited
    header = next(ln for ln in md.splitlines() if ln.startswith("| method"))
    assert "mnist ε=1 (published, %)" in header and "mnist ε=8 (published, %)" not in header
    assert "96.03 [1]" in next(ln for ln in md.splitlines() if ln.startswith("| dpsd "))
    assert "95.12 [1]" in next(ln for ln in md.splitlines() if ln.startswith("| dpdfd (not run)"))
    assert "71.23 [1]" in next(ln for ln in md.splitlines() if ln.startswith("| datalens (not run)"))
    assert "[1] Liu, Ge, Wang, Li, Liu." in md and "TPAMI 2026" in md
    assert "80.66" not in md  # DataLens at eps=10: no such column in this run
    rows = [r for r in (out / "accuracy.csv").read_text().splitlines()]
    assert any(r.startswith("dpsd,query,mnist,1,published,96.03") for r in rows), rows
    tex = (out / "accuracy.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex
    assert "ε" not in tex and "±" not in tex


def test_leakage_tables_and_curves(rendered):
    run, _, out, paths = rendered
    inv = (out / "inversion.md").read_text()
    for label in ("attack acc top-1 (%)", "top-5, all classes (%)", "KNN dist", "FID", "LPIPS"):
        assert label in inv
    assert "| mnist     | dpsgd     | 1   | example | gmi" in inv
    mem = (out / "membership.md").read_text()
    assert "AUC" in mem and "TPR@0.1%FPR (%)" in mem and "loss-threshold" in mem
    assert "gmi" not in mem and "loss-threshold" not in inv
    names = {p.name for p in paths}
    assert {"accuracy_vs_eps_mnist.png", "leakage_vs_eps_mnist.png", "report.html"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.links, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1
        if tag == "link" or (tag == "a" and not (a.get("href") or "#").startswith("#")):
            self.links.append(a.get("href"))


def test_html_is_self_contained_and_holds_every_table_and_image(rendered):
    run, _, out, paths = rendered
    page = (out / "report.html").read_text()
    parser = _Assets()
    parser.feed(page)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(parser.srcs) == len(pngs) > 0
    assert all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in parser.srcs}
    assert embedded == {p.read_bytes() for p in pngs}
    assert parser.scripts == 0 and parser.links == []
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page) and "url(" not in page
    for needle in ("Test accuracy (%): ours vs published", "96.03 [1]", "Membership inference leakage",
                   "Model inversion leakage", "Claimed vs audited ε", "Cells not done",
                   "RuntimeError: &lt;boom&gt; &amp; co"):
        assert needle in page, needle


def test_report_of_a_real_smoke_run(cli, tmp_path):
    """The smoke suite end to end: bench run, then bench report, whose page embeds its ROC figures."""
    code, o, e = cli("run", "--suite", "smoke", "--out", tmp_path / "smoke")
    assert code == 0, e
    code, o, e = cli("report", tmp_path / "smoke")
    assert code == 0, e
    out = tmp_path / "smoke" / "report"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(list(out.rglob("*.png"))) >= 2 + 2
    assert "digits ε=1 (ours, %)" in (out / "accuracy.md").read_text()


# ------------------------------------------------------------------------------------------------
# The page in a real browser
# ------------------------------------------------------------------------------------------------

def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        msg = f"headless Chromium test needs {', '.join(missing)} (apt-get install chromium chromium-driver; " \
              f"pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {msg}")
        pytest.skip(msg)


@pytest.fixture
def browser(tmp_path):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium must not look for (or download) a driver of its own
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> dict:
    driver.get(page.resolve().as_uri())
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true);")
    deadline = time.time() + 20
    while time.time() < deadline and not driver.execute_script(
            "return Array.from(document.images).every(i => i.complete);"):
        time.sleep(0.1)
    return driver.execute_script("""
        const imgs = Array.from(document.images);
        return {n: imgs.length, broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
                tables: document.querySelectorAll('table').length, title: document.title};""")


def _console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def test_report_renders_in_headless_chromium(browser, rendered, tmp_path):
    run, _, out, paths = rendered
    state = _open(browser, out / "report.html")
    assert state["n"] == len([p for p in paths if p.suffix == ".png"]) and state["broken"] == [], state
    assert state["tables"] >= 5 and state["title"].startswith("Report:")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == PNG_MAGIC
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    assert _console_errors(browser) == []


def test_the_browser_check_fails_on_a_broken_image_and_a_console_error(browser, rendered, tmp_path):
    """The checks above can fail: a page with an undecodable image and a script error."""
    out = rendered[2]
    bad = tmp_path / "broken.html"
    page = (out / "report.html").read_text()
    bad.write_text(page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
                   .replace("</body>", "<script>undefinedFunction()</script></body>"))
    state = _open(browser, bad)
    assert len(state["broken"]) == 1
    errors = _console_errors(browser)
    assert any("undefinedFunction" in json.dumps(e) for e in errors), errors
