"""One self-contained HTML page of a run's report: every table, and every figure embedded as a
base64 ``data:`` URI, no external resource (stylesheet, font, script), no JavaScript; the per-cell
figures sit in ``<details>`` blocks so the page stays readable. Every column is readable on a
1280-px screen and on an A4 landscape page: headers and long cells wrap, and a table wider than
that is split into parts by column group (an attack's columns), each repeating the row keys. A
section, and its link, only for what the run holds (no membership / inversion / ROC / grid
section for an attack kind that did not run).

    from reports.html import write_html
    write_html(run_dir, out_dir, tables, images)   # called by reports.write.write_report
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.core.store import Store

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1400px;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}h3{font-size:1em}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0 .9em}
th,td{border-bottom:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
td.n{white-space:nowrap}
thead th{border-bottom:2px solid #444;background:#f4f4f4}
caption{caption-side:top;text-align:left;font-size:.92em;color:#555;padding:.1em 0}
tbody tr:hover{background:#fafafa}
.notes{font-size:.82em;color:#444}.notes li{margin:.2em 0}
.meta{font-size:.85em;color:#444}.fail{color:#a00}
figure{display:inline-block;margin:.4em;vertical-align:top}figcaption{font-size:.75em;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}
details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
.tbl{overflow-x:auto}
@page{size:A4 landscape;margin:10mm}
@media print{body{max-width:none;margin:0;padding:0;font-size:10pt}table{font-size:7.5pt}
 .tbl{overflow:visible}nav{display:none}h2{break-after:avoid}tr,figure,caption{break-inside:avoid}
 thead{display:table-header-group}tbody tr:hover{background:none}}
"""

#: the width a table (or each part of a split one) may take, in characters of the table font: what a
#: 1280-px window and an A4 landscape page both hold (the Chromium test checks the screen)
TABLE_BUDGET = 140
#: cells up to this many characters are kept on one line ("0.510 ± 0.015"); longer ones wrap
NOWRAP_CHARS = 24
#: padding and border of a cell, in characters
_CELL_PAD = 2


