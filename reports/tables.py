"""The tables of a run, each as Markdown, LaTeX (booktabs) and CSV (:class:`reports.frame.Table`).

* ``summary``: rows = (dataset, defense, epsilon), columns = utility and leakage metrics as
  mean ± std over seeds, epsilon shown with its unit, delta and accountant; the model's test and
  validation accuracy and each attack's declared ``summary`` metrics lead (:mod:`reports.kinds`).
* ``accuracy``: the DPSD paper's layout - rows = methods (suite variants), columns = dataset x
  target epsilon, our test accuracy mean ± std over seeds, and the published numbers of
  ``reports/published.yaml`` in their own columns, each with its source and caveat.
* ``membership``: per (dataset, defense, epsilon, attack) of kind membership or generator: AUC,
  TPR at 0.1 % / 1 % FPR (%), balanced accuracy, empirical epsilon lower bound.
* ``generator``: per (dataset, defense, epsilon) with a generator attack: the student's test
  accuracy, each generator attack's AUC and privacy loss (P - 0.5) / 0.5, and the utility matrix
  p1..p4 with p1 - p2 (the generator table of the DP-generator papers and the course slides).
* ``inversion``: per (dataset, defense, epsilon, attack) of kind inversion: the judge's top-1 /
  top-2 accuracy over the private classes, top-5 over all classes, the attacker's selected top-1,
  KNN distance, FID, LPIPS (see ``bench/lib/inversion``).

The membership / inversion tables show an attack by the kind the run recorded (never by its
metric names), with any further ``summary`` metric it declares as a column of its own; they
(and their files) exist only when such an attack ran. ``reports.write.write_report`` writes
them all, with the plots and ``report.html``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from bench.core.errors import BenchError
from reports.frame import (
    _METRIC_PREFIXES,
    METRIC_LABELS,
    SUMMARY_KEYS,
    Table,
    _cell,
    _defense_order,
    _eps_num,
    _eps_text,
    _mean_std,
    column_label,
    is_percent,
    metric_label,
)
from reports.kinds import attacks_of_kind, frame_summary, summary_columns

#: per-attack diagnostics left out of the summary table (they stay in summary.csv)
_HIDDEN_SUFFIXES = ("_ci_lo", "_ci_hi", "n_members", "n_nonmembers", "_seconds", "n_references")
#: the attack kinds each attack table shows (generator attacks where they report membership metrics)
MEMBERSHIP_KINDS = ("membership", "generator")
INVERSION_KINDS = ("inversion",)
GENERATOR_KINDS = ("generator",)
#: the generator table's metrics of each generator attack, in column order (label, in %)
GENERATOR_METRICS = (("auc", "AUC", False), ("privacy_loss", "privacy loss", False), ("p1", "p1", False),
                     ("p2", "p2", False), ("p3", "p3", False), ("p4", "p4", False), ("p1_minus_p2", "p1 − p2", False))


def _eps_label(group: pd.DataFrame) -> str:
    unit = group["unit"].iloc[0]
    if unit == "none":
        return "∞ (not private)"
    spent = group[(group.source == "privacy") & (group.metric == "epsilon_spent")]["value"]
    acc = group["accountant"].iloc[0]
    delta = group["delta"].iloc[0]
    return f"{spent.max():.3g} ({unit}, δ={delta:g}, {acc})" if len(spent) else f"? ({unit})"


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds for every metric; one row per (dataset, defense, epsilon). The metric
    columns, named ``(source, metric)``, come in the order the summary shows them: the model's test
    and validation accuracy, each attack's ``summary`` metrics (attacks in the order of the suite),
    then the rest, grouped by attack (:func:`_metric_order`)."""
    keys = list(SUMMARY_KEYS)
    out = []
    for k, g in df.groupby(keys, sort=True):
        row = dict(zip(keys, k))
        row["ε spent (unit, δ, accountant)"] = _eps_label(g)
        row["seeds"] = g["seed"].nunique()
        for (src, met), mg in g.groupby(["source", "metric"]):
            vals = mg["value"].astype(float)
            row[(src, met)] = (vals.mean(), vals.std(ddof=1) if len(vals) > 1 else 0.0)
        out.append(row)
    metric_cols = list(dict.fromkeys(c for r in out for c in r if isinstance(c, tuple)))
    return pd.DataFrame(out, columns=keys + ["ε spent (unit, δ, accountant)", "seeds"] + _summary_order(df, metric_cols))


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


