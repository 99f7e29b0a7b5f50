"""What every report module shares: the run's metrics frame, metric labels, formatting, and the
:class:`Table` (Markdown, LaTeX booktabs, CSV) the table builders return.

* :func:`load_frame`: one row per (finished cell, metric), with each attack's registered method
  and kind (:mod:`reports.kinds`);
* :data:`METRIC_LABELS`, :func:`metric_label`, :func:`column_label`, :func:`is_percent`: every
  table names an attack's metric column ``"<attack>: <metric>"`` with these labels (one spelling of
  ``TPR@1%FPR`` etc.) and shows rates - accuracies, TPRs, balanced accuracies, inversion top-k -
  in %; the CSVs keep the raw numbers;
* :func:`latex`, and the cell formatting helpers of the table modules.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from bench.core.store import Store
from reports.kinds import MODEL_SOURCES, guess_kind, run_attacks

#: labels of the metrics every table shares; a column of an attack's metric is ``"<attack>: <label>"``
#: (e.g. ``loss-threshold: TPR@1%FPR (%)``), the model's own metrics stand alone (``test acc (%)``)
METRIC_LABELS = {
    "test_acc": "test acc", "val_acc": "val acc",
    "auc": "AUC", "tpr_at_0.1%fpr": "TPR@0.1%FPR", "tpr_at_1%fpr": "TPR@1%FPR", "balanced_acc": "balanced acc",
    "advantage": "advantage", "eps_lb": "ε̂ lower bound (95 %)", "eps_lb_max_certifiable": "largest certifiable ε̂",
    "top1": "attack acc top-1", "top2": "top-2", "top5_all": "top-5, all classes", "top1_selected": "selected top-1",
    "knn_dist": "KNN dist", "fid": "FID", "lpips": "LPIPS",
}
#: variants of a metric, named by a prefix (``offline_tpr_at_1%fpr`` -> ``offline TPR@1%FPR (%)``)
_METRIC_PREFIXES = ("offline_fixed_", "online_fixed_", "offline_", "online_", "canary_", "heldout_")
#: the inversion metrics that are fractions of the classes (shown in %)
_INVERSION_RATES = ("top1", "top2", "top5_all", "top1_selected")
#: sources whose metrics are the model's own, not an attack's
_MODEL_SOURCES = ("utility",)
#: the columns that name a row of the summary table (repeated in each part of a split table)
SUMMARY_KEYS = ["dataset", "defense", "epsilon"]


def is_percent(metric: str) -> bool:
    """Rates of examples - accuracies, TPRs, balanced accuracies, inversion top-k - are shown in %
    in every table and plot; AUC, advantage, ε and distances as they are."""
    return metric.endswith("acc") or "tpr_at_" in metric or metric in _INVERSION_RATES


def metric_label(metric: str) -> str:
    """The display label of a metric, with ``(%)`` when it is shown in percent."""
    prefix, base = "", metric
    if metric not in METRIC_LABELS:
        for p in _METRIC_PREFIXES:
            if metric.startswith(p) and metric[len(p):] in METRIC_LABELS:
                prefix, base = p.rstrip("_").replace("_", " ") + " ", metric[len(p):]
                break
    label = prefix + METRIC_LABELS.get(base, metric)
    return label + " (%)" if is_percent(metric) else label


def column_label(source: str, metric: str) -> str:
    """``"<attack>: <metric label>"``; the model's own metrics (``utility``) without a prefix."""
    label = metric_label(metric)
    return label if source in _MODEL_SOURCES else f"{source}: {label}"


def open_run(run_dir: str | Path) -> Store:
    if not Store.exists(run_dir):
        raise BenchError(f"{run_dir} holds no run (no results.sqlite); run `bench run --suite ... --out {run_dir}` first")
    return Store(run_dir, create=False)


