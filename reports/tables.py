"""Tables from a run store, each as Markdown, LaTeX (booktabs) and CSV.

* ``summary``: rows = (dataset, defense, epsilon), columns = utility and leakage metrics as
  mean ± std over seeds, epsilon shown with its unit, delta and accountant.
* ``accuracy``: the DPSD paper's layout - rows = methods (suite variants), columns = dataset x
  target epsilon, our test accuracy mean ± std over seeds, and the published numbers of
  ``reports/published.yaml`` in their own columns, each with its source and caveat.
* ``membership``: per (dataset, defense, epsilon, attack): AUC, TPR at 0.1 % / 1 % FPR (%),
  balanced accuracy, empirical epsilon lower bound.
* ``inversion``: per (dataset, defense, epsilon, attack): the judge's top-1 / top-2 accuracy over
  the private classes, top-5 over all classes, the attacker's selected top-1, KNN distance, FID,
  LPIPS (see ``attacks/_inversion.py``).

``write_report`` writes all of them, the plots (``reports/plots.py``, ``reports/roc.py``,
``reports/inversion_grid.py``) and one self-contained ``report.html`` (``reports/html.py``).

Every table names an attack's metric column ``"<attack>: <metric>"`` with the labels of
:data:`METRIC_LABELS` (one spelling of ``TPR@1%FPR`` etc.), and shows rates - accuracies, TPRs,
balanced accuracies, inversion top-k - in % (:func:`is_percent`); the CSVs keep the raw numbers.
The membership / inversion tables (and their files) exist only when such an attack ran.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from bench.core.errors import BenchError
from bench.core.store import Store

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


#: metrics shown first in the main table, in order (source, name, label, higher_is_worse)
MAIN_COLUMNS = [(s, n, column_label(s, n), w) for s, n, w in [
    ("utility", "test_acc", False),
    ("utility", "val_acc", False),
    ("loss-threshold", "auc", True),
    ("loss-threshold", "tpr_at_1%fpr", True),
    ("lira", "auc", True),
    ("lira", "tpr_at_1%fpr", True),
    ("rmia", "auc", True),
    ("rmia", "tpr_at_1%fpr", True),
    ("rmia", "eps_lb", True),
]]
#: per-attack diagnostics left out of the summary table (they stay in summary.csv)
_HIDDEN_SUFFIXES = ("_ci_lo", "_ci_hi", "n_members", "n_nonmembers", "_seconds", "n_references")
#: the columns that name a row of the summary table (repeated in each part of a split table)
SUMMARY_KEYS = ["dataset", "defense", "epsilon"]


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
            "dataset": c["dataset"], "defense": c["defense"], "method": cfg.get("defense", c["defense"]),
            "seed": c["seed"],
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


def _metric_order(col: tuple[str, str]) -> tuple:
    """An attack's columns together, its labelled metrics first (in METRIC_LABELS' order), then the rest."""
    src, met = col
    base = next((met[len(p):] for p in _METRIC_PREFIXES if met.startswith(p)), met)
    known = list(METRIC_LABELS)
    return (src, known.index(base) if base in known else len(known), met)


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as formatted strings: the row keys, the ε the accountant recorded, then one column
    per metric labelled ``"<attack>: <metric>"`` (:func:`column_label`), rates in % (:func:`is_percent`)."""
    cols = SUMMARY_KEYS + ["ε spent (unit, δ, accountant)", "seeds"]
    disp = summary[cols].copy()
    metric_cols = [c for c in summary.columns if isinstance(c, tuple)]
    ordered = [(s, n) for s, n, _, _ in MAIN_COLUMNS if (s, n) in metric_cols]
    ordered += sorted((c for c in metric_cols if c not in ordered and c[0] not in ("privacy",)
                       and not c[1].endswith(_HIDDEN_SUFFIXES) and c[1] != "fit_seconds"), key=_metric_order)
    for s, n in ordered:
        disp[column_label(s, n)] = [_fmt(v, is_percent(n)) for v in summary[(s, n)]]
    return disp


def long_table(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["dataset", "defense", "epsilon", "unit", "source", "metric"])["value"]
    return g.agg(["mean", "std", "count"]).reset_index()


# ------------------------------------------------------------------------------------------------
# Paper-style tables
# ------------------------------------------------------------------------------------------------

#: the published numbers shown beside ours (source and caveat per entry)
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")