def _summary_order(df: pd.DataFrame, metric_cols: list[tuple[str, str]]) -> list[tuple[str, str]]:
    lead = [c for c in summary_columns(df) if c in metric_cols]
    return lead + sorted((c for c in metric_cols if c not in lead), key=_metric_order)


def _shown(col: tuple[str, str]) -> bool:
    """Whether the summary shows a metric: not the privacy rows (the ε column has them), not an
    attack's diagnostics (intervals, sample sizes, timings: :data:`_HIDDEN_SUFFIXES`)."""
    src, met = col
    return src != "privacy" and not met.endswith(_HIDDEN_SUFFIXES) and met != "fit_seconds"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as formatted strings: the row keys, the ε the accountant recorded, then one column
    per metric labelled ``"<attack>: <metric>"`` (:func:`column_label`), rates in % (:func:`is_percent`),
    in :func:`summary_table`'s order."""
    cols = SUMMARY_KEYS + ["ε spent (unit, δ, accountant)", "seeds"]
    disp = summary[cols].copy()
    ordered = [c for c in summary.columns if isinstance(c, tuple) and _shown(c)]
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
#: inversion metrics of bench/lib/inversion: (metric, label, percent)
INVERSION_COLUMNS = [(m, metric_label(m), is_percent(m)) for m in
                     ("top1", "top2", "top5_all", "top1_selected", "knn_dist", "fid", "lpips")]


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
        if not isinstance(e.get("when", {}), dict):
            raise BenchError(f"{path}: entry {e}: 'when' must be a mapping of defense settings")
    return entries, sources


def published_applies(entry: dict, defense_config: dict) -> bool:
    """Whether a published number describes a suite variant: every setting of the entry's optional
    ``when`` equals the variant's (a setting the stored config lacks counts as matching; an empty
    mapping and null are the same "unset"). E.g. the DPSD paper's centralised number is not shown
    beside FedDPSD or the teacher-ensemble variants of ``dpsd``."""
    def norm(v):
        return None if v in ({}, [], None) else v

    return all(k not in defense_config or norm(defense_config[k]) == norm(v)
               for k, v in (entry.get("when") or {}).items())


def selection_tag(text: str) -> str:
    """A short label for a ``PrivacyReport.selection`` (the full text goes in the table's notes)."""
    t = (text or "").lower()
    if not t:
        return "— (not recorded)"
    if "dp hyperparameter selection" in t:
        return "DP-tuned (in ε)"
    if "synthetic" in t:
        return "on synthetic data (in ε)"
    if "validation split" in t:
        return "on validation (outside ε)"
    if "last" in t:
        return "none (last iterate)"
    return "other (see notes)"


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
    selection_of = (df.groupby("defense")["selection"].first().to_dict() if "selection" in df else {})
    config_of = ({d: json.loads(v) for d, v in df.groupby("defense")["defense_config"].first().items()}
                 if "defense_config" in df else {})
    rows = methods + sorted({e["method"] for e in pub} - set(method_of.values()))
    deltas = df[df.delta.notna() & (df.unit != "none")].groupby("dataset")["delta"].first().to_dict()
    disp_rows, data_rows = [], []
    for r in rows:
        ran = r in method_of
        drow = {"method": r if ran else f"{r} (not run)", "privacy unit": unit_of.get(r, "—"),
                "selection": selection_tag(selection_of.get(r, "")) if ran else "—"}
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
                    and e["method"] == (method_of.get(r, r)) and published_applies(e, config_of.get(r, {}))]
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
             "privacy unit (example, label, query, client; metric = metric privacy, not DP): equal ε in different units is not equal privacy. The ε each "
             "accountant recorded is in the summary table."
             if deltas else f"Ours: test accuracy on {split}, mean ± std over seeds."]
    chosen = {t: selection_tag(t) for t in dict.fromkeys(selection_of.get(r, "") for r in methods) if t}
    if chosen:
        notes.append("Selection (how each released model was chosen, and whether that choice is inside its ε): "
                     + "; ".join(f"{', '.join(r for r in methods if selection_of.get(r) == t)}: {t}"
                                 for t in chosen) + ".")
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