def load_frame(run_dir: str | Path) -> pd.DataFrame:
    """One row per (finished cell, metric): dataset, defense, epsilon, seed, unit, source, metric,
    value, and for an attack's rows its registered method and kind (``attack_method``,
    ``attack_kind``; None on the model's own rows), as :mod:`reports.kinds` finds them."""
    store = open_run(run_dir)
    try:
        cells = store.cells("done")
        metrics = store.metrics()
        recorded = store.attack_kinds()
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
            "dataset": c["dataset"], "defense": c["defense"], "method": cfg.get("defense", c["defense"]),
            "seed": c["seed"],
            "epsilon": "inf" if c["epsilon"] is None else f"{c['epsilon']:g}",
            "target_epsilon": target if isinstance(target, str) else (None if target is None else float(target)),
            "unit": priv.get("unit", "none"), "delta": priv.get("delta"), "accountant": priv.get("accountant", ""),
            "selection": priv.get("selection", ""),
            "defense_config": json.dumps(cfg.get("defense_config") or {}, sort_keys=True),
        }
    rows = [{**meta[m["cell_key"]], "source": m["source"], "metric": m["name"], "value": m["value"]}
            for m in metrics if m["cell_key"] in meta]
    attacks = run_attacks(recorded, cells)
    names: dict[str, set] = {}
    for r in rows:
        names.setdefault(r["source"], set()).add(r["metric"])
    for s, ms in names.items():
        if s not in MODEL_SOURCES:
            method, kind = attacks.get(s, (s, None))
            attacks[s] = (method, kind or guess_kind(ms))
    for r in rows:
        r["attack_method"], r["attack_kind"] = (None, None) if r["source"] in MODEL_SOURCES else attacks[r["source"]]
    return pd.DataFrame(rows)


@dataclass
class Table:
    """A rendered table: ``display`` (formatted strings, what md/tex/html show), ``data`` (raw
    numbers, what the CSV holds), a title and notes printed under it."""

    name: str
    title: str
    display: pd.DataFrame
    data: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        body = self.display.to_markdown(index=False) if len(self.display) else "_(no rows in this run)_"
        notes = "".join(f"\n- {n}" for n in self.notes)
        return f"## {self.title}\n\n{body}\n{notes}\n"

    def write(self, out: Path) -> list[Path]:
        paths = [out / f"{self.name}.md", out / f"{self.name}.tex", out / f"{self.name}.csv"]
        paths[0].write_text(self.markdown())
        paths[1].write_text(latex(self.display, caption=self.title))
        self.data.to_csv(paths[2], index=False)
        return paths


_LATEX_UNICODE = {"±": r"$\pm$", "ε̂": r"$\hat\varepsilon$", "ε": r"$\varepsilon$", "δ": r"$\delta$",
                  "∞": r"$\infty$", "—": "---", "≤": r"$\le$", "≥": r"$\ge$"}


def latex(disp: pd.DataFrame, caption: str | None = None) -> str:
    r"""A booktabs tabular (``\toprule``/``\midrule``/``\bottomrule``; needs ``\usepackage{booktabs}``)
    through pandas' Styler, text escaped, the few symbols we use turned into math."""
    styler = disp.style.hide(axis="index").format(escape="latex", na_rep="---").format_index(escape="latex", axis=1)
    if caption:
        caption = caption.replace("\\", r"\textbackslash{}").replace("%", r"\%").replace("&", r"\&").replace("_", r"\_")
    tex = styler.to_latex(hrules=True, column_format="l" * len(disp.columns), caption=caption)
    for k, v in _LATEX_UNICODE.items():
        tex = tex.replace(k, v)
    return tex


def _eps_num(e: str) -> float:
    return math.inf if e == "inf" else float(e)


def _eps_text(e) -> str:
    return "∞" if str(e) == "inf" or (isinstance(e, float) and math.isinf(e)) else f"{float(e):g}"


def _defense_order(df: pd.DataFrame) -> list[str]:
    """Non-private rows first (the reference), then the private ones, alphabetically."""
    units = df.groupby("defense")["unit"].first()
    return sorted(units.index, key=lambda d: (units[d] != "none", d))


def _mean_std(vals: pd.Series) -> tuple[float, float, int]:
    vals = vals.astype(float).dropna()
    if not len(vals):
        return math.nan, math.nan, 0
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def _cell(m: float, s: float, pct: bool, digits: int = 2) -> str:
    if m is None or math.isnan(m):
        return "—"
    f = 100.0 if pct else 1.0
    return f"{f * m:.{digits}f} ± {f * s:.{digits}f}"
