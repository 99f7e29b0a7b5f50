"""One self-contained HTML page of a run's report: every table, and every figure embedded as a
base64 ``data:`` URI, no external resource (stylesheet, font, script), no JavaScript; the per-cell
figures sit in ``<details>`` blocks so the page stays readable.

    from reports.html import write_html
    write_html(run_dir, out_dir, tables, images)   # called by reports.tables.write_report
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.store import Store

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1400px;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}h3{font-size:1em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;white-space:nowrap}
thead th{border-bottom:2px solid #444;background:#f4f4f4}
tbody tr:hover{background:#fafafa}
.notes{font-size:.82em;color:#444}.notes li{margin:.2em 0}
.meta{font-size:.85em;color:#444}.fail{color:#a00}
figure{display:inline-block;margin:.4em;vertical-align:top}figcaption{font-size:.75em;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}
details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
.wide{overflow-x:auto}
"""


def data_uri(path: str | Path) -> str:
    """The PNG (or SVG) at ``path`` as a ``data:`` URI."""
    path = Path(path)
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table_html(df: pd.DataFrame) -> str:
    if df is None or not len(df):
        return "<p><em>(no rows in this run)</em></p>"
    return '<div class="wide">' + df.to_html(index=False, escape=True, border=0, na_rep="—") + "</div>"


def _notes(notes: Iterable[str]) -> str:
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f'<ul class="notes">{items}</ul>' if items else ""


def _figures(paths: Iterable[Path]) -> str:
    parts = []
    for p in paths:
        cap = html.escape(Path(p).stem)
        parts.append(f'<figure><img src="{data_uri(p)}" alt="{cap}"><figcaption>{cap}</figcaption></figure>')
    return "".join(parts)


def audit_section(run_dir: str | Path, frame: pd.DataFrame) -> tuple[str, list[str]]:
    """The claimed-vs-audited ε table of ``reports/audit_table.py`` (with its warning when an
    audited ε exceeds a claim), or a clear "not available" note when that module is missing."""
    try:
        from . import audit_table as mod
    except ImportError:
        return "<p><em>Claimed-vs-audited ε table not available: reports/audit_table.py is not installed.</em></p>", []
    table = mod.audit_table(frame, mod.example_level_claims(run_dir), mod.familywise_bounds(run_dir),
                            mod.familywise_own_unit(run_dir))
    disp = table.copy()
    for c in disp.columns:
        disp[c] = [("yes" if v else "no") if c == "dp_claim" else mod._fmt(v).replace("**", "") for v in disp[c]]
    warn = mod.warning_line(table).lstrip("> ").replace("**", "")
    head = f'<p class="fail"><strong>{html.escape(warn)}</strong></p>' if warn else ""
    return head + _table_html(disp), [
        "ε̂: empirical lower bounds at 95 % (largest over seeds), beside the largest bound the sample sizes could "
        "certify. Membership bounds are compared only with example-level claims; own-unit bounds "
        "(own-unit-audit) with the claim of their own unit, query or label (docs/methods/audit.md)."]


def _when(t) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError):
        return str(t)


def _run_meta(run_dir: str | Path) -> tuple[str, list[dict]]:
    store = Store(run_dir, create=False)
    try:
        runs = store.runs()
        cells = store.query("SELECT dataset, defense, epsilon, seed, status, error, wall_time, device FROM cells "
                            "ORDER BY dataset, defense, epsilon, seed")
        prov = store.query("SELECT provenance FROM cells LIMIT 1")
    finally:
        store.close()
    done = sum(c["status"] == "done" for c in cells)
    failed = [c for c in cells if c["status"] != "done"]
    suites = sorted({r["suite"] for r in runs})
    p = json.loads(prov[0]["provenance"]) if prov and prov[0]["provenance"] else {}
    wall = sum(c["wall_time"] or 0 for c in cells)
    lines = [
        f"suite(s): {', '.join(suites) or '?'}; {len(runs)} invocation(s), last started "
        f"{_when(runs[-1]['started']) if runs else '?'}",
        f"cells: {done} done, {len(failed)} not done; compute time of the recorded cells {wall / 60:.1f} min; "
        f"device(s): {', '.join(sorted({c['device'] or '?' for c in cells}))}",
        f"code: git {p.get('git_sha') or 'unknown'}; " + ", ".join(f"{k} {v}" for k, v in sorted((p.get('versions') or {}).items())),
    ]
    return "".join(f"<div>{html.escape(x)}</div>" for x in lines), failed