def _attack_table(df: pd.DataFrame, name: str, title: str, columns: list, kinds: tuple, notes: list[str]) -> Table:
    """Rows = (dataset, defense, ε, attack) for the attacks of ``kinds`` that report one of the
    table's metrics: ``columns``, then every further ``summary`` metric the attacks of the first
    kind declare (a generator attack's summary, e.g. a utility score, is not membership leakage)."""
    candidates = attacks_of_kind(df, kinds)
    summary = frame_summary(df)
    known = [m for m, _, _ in columns]
    extra = list(dict.fromkeys(m for a in attacks_of_kind(df, kinds[:1]) for m in summary.get(a, ())
                               if m not in known))
    columns = list(columns) + [(m, metric_label(m), is_percent(m)) for m in extra]
    reported = set(df.loc[df.metric.isin(known + extra), "source"])
    attacks = sorted(a for a in candidates if a in reported)
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
    return _attack_table(df, "membership", "Membership inference leakage", MEMBERSHIP_COLUMNS, MEMBERSHIP_KINDS, [
        "Mean ± std over seeds. AUC 0.5 and balanced accuracy 50 % are chance; TPR at a low FPR is the "
        "attack's reliability on its most confident guesses (Carlini et al., S&P 2022).",
        "TPR at a fixed FPR is read on the ROC curve with straight segments between its points: tied "
        "scores count as chance (bench/lib/membership/metrics.py).",
        "ε̂: empirical lower bound on ε (example level) at 95 % confidence from the attack's scores "
        "(Clopper-Pearson at thresholds fixed as ranks, Bonferroni over them, ties broken at random; "
        "bench/lib/audit/bounds.py), one bound per seed, shown as mean ± std over seeds; 0 = nothing certified. "
        "'largest certifiable ε̂': the bound perfectly separated scores of this sample size would give. "
        "The claimed-vs-audited comparison (family-wise over a row's bounds) is in audit.md."])


def inversion_table(df: pd.DataFrame) -> Table:
    return _attack_table(df, "inversion", "Model inversion leakage", INVERSION_COLUMNS, INVERSION_KINDS, [
        "Mean ± std over seeds. Attack accuracy: an independent evaluation classifier's top-1 / top-2 over the "
        "private classes (chance 1/K), top-5 over all its classes, and the attacker's own pick per class "
        "(GMI's rule); higher = more leakage.",
        "KNN dist: squared L2 in the evaluator's features to the nearest private member of the target class; FID: "
        "reconstructions vs private members in the evaluator's features; LPIPS to that nearest member: lower = "
        "more leakage. — = not computed."])


def generator_table(df: pd.DataFrame) -> Table:
    """Rows = (dataset, defense, epsilon) of the cells a generator attack ran on: seeds, the
    student's test accuracy, then per generator attack (suite order) whichever of
    :data:`GENERATOR_METRICS` it reported; mean ± std over seeds."""
    attacks = attacks_of_kind(df, GENERATOR_KINDS)
    wanted = [m for m, _, _ in GENERATOR_METRICS]
    sub = df[df.source.isin(attacks) & df.metric.isin(wanted)]
    columns = [(a, m, label) for a in attacks for m, label, _ in GENERATOR_METRICS
               if len(sub[(sub.source == a) & (sub.metric == m)])]
    order = {d: i for i, d in enumerate(_defense_order(df))}
    keys = sorted({(d, f, e) for d, f, e in zip(sub.dataset, sub.defense, sub.epsilon)},
                  key=lambda k: (k[0], order[k[1]], _eps_num(k[2])))
    disp_rows, data_rows = [], []
    for ds, dfn, eps in keys:
        g = df[(df.dataset == ds) & (df.defense == dfn) & (df.epsilon == eps)]
        drow = {"dataset": ds, "defense": dfn, "ε": _eps_text(eps), "unit": g["unit"].iloc[0],
                "seeds": int(g[g.source.isin(attacks)]["seed"].nunique())}
        cols = [("utility", "test_acc", "test acc (%)", True)] + [(a, m, f"{a}: {label}", False)
                                                                 for a, m, label in columns]
        for source, metric, label, pct in cols:
            m, sd, n = _mean_std(g[(g.source == source) & (g.metric == metric)]["value"])
            drow[label] = "—" if n == 0 else (_cell(m, sd, pct, 2 if pct else 3) if n != 1
                                              else f"{(100 if pct else 1) * m:.{2 if pct else 3}f}")
            if n:
                data_rows.append({"dataset": ds, "defense": dfn, "epsilon": eps, "unit": drow["unit"],
                                  "source": source, "metric": metric, "mean": m, "std": sd, "count": n})
        disp_rows.append(drow)
    return Table("generator", "Released generators: membership leakage and utility", pd.DataFrame(disp_rows),
                 pd.DataFrame(data_rows), [
        "Mean ± std over seeds (one seed: the value). AUC 0.5 = chance; privacy loss = (P − 0.5) / 0.5 with P the "
        "attacker's held-out balanced accuracy (0 = chance, 1 = perfect; slightly negative by chance); the AUC "
        "intervals and ε̂ of each attack are in membership.md.",
        "Utility matrix (gen-utility): p1 = train real, test real; p2 = train synthetic, test real; p3 = train "
        "real, test synthetic; p4 = train synthetic, test synthetic. A small p1 − p2 means the synthetic data "
        "replace the real data well.",
        "Rows of different units (example, client, metric, query) are not comparable at equal ε; ∞ = not private "
        "(the leaky reference rows)."])


