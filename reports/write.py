"""``bench report``: every table, figure and ``report.html`` of a run (:func:`write_report`).

The tables come from :mod:`reports.tables` (summary, accuracy, membership, inversion),
:mod:`reports.study` and :mod:`reports.audit_table`; the figures from :mod:`reports.plots`
(curves, ROC via :mod:`reports.roc`, inversion grids via :mod:`reports.inversion_grid`); the page
from :mod:`reports.html`.

    from reports.write import write_report
    write_report("runs/mnist-eps1")             # -> runs/mnist-eps1/report/
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from reports.audit_table import write_audit_report
from reports.frame import latex, load_frame
from reports.html import write_html
from reports.kinds import frame_kinds
from reports.plots import render_figures
from reports.study import study_table
from reports.tables import display_table, long_table, paper_tables, summary_table
from reports.timing import timing_tables

#: the files of the tables a run may not have (an attack kind that did not run)
_OPTIONAL_TABLES = ("membership", "inversion")


def _os_error(out: Path, e: OSError) -> str:
    """One line for an OSError while writing the report: which directory, why, and the file."""
    where = Path(e.filename) if isinstance(e.filename, (str, Path)) else None
    what = e.strerror or str(e)
    if where is not None and out.resolve() not in (where.resolve(), *where.resolve().parents):
        msg = f"bench report failed on {where}: {what}"
    else:
        msg = f"cannot write the report to {out}: {what}" + (f" ({where})" if where is not None and where != out else "")
    return " ".join(msg.split())


def _inversion_sources(frame: pd.DataFrame) -> set[str]:
    """The attack names (suite aliases) of a run's frame whose attack is of kind inversion (the
    kind the run recorded; :mod:`reports.kinds`)."""
    return {s for s, k in frame_kinds(frame).items() if k == "inversion"}


def merge_inversion(df: pd.DataFrame, other: pd.DataFrame, sources: set[str]) -> pd.DataFrame:
    """``df`` plus the inversion metrics of ``other`` (attacks in ``sources`` and the
    ``inversion-target`` utility) for the (dataset, defense, ε, seed) rows that ``df`` has and
    that lack them: inversion attacks of the same defenses run in a separate invocation. Nothing
    else of ``other`` is taken (its own utility, privacy and membership rows stay out)."""
    key = ["dataset", "defense", "epsilon", "seed"]
    have = df[key].drop_duplicates()
    take = other[other.source.isin(sources | {"inversion-target"})]
    take = take[~take.source.isin(set(df.source))]
    take = take.merge(have, on=key, how="inner")
    if not len(take):
        return df
    own = ["source", "metric", "value"] + [c for c in ("attack_method", "attack_kind") if c in take.columns]
    meta = df.drop_duplicates(key).set_index(key)[[c for c in df.columns if c not in key + own]]
    take = take[key + own].join(meta, on=key)
    return pd.concat([df, take.reindex(columns=df.columns)], ignore_index=True)


def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 inversion_from: str | Path | None = None) -> list[Path]:
    """Every table, figure and report.html of ``run_dir`` into ``out`` (default ``RUN_DIR/report``).
    ``inversion_from``: another run whose inversion attacks ran on the same defenses (e.g. the
    ``dpsd-audit`` membership study and its inversion invocation): their metrics join the tables
    for the rows ``run_dir`` has (:func:`merge_inversion`), and the inversion grids are drawn from
    it. A directory that cannot be created or written is a :class:`BenchError` (one line), not a traceback."""
    df = load_frame(run_dir)
    if inversion_from is not None:
        other = load_frame(inversion_from)
        df = merge_inversion(df, other, _inversion_sources(other))
    out = Path(out) if out else Path(run_dir) / "report"
    if out.exists() and not out.is_dir():
        raise BenchError(f"cannot write the report to {out}: it is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(_os_error(out, e)) from None
    try:
        with tempfile.TemporaryFile(dir=out):  # fails now, not after the figures, on a read-only directory
            pass
    except OSError as e:
        raise BenchError(f"cannot write the report to {out}: {e.strerror or e}") from None
    try:
        return _write_report(run_dir, out, df, inversion_from)
    except OSError as e:
        raise BenchError(_os_error(out, e)) from None


def _write_report(run_dir: str | Path, out: Path, df: pd.DataFrame, inversion_from=None) -> list[Path]:
    disp = display_table(summary_table(df))
    paths = []
    md = out / "summary.md"
    md.write_text("# Results\n\nMean ± std over seeds. Columns `<attack>: <metric>`; accuracies, TPRs and balanced "
                  "accuracies in %, AUC, advantage and ε̂ raw (AUC 0.5 = chance). ε is what the accountant recorded, "
                  "with its privacy unit.\n\n" + disp.to_markdown(index=False) + "\n")
    paths.append(md)
    # claimed vs audited eps (audit.md/csv); a loud warning line in summary.md when a row is flagged
    paths += write_audit_report(run_dir, df, out, summary_md=md)
    csv = out / "summary.csv"
    long_table(df).to_csv(csv, index=False)
    paths.append(csv)
    tex = out / "summary.tex"
    tex.write_text(latex(disp, caption="Every metric, mean ± std over seeds"))
    paths.append(tex)
    # paper-style tables, each as .md/.tex/.csv; none for an attack kind that did not run
    tables = paper_tables(df) + [study_table(df, run_dir)] + timing_tables(run_dir, df)
    for t in tables:
        paths += t.write(out)
    for name in set(_OPTIONAL_TABLES + ("timing", "timing-attacks")) - {t.name for t in tables}:  # left over from an earlier report
        for ext in ("md", "tex", "csv"):
            (out / f"{name}.{ext}").unlink(missing_ok=True)
    # curves, ROC per cell, combined inversion grids (captions) and per-cell mosaics
    figs = render_figures(run_dir, out, df, inversion_run=inversion_from)
    plots, roc, grids = figs["plots"], figs["roc"], figs["grids"]
    paths += plots + roc + grids
    # one self-contained page holding all of the above
    paths.append(write_html(run_dir, out, summary=disp, tables=tables, plots=plots, roc=roc, grids=grids, frame=df))
    return paths
