"""The privacy study table: one row per (dataset, defense, epsilon) with everything a reader needs
to judge a claim side by side (written as ``study.{md,tex,csv}`` by ``bench report``).

Columns: test accuracy (mean ± std over seeds); the **claimed** epsilon with its unit, delta and
accountant (``PrivacyReport.epsilon``, what tables compare); the epsilon of what the mechanism
actually **releases**, same unit (``extra["epsilon_released"]``; = the claim where the method
records none); the **example-level** epsilon (``extra["epsilon_example_level"]``; = the claim for
unit ``example``); the largest empirical lower bounds at the example level (membership attacks
and ``one-run-audit``: metric ``eps_lb``) and in the claim's own unit (``own-unit-audit``); the
declared ``summary`` metrics (ε lower bounds aside: they are in the ε̂ columns) of every membership
attack that declares some - AUC and TPR at 1 % FPR of LiRA, RMIA and the loss-threshold attack -
the attacks that fit the most reference models first, then in the order of the suite; inversion
attack accuracy (top-1) of every attack of kind inversion that ran. Kinds and summaries are what
the run recorded (:mod:`reports.kinds`). Claims in different units sit in one column only with
their unit written beside them: equal epsilon in different units is not equal privacy.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from reports.frame import (
    Table,
    _defense_order,
    _eps_num,
    _eps_text,
    _mean_std,
    is_percent,
    metric_label,
    open_run,
)
from reports.kinds import attacks_of_kind, frame_summary

#: the attack kinds whose declared summary metrics the study shows
MEMBERSHIP_KINDS = ("membership",)
OWN_UNIT = ("eps_lb_own_unit", "eps_lb_own_unit_student")


def leakage_columns(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """[(attack, its summary metrics but the ε lower bounds)] of the membership attacks of ``df``
    that declare a ``summary``: those that fit more reference models (the run's largest
    ``n_references``) first, then in the order of the suite."""
    summary = frame_summary(df)
    mias = [a for a in attacks_of_kind(df, MEMBERSHIP_KINDS) if summary.get(a)]
    refs = df[df.metric == "n_references"].groupby("source")["value"].max()
    mias.sort(key=lambda a: -float(refs.get(a, 0.0)))
    return [(a, [m for m in summary[a] if not m.startswith("eps_lb")]) for a in mias]


def _extras(run_dir) -> dict:
    """{(dataset, defense, eps label): [privacy dicts of the done cells]}"""
    store = open_run(run_dir)
    try:
        cells = store.cells("done")
    finally:
        store.close()
    out: dict = {}
    for c in cells:
        k = (c["dataset"], c["defense"], "inf" if c["epsilon"] is None else f"{c['epsilon']:g}")
        out.setdefault(k, []).append(json.loads(c["privacy"] or "{}") or {})
    return out


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def _max_over(privs: list[dict], key: str):
    vals = [float(p["extra"][key]) for p in privs if (p.get("extra") or {}).get(key) is not None]
    return max(vals) if vals else None


def study_table(df: pd.DataFrame, run_dir) -> Table:
    extras = _extras(run_dir)
    order = {d: i for i, d in enumerate(_defense_order(df))}
    keys = sorted({(a, b, c) for a, b, c in zip(df.dataset, df.defense, df.epsilon)},
                  key=lambda k: (k[0], order[k[1]], _eps_num(k[2])))
    mias = leakage_columns(df)
    inverting = set(attacks_of_kind(df, ("inversion",)))
    inv = sorted(a for a in df.loc[df.metric == "top1", "source"].unique() if a in inverting)
    disp_rows, data_rows = [], []
    for ds, d, eps in keys:
        g = df[(df.dataset == ds) & (df.defense == d) & (df.epsilon == eps)]
        unit, acc_name, delta = str(g["unit"].iloc[0]), str(g["accountant"].iloc[0]), g["delta"].iloc[0]
        privs = extras.get((ds, d, eps), [])
        spent = g.loc[(g.source == "privacy") & (g.metric == "epsilon_spent"), "value"].astype(float)
        claimed = float(spent.max()) if len(spent) else math.inf
        released = _max_over(privs, "epsilon_released")
        released = claimed if released is None else released
        example = claimed if unit == "example" else _max_over(privs, "epsilon_example_level")
        if unit == "none":
            example = math.inf
        ex_lb = g.loc[(g.metric == "eps_lb") & ~g.source.isin(["utility", "privacy"]), "value"].astype(float)
        own_lb = g.loc[g.metric.isin(OWN_UNIT), "value"].astype(float)
        m, s, n = _mean_std(g.loc[(g.source == "utility") & (g.metric == "test_acc"), "value"])
        dl = "" if delta is None or pd.isna(delta) else f", δ={float(delta):g}"
        row = {"dataset": ds, "defense": d, "ε target": _eps_text(eps), "seeds": int(g["seed"].nunique()),
               "test acc (%)": "—" if not n else (f"{100 * m:.2f} ± {100 * s:.2f}" if n > 1 else f"{100 * m:.2f}"),
               "claimed ε (unit)": "∞ (not private)" if unit == "none" else f"{_num(claimed)} ({unit}{dl}, {acc_name})",
               "released ε (unit)": "∞" if unit == "none" else f"{_num(released)} ({unit})",
               "example-level ε": _num(example),
               "ε̂ example (95 %)": _num(float(ex_lb.max())) if len(ex_lb) else "—",
               "ε̂ own unit (95 %)": f"{_num(float(own_lb.max()))} ({unit})" if len(own_lb) else "—"}
        data = {"dataset": ds, "defense": d, "epsilon": eps, "unit": unit, "seeds": row["seeds"],
                "test_acc_mean": m, "test_acc_std": s, "claimed_epsilon": claimed, "released_epsilon": released,
                "example_level_epsilon": example, "eps_hat_example": float(ex_lb.max()) if len(ex_lb) else math.nan,
                "eps_hat_own_unit": float(own_lb.max()) if len(own_lb) else math.nan}
        for a, mets in mias:
            for met in mets:
                mm, ss, nn = _mean_std(g.loc[(g.source == a) & (g.metric == met), "value"])
                pct = is_percent(met)
                row[f"{a}: {metric_label(met)}"] = "—" if not nn else (f"{(100 if pct else 1) * mm:.{2 if pct else 3}f}"
                                                        + (f" ± {(100 if pct else 1) * ss:.{2 if pct else 3}f}"
                                                           if nn > 1 else ""))
                data[f"{a}_{met}"] = mm
        for a in inv:
            mm, ss, nn = _mean_std(g.loc[(g.source == a) & (g.metric == "top1"), "value"])
            seeds = sorted(int(x) for x in g.loc[(g.source == a) & (g.metric == "top1"), "seed"].unique())
            row[f"{a}: {metric_label('top1')}"] = "—" if not nn else f"{100 * mm:.1f}" + (
                f" ± {100 * ss:.1f}" if nn > 1 else "") + (
                f" (seed {', '.join(map(str, seeds))})" if len(seeds) < row["seeds"] else "")
            data[f"{a}_top1"] = mm
        disp_rows.append(row)
        data_rows.append(data)
    notes = [
        "Claimed ε: what the method reports (its PrivacyReport, the figure other tables compare); released ε: "
        "the accountant on what the mechanism actually releases, in the same unit (they differ for DPSD's "
        "`noise_scale: batch-mean`); example-level ε: adding/removing one training example (the unit of DP-SGD "
        "and of every membership attack). Equal ε in different units is not equal privacy.",
        "ε̂ example: the largest 95 % lower bound of the membership attacks and the one-run canary audit (any seed); "
        "ε̂ own unit: the largest 95 % bound of own-unit-audit (release or student) in the claim's unit. Family-wise "
        "versions and the verdicts are in audit.md.",
        "MIA columns: mean ± std over seeds; inversion: attack accuracy top-1 of the evaluation classifier."]
    return Table("study", "Privacy study: claims, audits and leakage side by side", pd.DataFrame(disp_rows),
                 pd.DataFrame(data_rows), notes)