#: the per-client view's columns (bench.lib.membership.clients), in order
CLIENT_COLUMNS = (("auc", "AUC"), ("auc_class_matched", "AUC, class-matched"), ("client_auc_min", "client AUC min"),
                  ("client_auc_max", "client AUC max"), ("client_auc_max_p", "p (max)"),
                  ("clients_scored", "clients scored"), ("client_members_min", "smallest client (evaluated)"))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def client_table(df: pd.DataFrame) -> Table:
    """One row per (dataset, defense, epsilon, attack, seed) where an attack reported the
    per-client view: the pooled and class-matched AUC, the range of the clients' AUCs, the
    permutation p-value of the most exposed client and its Holm adjustment over all rows."""
    sub = df[df.metric == "client_auc_max_p"]
    order = {d: i for i, d in enumerate(_defense_order(df))}
    keys = sorted({(d, f, e, a, int(s)) for d, f, e, a, s in zip(sub.dataset, sub.defense, sub.epsilon, sub.source,
                                                                  sub.seed)},
                  key=lambda k: (k[0], order[k[1]], _eps_num(k[2]), k[3], k[4]))
    disp_rows, data_rows, ps = [], [], []
    for ds, dfn, eps, att, seed in keys:
        g = df[(df.dataset == ds) & (df.defense == dfn) & (df.epsilon == eps) & (df.seed == seed)]
        drow = {"dataset": ds, "defense": dfn, "ε": _eps_text(eps), "unit": g["unit"].iloc[0], "attack": att,
                "seed": seed}
        acc = g[(g.source == "utility") & (g.metric == "test_acc")]["value"]
        drow["test acc (%)"] = f"{100 * float(acc.iloc[0]):.2f}" if len(acc) else "—"
        for metric, label in CLIENT_COLUMNS:
            v = g[(g.source == att) & (g.metric == metric)]["value"]
            if not len(v):
                drow[label] = "—"
                continue
            x = float(v.iloc[0])
            drow[label] = f"{int(x)}" if metric in ("clients_scored", "client_members_min") else f"{x:.3f}"
            data_rows.append({"dataset": ds, "defense": dfn, "epsilon": eps, "unit": drow["unit"], "source": att,
                              "seed": seed, "metric": metric, "value": x})
        ps.append(float(g[(g.source == att) & (g.metric == "client_auc_max_p")]["value"].iloc[0]))
        disp_rows.append(drow)
    for drow, p_adj in zip(disp_rows, holm(ps)):
        drow["p (max), Holm over the rows"] = f"{p_adj:.3f}"
    return Table("clients", "Per-client membership view", pd.DataFrame(disp_rows), pd.DataFrame(data_rows), [
        "One row per seed. Client AUC: the client's evaluated members against all evaluated non-members "
        "reweighted to the client's class mix; AUC, class-matched: all members against non-members reweighted "
        "to the members' class mix (a pooled AUC above it is partly the two samples' class mixes differing).",
        "p (max): permutation test of the most exposed client (client labels permuted within classes, 1 000 "
        "permutations); a small p says that client's members are more exposed than their class mix explains. "
        "The Holm column adjusts the p-values over all rows of this table (family-wise error).",
        "Clients with fewer than 10 evaluated members get no AUC (clients scored); rows of different units are "
        "not comparable at equal ε."])


def paper_tables(df: pd.DataFrame, published: str | Path | None = None) -> list[Table]:
    """The accuracy table, and the membership / generator / inversion tables only where such an
    attack ran."""
    return [accuracy_table(df, published)] + [t for t in (membership_table(df), generator_table(df),
                                                          client_table(df), inversion_table(df)) if len(t.display)]


