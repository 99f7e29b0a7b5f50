"""Claimed versus audited epsilon: one row per (dataset, defense, epsilon) of a run.

Claimed: the accountant's epsilon of the release (``privacy/epsilon_spent``, the largest over
seeds), its delta, privacy unit and accountant. Audited: every empirical lower bound the run
computed, i.e. every attack that reports ``eps_lb`` (LiRA, RMIA, shadow, label-only, the
generator attacks: Clopper-Pearson, Bonferroni over thresholds; ``one-run-audit``: Steinke,
Nasr & Jagielski with canaries), each at 95 % and shown as the largest over seeds, beside the
largest bound those sample sizes could certify (``eps_lb_max_certifiable``).

``audited_exceeds_claim`` is True when some bound exceeds the claim it is compared with:

* unit ``example``: the claimed epsilon itself (add/remove one example is exactly the relation a
  membership audit tests);
* unit ``label`` or ``query``: the release's **example-level** epsilon when the method records one
  (``privacy.extra["epsilon_example_level"]``, read from the run store by
  :func:`example_level_claims`), otherwise the row is *not compared* (a bound on distinguishing
  one training example says nothing about a claim on one label or one teacher answer);
* unit ``none`` (not private, epsilon = inf) and claims whose accountant is ``none`` (e.g. metric
  privacy, not DP): not compared.

Multiplicity: each bound holds with probability 95 % on its own; a row with ``n_bounds`` bounds
(attacks x seeds) whose claim is true is flagged with probability at most ``n_bounds`` x 5 % (union
bound). A flag is therefore evidence to re-audit that cell (fresh seeds, a held-out attack), not
a proof on its own when ``n_bounds`` is large; ``n_bounds`` is in the table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

#: sources that are not attacks
_NOT_AUDITS = ("utility", "privacy", "inversion-target")

AUDIT_COLUMNS = ["dataset", "defense", "epsilon", "claimed_epsilon", "delta", "unit", "accountant",
                 "compared_epsilon", "comparison", "eps_hat", "eps_hat_source", "eps_max_certifiable",
                 "n_bounds", "audited_exceeds_claim"]


def _key(dataset, defense, epsilon) -> tuple:
    return (str(dataset), str(defense), str(epsilon))


def example_level_claims(run_dir) -> dict[tuple, float]:
    """{(dataset, defense, epsilon label): example-level epsilon} for releases whose own unit is
    not ``example`` but that record one (``privacy.extra["epsilon_example_level"]``; largest over
    seeds)."""
    from .tables import open_run

    store = open_run(run_dir)
    try:
        cells = store.cells("done")
    finally:
        store.close()
    out: dict[tuple, float] = {}
    for c in cells:
        priv = json.loads(c["privacy"] or "{}") or {}
        v = (priv.get("extra") or {}).get("epsilon_example_level")
        if v is None:
            continue
        k = _key(c["dataset"], c["defense"], "inf" if c["epsilon"] is None else f"{c['epsilon']:g}")
        out[k] = max(out.get(k, -math.inf), float(v))
    return out


def _comparison(unit: str, accountant: str, claimed: float, key: tuple, example_claims: dict) -> tuple[float, str]:
    if unit == "none" or not math.isfinite(claimed):
        return math.inf, "not compared: not private (epsilon = inf)"
    if str(accountant).strip().lower().startswith("none"):
        return math.inf, "not compared: the accountant is 'none' (not a DP claim)"
    if unit == "example":
        return claimed, "example-level claim"
    if key in example_claims and math.isfinite(example_claims[key]):
        return example_claims[key], f"example-level epsilon recorded by the {unit}-unit method"
    return math.inf, f"not compared: the claim's unit is '{unit}' (no example-level epsilon recorded)"


def audit_table(df: pd.DataFrame, example_claims: dict | None = None) -> pd.DataFrame:
    """The claimed-vs-audited table from a run's metrics frame (:func:`reports.tables.load_frame`).

    Columns: :data:`AUDIT_COLUMNS`, then one ``eps_hat[<attack>]`` column per audit (largest over
    seeds, NaN where that attack did not run on the row). Rows without any bound are kept (their
    ``eps_hat`` is NaN and they are never flagged)."""
    example_claims = example_claims or {}
    need = {"dataset", "defense", "epsilon", "seed", "unit", "delta", "accountant", "source", "metric", "value"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"metrics frame lacks columns {sorted(missing)}")
    audits = sorted(df.loc[(df.metric == "eps_lb") & ~df.source.isin(_NOT_AUDITS), "source"].unique())
    rows = []
    for (ds, d, eps), g in df.groupby(["dataset", "defense", "epsilon"], sort=True):
        unit = str(g["unit"].iloc[0])
        acc = str(g["accountant"].iloc[0])
        delta = g["delta"].iloc[0]
        spent = g.loc[(g.source == "privacy") & (g.metric == "epsilon_spent"), "value"].astype(float)
        claimed = float(spent.max()) if len(spent) else math.inf
        compared, how = _comparison(unit, acc, claimed, _key(ds, d, eps), example_claims)
        row = {"dataset": ds, "defense": d, "epsilon": eps, "claimed_epsilon": claimed,
               "delta": float(delta) if delta is not None and not pd.isna(delta) else float("nan"),
               "unit": unit, "accountant": acc, "compared_epsilon": compared, "comparison": how}
        best, best_src, ceiling, n_bounds = -math.inf, "", -math.inf, 0
        for src in audits:
            lb = g[(g.source == src) & (g.metric == "eps_lb")]
            cap = g.loc[(g.source == src) & (g.metric == "eps_lb_max_certifiable"), "value"].astype(float)
            if len(lb) == 0:
                row[f"eps_hat[{src}]"] = float("nan")
                continue
            vals = lb["value"].astype(float).to_numpy()
            i = int(np.argmax(vals))
            row[f"eps_hat[{src}]"] = float(vals[i])
            n_bounds += len(vals)
            if vals[i] > best:
                best, best_src = float(vals[i]), f"{src} (seed {lb['seed'].iloc[i]})"
            if len(cap):
                ceiling = max(ceiling, float(cap.max()))
        row.update({"eps_hat": best if n_bounds else float("nan"), "eps_hat_source": best_src,
                    "eps_max_certifiable": ceiling if math.isfinite(ceiling) else float("nan"),
                    "n_bounds": n_bounds,
                    "audited_exceeds_claim": bool(n_bounds and math.isfinite(compared) and best > compared)})
        rows.append(row)
    cols = AUDIT_COLUMNS + [f"eps_hat[{s}]" for s in audits]
    return pd.DataFrame(rows, columns=cols)


def flagged_lines(table: pd.DataFrame) -> list[str]:
    """One line per flagged row."""
    out = []
    for r in table[table["audited_exceeds_claim"]].itertuples(index=False):
        out.append(f"AUDIT {r.dataset}/{r.defense}/eps={r.epsilon}: audited eps_hat = {r.eps_hat:.3f} "
                   f"({r.eps_hat_source}, 95 %) > claimed {r.compared_epsilon:.3g} "
                   f"({r.unit}, delta={r.delta:g}, {r.accountant}; {r.comparison})")
    return out


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "**YES**" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return "∞" if math.isinf(v) else f"{v:.3g}"
    return str(v)


def warning_line(table: pd.DataFrame) -> str:
    n = int(table["audited_exceeds_claim"].sum())
    if not n:
        return ""
    cells = "; ".join(f"{r.dataset}/{r.defense}/eps={r.epsilon}" for r in
                      table[table["audited_exceeds_claim"]].itertuples(index=False))
    return (f"> **⚠ WARNING: AUDITED ε EXCEEDS THE CLAIMED ε in {n} row(s): {cells}.** An empirical lower "
            "bound at 95 % is above the accountant's ε: the claim, its accounting or its implementation "
            "is suspect (see audit.md).")


def write_audit_report(run_dir, df: pd.DataFrame, out, summary_md: Path | None = None) -> list[Path]:
    """Write ``audit.md`` and ``audit.csv`` into ``out``; when a row is flagged, put the warning
    line at the top of ``summary_md`` too. Returns the paths written."""
    out = Path(out)
    table = audit_table(df, example_level_claims(run_dir))
    csv = out / "audit.csv"
    table.to_csv(csv, index=False)
    disp = table.copy()
    for c in disp.columns:
        disp[c] = [_fmt(v) for v in disp[c]]
    warn = warning_line(table)
    md = out / "audit.md"
    md.write_text("# Claimed vs audited ε\n\n" + (warn + "\n\n" if warn else "")
                  + "ε̂: empirical lower bounds at 95 % (largest over seeds), beside the largest bound the "
                  "sample sizes could certify. Compared only with example-level claims (see "
                  "docs/methods/audit.md).\n\n" + disp.to_markdown(index=False) + "\n")
    if warn and summary_md is not None and Path(summary_md).exists():
        text = Path(summary_md).read_text()
        head, sep, rest = text.partition("\n\n")
        Path(summary_md).write_text(head + sep + warn + "\n\n" + rest if sep else warn + "\n\n" + text)
    return [md, csv]