#: membership metrics: (metric, label, percent)
MEMBERSHIP_COLUMNS = [(m, metric_label(m), is_percent(m)) for m in
                      ("auc", "tpr_at_0.1%fpr", "tpr_at_1%fpr", "balanced_acc", "eps_lb", "eps_lb_max_certifiable")]
#: inversion metrics of attacks/_inversion.py: (metric, label, percent)
INVERSION_COLUMNS = [(m, metric_label(m), is_percent(m)) for m in
                     ("top1", "top2", "top5_all", "top1_selected", "knn_dist", "fid", "lpips")]


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


def load_published(path: str | Path | None = None) -> tuple[list[dict], dict]:
    """(entries, sources) of the published-numbers file; malformed file -> BenchError."""
    path = Path(path) if path else PUBLISHED_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise BenchError(f"cannot read the published numbers {path}: {e}") from None
    sources = data.get("sources") or {}
    entries = data.get("entries") or []
    for e in entries:
        missing = {"method", "dataset", "epsilon", "accuracy", "source", "caveat"} - set(e)
        if missing or e["source"] not in sources:
            raise BenchError(f"{path}: entry {e} lacks {sorted(missing) or 'a known source'}")
    return entries, sources


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


def accuracy_table(df: pd.DataFrame, published: str | Path | None = None) -> Table:
    """Rows = methods (suite variants), columns = dataset x target epsilon; test accuracy (%) mean
    ± std over seeds. Non-private methods fill the dataset's ``ε=∞`` column. Published numbers
    (``published.yaml``) for a (dataset, ε) column of this run stand in their own column, each
    with its source marker; methods only published get a row of their own."""
    entries, sources = load_published(published)
    acc = df[(df.source == "utility") & (df.metric == "test_acc")]
    methods = _defense_order(df)
    cols = sorted({(d, e) for d, e in zip(acc["dataset"], acc["epsilon"])}, key=lambda c: (c[0], _eps_num(c[1])))
    pub = [e for e in entries if (e["dataset"], f"{float(e['epsilon']):g}") in set(cols)]
    marks: dict[str, int] = {}
    for e in pub:
        marks.setdefault(e["source"], len(marks) + 1)
    method_of = df.groupby("defense")["method"].first().to_dict()
    unit_of = df.groupby("defense")["unit"].first().to_dict()
    rows = methods + sorted({e["method"] for e in pub} - set(method_of.values()))
    deltas = df[df.delta.notna() & (df.unit != "none")].groupby("dataset")["delta"].first().to_dict()
    disp_rows, data_rows = [], []
    for r in rows:
        ran = r in method_of
        drow = {"method": r if ran else f"{r} (not run)", "privacy unit": unit_of.get(r, "—")}
        for ds, eps in cols:
            label = f"{ds} ε={_eps_text(eps)}"
            vals = acc[(acc.defense == r) & (acc.dataset == ds) & (acc.epsilon == eps)]["value"] if ran else acc.iloc[:0]["value"]
            m, sd, n = _mean_std(vals)
            drow[f"{label} (ours, %)"] = _cell(m, sd, True) if n != 1 else f"{100 * m:.2f} (1 seed)"
            if n:
                data_rows.append({"method": r, "unit": unit_of[r], "dataset": ds, "epsilon": eps, "kind": "ours",
                                  "accuracy_mean": 100 * m, "accuracy_std": 100 * sd, "seeds": n,
                                  "source": "this run", "caveat": ""})
            if eps == "inf":
                continue
            here = [e for e in pub if e["dataset"] == ds and f"{float(e['epsilon']):g}" == eps
                    and e["method"] == (method_of.get(r, r))]
            if any(e["dataset"] == ds and f"{float(e['epsilon']):g}" == eps for e in pub):
                drow[f"{label} (published, %)"] = "; ".join(f"{e['accuracy']:.2f} [{marks[e['source']]}]"
                                                            for e in here) or "—"
            for e in here:
                data_rows.append({"method": r, "unit": unit_of.get(r, ""), "dataset": ds, "epsilon": eps,
                                  "kind": "published", "accuracy_mean": float(e["accuracy"]), "accuracy_std": math.nan,
                                  "seeds": math.nan, "source": sources[e["source"]]["cite"], "caveat": e["caveat"]})
        disp_rows.append(drow)
    split = describe_test_split(sorted(acc["dataset"].unique()))
    notes = [f"Ours: test accuracy on {split}, mean ± std over seeds; ε is the target budget "
             "(δ " + ", ".join(f"{d}: {v:g}" for d, v in sorted(deltas.items())) + "), in each method's own "
             "privacy unit (example, label, query; metric = metric privacy, not DP): equal ε in different units is not equal privacy. The ε each "
             "accountant recorded is in the summary table."
             if deltas else f"Ours: test accuracy on {split}, mean ± std over seeds."]
    for src, k in marks.items():
        notes.append(f"[{k}] {sources[src]['cite']}.")
    for e in pub:
        notes.append(f"Published {e['method']}, {e['dataset']}, ε={float(e['epsilon']):g} "
                     f"({e['accuracy']:.2f} %, [{marks[e['source']]}]): {e['caveat']}")
    disp = pd.DataFrame(disp_rows)
    has_published = any(c.endswith("(published, %)") for c in disp.columns)
    if not has_published:
        notes.append("No published number in reports/published.yaml for these (dataset, ε) columns.")
    title = "Test accuracy (%): ours vs published" if has_published else "Test accuracy (%)"
    return Table("accuracy", title, disp, pd.DataFrame(data_rows), notes)


