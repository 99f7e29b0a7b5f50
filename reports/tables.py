"""Tables from a run store: rows = (dataset, defense, epsilon), columns = utility and leakage
metrics as mean ± std over seeds, epsilon shown with its unit, delta and accountant."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.store import Store

#: metrics shown in the main table, in order (source, name, label, higher_is_worse)
MAIN_COLUMNS = [
    ("utility", "test_acc", "test acc", False),
    ("utility", "val_acc", "val acc", False),
    ("loss-threshold", "auc", "LT AUC", True),
    ("loss-threshold", "tpr_at_1%fpr", "LT TPR@1%FPR", True),
    ("lira", "auc", "LiRA AUC", True),
    ("lira", "tpr_at_1%fpr", "LiRA TPR@1%FPR", True),
    ("rmia", "auc", "RMIA AUC", True),
    ("rmia", "tpr_at_1%fpr", "RMIA TPR@1%FPR", True),
    ("rmia", "eps_lb", "RMIA ε̂ (95 %)", True),
]
#: per-attack diagnostics left out of the summary table (they stay in summary.csv)
_HIDDEN_SUFFIXES = ("_ci_lo", "_ci_hi", "n_members", "n_nonmembers", "_seconds", "n_references")


def open_run(run_dir: str | Path) -> Store:
    if not Store.exists(run_dir):
        raise BenchError(f"{run_dir} holds no run (no results.sqlite); run `bench run --suite ... --out {run_dir}` first")
    return Store(run_dir, create=False)


def load_frame(run_dir: str | Path) -> pd.DataFrame:
    """One row per (finished cell, metric): dataset, defense, epsilon, seed, unit, source, metric, value."""
    store = open_run(run_dir)
    try:
        cells = store.cells("done")
        metrics = store.metrics()
    finally:
        store.close()
    if not cells:
        raise BenchError(f"{run_dir}: the run has no finished cells")
    meta = {}
    for c in cells:
        priv = json.loads(c["privacy"] or "{}") or {}
        cfg = json.loads(c["config"])
        target = cfg.get("epsilon")
        meta[c["cell_key"]] = {
            "dataset": c["dataset"], "defense": c["defense"], "seed": c["seed"],
            "epsilon": "inf" if c["epsilon"] is None else f"{c['epsilon']:g}",
            "target_epsilon": target if isinstance(target, str) else (None if target is None else float(target)),
            "unit": priv.get("unit", "none"), "delta": priv.get("delta"), "accountant": priv.get("accountant", ""),
        }
    rows = [{**meta[m["cell_key"]], "source": m["source"], "metric": m["name"], "value": m["value"]}
            for m in metrics if m["cell_key"] in meta]
    return pd.DataFrame(rows)


def _eps_label(group: pd.DataFrame) -> str:
    unit = group["unit"].iloc[0]
    if unit == "none":
        return "∞ (not private)"
    spent = group[(group.source == "privacy") & (group.metric == "epsilon_spent")]["value"]
    acc = group["accountant"].iloc[0]
    delta = group["delta"].iloc[0]
    return f"{spent.max():.3g} ({unit}, δ={delta:g}, {acc})" if len(spent) else f"? ({unit})"


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds for every metric; one row per (dataset, defense, epsilon)."""
    keys = ["dataset", "defense", "epsilon"]
    out = []
    for k, g in df.groupby(keys, sort=True):
        row = dict(zip(keys, k))
        row["ε spent (unit, δ, accountant)"] = _eps_label(g)
        row["seeds"] = g["seed"].nunique()
        for (src, met), mg in g.groupby(["source", "metric"]):
            vals = mg["value"].astype(float)
            row[(src, met)] = (vals.mean(), vals.std(ddof=1) if len(vals) > 1 else 0.0)
        out.append(row)
    return pd.DataFrame(out)


def _fmt(v, pct: bool) -> str:
    if not isinstance(v, tuple) or v[0] is None or (isinstance(v[0], float) and math.isnan(v[0])):
        return "—"
    m, s = v
    return f"{100 * m:.2f} ± {100 * s:.2f}" if pct else f"{m:.3f} ± {s:.3f}"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    cols = ["dataset", "defense", "epsilon", "ε spent (unit, δ, accountant)", "seeds"]
    disp = summary[cols].copy()
    metric_cols = [c for c in summary.columns if isinstance(c, tuple)]
    ordered = [(s, n) for s, n, _, _ in MAIN_COLUMNS if (s, n) in metric_cols]
    ordered += sorted(c for c in metric_cols if c not in ordered and c[0] not in ("privacy",)
                      and not c[1].endswith(_HIDDEN_SUFFIXES) and c[1] != "fit_seconds")
    for s, n in ordered:
        label = next((lab for ss, nn, lab, _ in MAIN_COLUMNS if (ss, nn) == (s, n)), f"{s}: {n}")
        pct = n.endswith("acc") and s in ("utility", "inversion-target")
        disp[label + (" (%)" if pct else "")] = [_fmt(v, pct) for v in summary[(s, n)]]
    return disp


def long_table(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["dataset", "defense", "epsilon", "unit", "source", "metric"])["value"]
    return g.agg(["mean", "std", "count"]).reset_index()


def write_report(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    df = load_frame(run_dir)
    out = Path(out) if out else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    disp = display_table(summary_table(df))
    paths = []
    md = out / "summary.md"
    md.write_text("# Results\n\nMean ± std over seeds. Accuracies in %; leakage metrics raw "
                  "(AUC 0.5 = chance). ε is what the accountant recorded, with its privacy unit.\n\n"
                  + disp.to_markdown(index=False) + "\n")
    paths.append(md)
    # claimed vs audited eps (audit.md/csv); a loud warning line in summary.md when a row is flagged
    from .audit_table import write_audit_report

    paths += write_audit_report(run_dir, df, out, summary_md=md)
    csv = out / "summary.csv"
    long_table(df).to_csv(csv, index=False)
    paths.append(csv)
    tex = out / "summary.tex"
    tex.write_text(disp.to_latex(index=False, escape=True, column_format="l" * len(disp.columns))
                   .replace("±", "$\\pm$"))
    paths.append(tex)
    from .inversion_grid import write_grids
    from .roc import plot_run

    paths += plot_run(run_dir, out / "roc")
    paths += write_grids(run_dir, out / "inversion")
    return paths