def data_uri(path: str | Path) -> str:
    """The PNG (or SVG) at ``path`` as a ``data:`` URI."""
    path = Path(path)
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _text(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return str(v)


def _min_width(name: str, values) -> int:
    """The narrowest a column can be, in characters: its header wraps at spaces and underscores,
    short cells stay on one line, long ones wrap at spaces (but keep some width)."""
    head = max((len(w) for w in re.split(r"[\s_]+", str(name))), default=1)
    body = 1
    for v in values:
        t = _text(v)
        body = max(body, len(t) if len(t) <= NOWRAP_CHARS
                   else max(min(len(t), NOWRAP_CHARS), *(len(w) for w in t.split())))
    return max(head, body) + _CELL_PAD


def _group(col: str) -> str:
    """The column group of a ``"<attack>: <metric>"`` column (the attack); "" for the others."""
    return str(col).split(": ", 1)[0] if ": " in str(col) else ""


def split_columns(df: pd.DataFrame, keys: Iterable[str] = (), budget: int = TABLE_BUDGET) -> list[list[str]]:
    """The columns of ``df`` in parts that each fit ``budget`` characters: every part starts with the
    ``keys`` columns (what names a row); an attack's columns stay together where they fit in one
    part; a wider group, or a run of ungrouped columns, is cut where the budget ends."""
    keys = [k for k in keys if k in df.columns]
    width = {c: _min_width(c, df[c]) for c in df.columns}
    avail = max(budget - sum(width[k] for k in keys), 1)
    groups: list[list[str]] = []
    for c in (c for c in df.columns if c not in keys):
        g = _group(c)
        if groups and g and _group(groups[-1][0]) == g:
            groups[-1].append(c)
        else:
            groups.append([c])
    parts, cur, used = [], [], 0
    for cols in groups:
        w = sum(width[c] for c in cols)
        if cur and used + w > avail and w <= avail:  # a group that fits a part of its own starts one
            parts.append(cur)
            cur, used = [], 0
        for c in cols:  # a group wider than a whole part fills the current one and is cut
            if cur and used + width[c] > avail:
                parts.append(cur)
                cur, used = [], 0
            cur.append(c)
            used += width[c]
    if cur or not parts:
        parts.append(cur)
    return [keys + p for p in parts]


def _head(col) -> str:
    return html.escape(str(col)).replace("_", "_<wbr>")


def _one_table(df: pd.DataFrame, caption: str = "") -> str:
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{_head(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for v in rec:
            t = _text(v)
            cells.append(f'<td class="n">{html.escape(t)}</td>' if len(t) <= NOWRAP_CHARS
                         else f"<td>{html.escape(t)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="tbl"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _table_html(df: pd.DataFrame, keys: Iterable[str] | None = None) -> str:
    """``df`` as one table, or - when it is wider than a screen or a page - as several, each with the
    row keys (default: the first column) and a caption naming its part and column groups."""
    if df is None or not len(df):
        return "<p><em>(no rows in this run)</em></p>"
    keys = list(df.columns[:1]) if keys is None else list(keys)
    parts = split_columns(df, keys)
    if len(parts) == 1:
        return _one_table(df)
    out = []
    for i, cols in enumerate(parts, 1):
        groups = list(dict.fromkeys(_group(c) for c in cols if c not in keys and _group(c)))
        what = f": {', '.join(groups)}" if groups else ""
        out.append(_one_table(df[cols], f"part {i} of {len(parts)}{what}"))
    return "".join(out)


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
        from reports import audit_table as mod
    except ImportError:
        return "<p><em>Claimed-vs-audited ε table not available: reports/audit_table.py is not installed.</em></p>", []
    table = mod.audit_table(frame, mod.example_level_claims(run_dir), mod.familywise_bounds(run_dir),
                            mod.familywise_own_unit(run_dir))
    disp = table.copy()
    for c in disp.columns:
        disp[c] = [("yes" if v else "no") if c == "dp_claim" else mod._fmt(v).replace("**", "") for v in disp[c]]
    warn = mod.warning_line(table).lstrip("> ").replace("**", "")
    head = f'<p class="fail"><strong>{html.escape(warn)}</strong></p>' if warn else ""
    return head + _table_html(disp, ["dataset", "defense", "epsilon"]), [
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


#: the columns that name a row of each table (repeated in every part of a split table)
TABLE_KEYS = {"accuracy": ["method"], "study": ["dataset", "defense", "ε target"],
              "membership": ["dataset", "defense", "ε", "attack"], "inversion": ["dataset", "defense", "ε", "attack"],
              "timing": ["defense"], "timing-attacks": ["defense"]}
SUMMARY_KEYS = ["dataset", "defense", "epsilon"]


def write_html(run_dir: str | Path, out_dir: str | Path, *, summary: pd.DataFrame, tables: list,
               plots: list[Path], roc: list[Path], grids: list[Path], frame: pd.DataFrame) -> Path:
    """Write ``out_dir/report.html``. ``tables``: :class:`reports.frame.Table` objects (accuracy,
    study, and membership / inversion where such attacks ran); ``summary``: the summary display
    table; figure paths are embedded. A section (and its link) only for what the run holds."""
    out = Path(out_dir)
    meta, failed = _run_meta(run_dir)
    by = {t.name: t for t in tables}
    nav: list[tuple[str, str]] = []
    body: list[str] = []

    def section(anchor: str, nav_title: str, heading: str) -> None:
        nav.append((anchor, nav_title))
        body.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2>')

    def table(anchor: str, nav_title: str, t) -> None:
        section(anchor, nav_title, t.title)
        body.append(_table_html(t.display, TABLE_KEYS.get(t.name)))
        body.append(_notes(t.notes))

    table("accuracy", "accuracy", by["accuracy"])
    if "study" in by:
        table("study", "privacy study", by["study"])
    section("summary", "summary", "Every metric (mean ± std over seeds)")
    body.append(_table_html(summary, SUMMARY_KEYS))
    body.append(_notes(["Columns are named attack: metric; accuracies, TPRs and balanced accuracies in %, AUC, "
                        "advantage and ε̂ raw (AUC 0.5 = chance). ε spent is what the accountant recorded, with "
                        "its privacy unit, δ and accountant. A table too wide for a screen or a page is split "
                        "into parts by attack, each repeating the row's dataset, defense and ε."]))
    section("audit", "claimed vs audited ε", "Claimed vs audited ε")
    audit, notes = audit_section(run_dir, frame)
    body += [audit, _notes(notes)]
    for name in ("membership", "inversion"):
        if name in by and len(by[name].display):
            table(name, name, by[name])
    if plots:
        section("curves", "curves", "Accuracy and leakage vs ε")
        body.append(_figures(plots))
    if roc:
        section("roc", "ROC", "Membership ROC per cell (linear and log-log)")
        body.append(f"<details><summary>{len(roc)} ROC figure(s)</summary>{_figures(roc)}</details>")
    combined = [g for g in grids if g.parent.name != "cells"]
    cells = [g for g in grids if g.parent.name == "cells"]
    if combined or cells:
        section("grids", "inversion grids", "Model inversion reconstructions")
        body.append(_figures(combined))
        if cells:
            body.append(f"<details><summary>{len(cells)} per-cell grid(s)</summary>{_figures(cells)}</details>")
    for name, nav_title in (("timing", "timing"), ("timing-attacks", "attack timing")):
        if name in by and len(by[name].display):
            table(name, nav_title, by[name])
    if failed:
        section("failed", "cells not done", "Cells not done")
        body[-1] = body[-1].replace("<h2 ", '<h2 class="fail" ', 1)
        body.append('<ul class="notes">' + "".join(
            f"<li>{html.escape(str(c['dataset']))} {html.escape(str(c['defense']))} ε={c['epsilon']} seed {c['seed']}: "
            f"{html.escape(c['status'])} {html.escape(((c['error'] or '').strip().splitlines() or [''])[-1][:300])}</li>"
            for c in failed) + "</ul>")
    parts = [f"<h1>Privacy benchmark report: {html.escape(Path(run_dir).resolve().name)}</h1>",
             f'<div class="meta">{meta}<div>rendered {time.strftime("%Y-%m-%d %H:%M:%S")} by '
             f"<code>bench report</code> from <code>{html.escape(str(Path(run_dir)))}</code></div></div>",
             "<nav><p>" + " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in nav) + "</p></nav>",
             *body]
    doc = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>Report: {html.escape(Path(run_dir).resolve().name)}</title><style>{_CSS}</style></head>"
           f"<body>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