def official_test_split(dataset: str) -> bool | None:
    """Whether ``dataset`` ships an official test split (its class's ``official_test_split``);
    None for a dataset that is not registered."""
    from bench.core import registry

    try:
        cls = registry.get_dataset(dataset)
    except (BenchError, KeyError):
        return None
    return bool(getattr(cls, "official_test_split", True))


def describe_test_split(datasets: list[str]) -> str:
    """"the official test split" only where every dataset has one; otherwise which do and which not."""
    kinds = {d: official_test_split(d) for d in datasets}
    official = [d for d, k in kinds.items() if k]
    fixed = [d for d, k in kinds.items() if k is False]
    if datasets and len(official) == len(datasets):
        return "the official test split"
    if not fixed:
        return "the dataset's test split"
    words = f"a fixed held-out test split for {', '.join(fixed)} (no official one; see bench/datasets)"
    return f"the official test split for {', '.join(official)} and {words}" if official else words


def _attack_table(df: pd.DataFrame, name: str, title: str, columns: list, key_metric: str, notes: list[str]) -> Table:
    """Rows = (dataset, defense, ε, attack) for the attacks that report ``key_metric``."""
    attacks = sorted(df[df.metric == key_metric]["source"].unique())
    sub = df[df.source.isin(attacks)]
    order = {d: i for i, d in enumerate(_defense_order(df))}
    keys = sorted({(d, f, e, a) for d, f, e, a in zip(sub.dataset, sub.defense, sub.epsilon, sub.source)},
                  key=lambda k: (k[0], order[k[1]], _eps_num(k[2]), k[3]))
    disp_rows, data_rows = [], []
    for ds, dfn, eps, att in keys:
        g = sub[(sub.dataset == ds) & (sub.defense == dfn) & (sub.epsilon == eps) & (sub.source == att)]
        drow = {"dataset": ds, "defense": dfn, "ε": _eps_text(eps), "unit": g["unit"].iloc[0], "attack": att,
                "seeds": int(g["seed"].nunique())}
        for metric, label, pct in columns:
            mg = g[g.metric == metric]["value"]
            if not len(mg):
                continue
            m, sd, n = _mean_std(mg)
            drow[label] = _cell(m, sd, pct, 2 if pct else 3) if n != 1 else f"{(100 if pct else 1) * m:.{2 if pct else 3}f}"
            data_rows.append({"dataset": ds, "defense": dfn, "epsilon": eps, "unit": drow["unit"], "attack": att,
                              "metric": metric, "mean": m, "std": sd, "count": n})
        disp_rows.append(drow)
    disp = pd.DataFrame(disp_rows)
    if len(disp):
        disp = disp.fillna("—")
    return Table(name, title, disp, pd.DataFrame(data_rows), notes)