def write_html(run_dir: str | Path, out_dir: str | Path, *, summary: pd.DataFrame, tables: list,
               plots: list[Path], roc: list[Path], grids: list[Path], frame: pd.DataFrame) -> Path:
    """Write ``out_dir/report.html``. ``tables``: :class:`reports.tables.Table` objects (accuracy,
    membership, inversion); ``summary``: the summary display table; figure paths are embedded."""
    out = Path(out_dir)
    meta, failed = _run_meta(run_dir)
    by = {t.name: t for t in tables}
    parts = [f"<h1>Privacy benchmark report: {html.escape(Path(run_dir).resolve().name)}</h1>",
             f'<div class="meta">{meta}<div>rendered {time.strftime("%Y-%m-%d %H:%M:%S")} by '
             f"<code>bench report</code> from <code>{html.escape(str(Path(run_dir)))}</code></div></div>",
             "<nav><p>" + " · ".join(f'<a href="#{a}">{t}</a>' for a, t in [
                 ("accuracy", "accuracy"), ("study", "privacy study"), ("summary", "summary"),
                 ("audit", "claimed vs audited ε"),
                 ("membership", "membership"), ("inversion", "inversion"), ("curves", "curves"),
                 ("roc", "ROC"), ("grids", "inversion grids")]) + "</p></nav>"]

    def table(anchor: str, t) -> None:
        parts.append(f'<h2 id="{anchor}">{html.escape(t.title)}</h2>')
        parts.append(_table_html(t.display))
        parts.append(_notes(t.notes))

    table("accuracy", by["accuracy"])
    if "study" in by:
        table("study", by["study"])
    parts.append('<h2 id="summary">Every metric (mean ± std over seeds)</h2>')
    parts.append(_table_html(summary))
    parts.append(_notes(["Accuracies in %; leakage metrics raw (AUC 0.5 = chance). ε spent is what the accountant "
                         "recorded, with its privacy unit, δ and accountant."]))
    parts.append('<h2 id="audit">Claimed vs audited ε</h2>')
    body, notes = audit_section(run_dir, frame)
    parts += [body, _notes(notes)]
    table("membership", by["membership"])
    table("inversion", by["inversion"])
    parts.append('<h2 id="curves">Accuracy and leakage vs ε</h2>')
    parts.append(_figures(plots) or "<p><em>(no curves)</em></p>")
    parts.append('<h2 id="roc">Membership ROC per cell (linear and log-log)</h2>')
    if roc:
        parts.append(f"<details><summary>{len(roc)} ROC figure(s)</summary>{_figures(roc)}</details>")
    else:
        parts.append("<p><em>(no membership attack with stored scores)</em></p>")
    parts.append('<h2 id="grids">Model inversion reconstructions</h2>')
    combined = [g for g in grids if g.parent.name != "cells"]
    cells = [g for g in grids if g.parent.name == "cells"]
    parts.append(_figures(combined) or "<p><em>(no inversion attack in this run)</em></p>")
    if cells:
        parts.append(f"<details><summary>{len(cells)} per-cell grid(s)</summary>{_figures(cells)}</details>")
    if failed:
        parts.append('<h2 id="failed" class="fail">Cells not done</h2><ul class="notes">' + "".join(
            f"<li>{html.escape(str(c['dataset']))} {html.escape(str(c['defense']))} ε={c['epsilon']} seed {c['seed']}: "
            f"{html.escape(c['status'])} {html.escape(((c['error'] or '').strip().splitlines() or [''])[-1][:300])}</li>"
            for c in failed) + "</ul>")
    doc = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>Report: {html.escape(Path(run_dir).resolve().name)}</title><style>{_CSS}</style></head>"
           f"<body>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