def membership_table(df: pd.DataFrame) -> Table:
    return _attack_table(df, "membership", "Membership inference leakage", MEMBERSHIP_COLUMNS, "auc", [
        "Mean ± std over seeds. AUC 0.5 and balanced accuracy 50 % are chance; TPR at a low FPR is the "
        "attack's reliability on its most confident guesses (Carlini et al., S&P 2022).",
        "TPR at a fixed FPR is read on the ROC curve with straight segments between its points: tied "
        "scores count as chance (bench/metrics.py).",
        "ε̂: empirical lower bound on ε (example level) at 95 % confidence from the attack's scores "
        "(Clopper-Pearson at thresholds fixed as ranks, Bonferroni over them, ties broken at random; "
        "bench/audit.py), one bound per seed, shown as mean ± std over seeds; 0 = nothing certified. "
        "'largest certifiable ε̂': the bound perfectly separated scores of this sample size would give. "
        "The claimed-vs-audited comparison (family-wise over a row's bounds) is in audit.md."])


def inversion_table(df: pd.DataFrame) -> Table:
    return _attack_table(df, "inversion", "Model inversion leakage", INVERSION_COLUMNS, "top1", [
        "Mean ± std over seeds. Attack accuracy: an independent evaluation classifier's top-1 / top-2 over the "
        "private classes (chance 1/K), top-5 over all its classes, and the attacker's own pick per class "
        "(GMI's rule); higher = more leakage.",
        "KNN dist: squared L2 in the evaluator's features to the nearest private member of the target class; FID: "
        "reconstructions vs private members in the evaluator's features; LPIPS to that nearest member: lower = "
        "more leakage. — = not computed."])


def paper_tables(df: pd.DataFrame, published: str | Path | None = None) -> list[Table]:
    """The accuracy table, and the membership / inversion tables only where such an attack ran."""
    return [accuracy_table(df, published)] + [t for t in (membership_table(df), inversion_table(df)) if len(t.display)]


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


def _inversion_sources(run_dir) -> set[str]:
    """The attack names (suite aliases) of ``run_dir``'s cells whose attack is of kind inversion."""
    from bench.core import registry

    store = open_run(run_dir)
    try:
        cells = store.cells("done")
    finally:
        store.close()
    out = set()
    for c in cells:
        for alias, acfg in (json.loads(c["config"]).get("attacks") or {}).items():
            try:
                if registry.get_attack((acfg or {}).get("method", alias)).kind == "inversion":
                    out.add(alias)
            except BenchError:
                continue
    return out


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
    meta = df.drop_duplicates(key).set_index(key)[[c for c in df.columns if c not in key + ["source", "metric", "value"]]]
    take = take[key + ["source", "metric", "value"]].join(meta, on=key)
    return pd.concat([df, take[df.columns]], ignore_index=True)


def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 inversion_from: str | Path | None = None) -> list[Path]:
    """Every table, figure and report.html of ``run_dir`` into ``out`` (default ``RUN_DIR/report``).
    ``inversion_from``: another run whose inversion attacks ran on the same defenses (e.g. the
    ``dpsd-audit`` membership study and its inversion invocation): their metrics join the tables
    for the rows ``run_dir`` has (:func:`merge_inversion`), and the inversion grids are drawn from
    it. A directory that cannot be created or written is a :class:`BenchError` (one line), not a traceback."""
    df = load_frame(run_dir)
    if inversion_from is not None:
        df = merge_inversion(df, load_frame(inversion_from), _inversion_sources(inversion_from))
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
    from reports.audit_table import write_audit_report

    paths += write_audit_report(run_dir, df, out, summary_md=md)
    csv = out / "summary.csv"
    long_table(df).to_csv(csv, index=False)
    paths.append(csv)
    tex = out / "summary.tex"
    tex.write_text(latex(disp, caption="Every metric, mean ± std over seeds"))
    paths.append(tex)
    # paper-style tables, each as .md/.tex/.csv; none for an attack kind that did not run
    from reports.study import study_table

    tables = paper_tables(df) + [study_table(df, run_dir)]
    for t in tables:
        paths += t.write(out)
    for name in set(_OPTIONAL_TABLES) - {t.name for t in tables}:  # left over from an earlier report
        for ext in ("md", "tex", "csv"):
            (out / f"{name}.{ext}").unlink(missing_ok=True)
    from reports.html import write_html
    from reports.plots import render_figures

    # curves, ROC per cell, combined inversion grids (captions) and per-cell mosaics
    figs = render_figures(run_dir, out, df, inversion_run=inversion_from)
    plots, roc, grids = figs["plots"], figs["roc"], figs["grids"]
    paths += plots + roc + grids
    # one self-contained page holding all of the above
    paths.append(write_html(run_dir, out, summary=disp, tables=tables, plots=plots, roc=roc, grids=grids, frame=df))
    return paths
