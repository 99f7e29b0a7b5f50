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
bound). :func:`familywise_bounds` therefore recomputes every bound of a row from the stored
scores at ``alpha / n_bounds`` (Bonferroni; the same procedure, a smaller alpha):
``eps_hat_familywise`` holds for all of the row's bounds at once with probability 95 %, and
``exceeds_claim_familywise`` is the flag a reader can take as statistically significant. It is
NaN / None where the cached attack arrays are gone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from reports.artifacts import cached_arrays

#: sources that are not attacks
_NOT_AUDITS = ("utility", "privacy", "inversion-target")

AUDIT_COLUMNS = ["dataset", "defense", "epsilon", "claimed_epsilon", "delta", "unit", "accountant", "dp_claim",
                 "compared_epsilon", "comparison", "eps_hat", "eps_hat_source", "eps_max_certifiable",
                 "n_bounds", "audited_exceeds_claim", "eps_hat_familywise", "exceeds_claim_familywise", "flagged",
                 "eps_hat_own_unit", "eps_hat_own_unit_source", "eps_max_certifiable_own_unit", "n_bounds_own_unit",
                 "eps_hat_own_unit_familywise", "own_unit_flagged"]

#: own-unit bounds (attacks/own_unit_audit.py): metric -> the cached score array it comes from
OWN_UNIT_METRICS = {"eps_lb_own_unit": "scores", "eps_lb_own_unit_student": "student_scores"}

#: units whose claim is not differential privacy (metric privacy: see docs/methods/vae-metric.md)
_NON_DP_UNITS = ("none", "metric")


def _key(dataset, defense, epsilon) -> tuple:
    return (str(dataset), str(defense), str(epsilon))


def example_level_claims(run_dir) -> dict[tuple, float]:
    """{(dataset, defense, epsilon label): example-level epsilon} for releases whose own unit is
    not ``example`` but that record one (``privacy.extra["epsilon_example_level"]``; largest over
    seeds)."""
    from reports.frame import open_run

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


def _attack_artifacts(run_dir, metric: str) -> dict[tuple, list]:
    """{(dataset, defense, epsilon label): [the cached attack results of done cells whose attack
    reported ``metric``]}, each with its cell's seed, delta, privacy, config and artifact path."""
    from reports.frame import open_run

    store = open_run(run_dir)
    try:
        rows = store.query(
            "SELECT c.cell_key, c.dataset, c.defense, c.epsilon, c.seed, c.delta AS cell_delta, c.privacy, "
            "c.config, a.name, a.path FROM artifacts a JOIN cells c USING (cell_key) "
            "JOIN metrics m ON m.cell_key = c.cell_key AND m.source = substr(a.name, 8) AND m.name = ? "
            "WHERE c.status = 'done' AND a.kind = 'attack' AND a.name LIKE 'attack:%'", (metric,))
    finally:
        store.close()
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(_key(r["dataset"], r["defense"], "inf" if r["epsilon"] is None else f"{r['epsilon']:g}"),
                          []).append(r)
    return groups


def familywise_bounds(run_dir, alpha: float = 0.05) -> dict[tuple, float]:
    """{(dataset, defense, epsilon label): the largest of the row's bounds recomputed at
    ``alpha / K``} where K = the row's number of bounds (every attack that reported ``eps_lb``, every
    seed), from the scores and labels cached with each attack result (float64 since the
    statistics fixes; older caches hold float32 copies). Rows with a missing array are left out."""
    from bench.lib.audit.bounds import ONE_RUN_GRID_SIZE, eps_lower_bound, one_run_eps_lower_bound

    groups = _attack_artifacts(run_dir, "eps_lb")
    out: dict[tuple, float] = {}
    for k, rs in groups.items():
        a = alpha / len(rs)
        best, complete = 0.0, True
        for r in rs:
            z = cached_arrays(r["path"], "scores", "labels")
            if z is None:
                complete = False
                break
            scores = z["scores"].astype(np.float64)
            labels = z["labels"].astype(bool)
            priv = json.loads(r["privacy"] or "{}") or {}
            delta = float(priv["delta"]) if priv.get("delta") else float(r["cell_delta"])
            aname = r["name"].split(":", 1)[1]
            acfg = (json.loads(r["config"]).get("attacks") or {}).get(aname) or {}
            if acfg.get("method", aname) == "one-run-audit":
                grid = int(acfg.get("grid_size", ONE_RUN_GRID_SIZE))
                e = one_run_eps_lower_bound(scores, labels, alpha=a, delta=delta, grid_size=grid,
                                            seed=int(r["seed"])).eps_lb
            else:
                e = eps_lower_bound(scores[labels], scores[~labels], alpha=a, delta=delta, seed=int(r["seed"])).eps_lb
            best = max(best, float(e))
        if complete:
            out[k] = best
    return out


def is_dp_claim(unit: str, accountant: str, claimed: float) -> bool:
    """Whether a row claims differential privacy: a finite epsilon, a DP unit, an accountant."""
    return (unit not in _NON_DP_UNITS and math.isfinite(claimed)
            and not str(accountant).strip().lower().startswith("none"))


def familywise_own_unit(run_dir, alpha: float = 0.05) -> dict[tuple, float]:
    """{(dataset, defense, epsilon label): the largest own-unit bound of the row recomputed at
    ``alpha / K``}, K = the row's own-unit bounds (release and student, every seed), from the
    cached canary scores. Rows with a missing array are left out."""
    from bench.lib.audit.bounds import one_run_eps_lower_bound

    groups = _attack_artifacts(run_dir, "eps_lb_own_unit")
    out: dict[tuple, float] = {}
    for k, rs in groups.items():
        a = alpha / (len(rs) * len(OWN_UNIT_METRICS))
        best, complete = 0.0, True
        for r in rs:
            z = cached_arrays(r["path"], *OWN_UNIT_METRICS.values(), "labels")
            if z is None:
                complete = False
                break
            aname = r["name"].split(":", 1)[1]
            acfg = (json.loads(r["config"]).get("attacks") or {}).get(aname) or {}
            grid = int(acfg.get("grid_size", 4))
            delta = float((json.loads(r["privacy"] or "{}") or {}).get("delta") or 0.0)
            inc = z["labels"].astype(bool)
            for arr in OWN_UNIT_METRICS.values():
                e = one_run_eps_lower_bound(z[arr].astype(np.float64), inc, alpha=a, delta=delta,
                                            grid_size=grid, seed=int(r["seed"])).eps_lb
                best = max(best, float(e))
        if complete:
            out[k] = best
    return out


def _comparison(unit: str, accountant: str, claimed: float, key: tuple, example_claims: dict) -> tuple[float, str]:
    if unit == "none" or not math.isfinite(claimed):
        return math.inf, "not compared: not private (epsilon = inf)"
    if unit == "metric":
        return math.inf, "not compared: metric privacy, not DP (no neighbouring relation of examples)"
    if str(accountant).strip().lower().startswith("none"):
        return math.inf, "not compared: the accountant is 'none' (not a DP claim)"
    if unit == "example":
        return claimed, "example-level claim"
    if key in example_claims and math.isfinite(example_claims[key]):
        return example_claims[key], f"example-level epsilon recorded by the {unit}-unit method"
    return math.inf, f"not compared: the claim's unit is '{unit}' (no example-level epsilon recorded)"


def audit_table(df: pd.DataFrame, example_claims: dict | None = None,
                familywise: dict | None = None, familywise_own: dict | None = None) -> pd.DataFrame:
    """The claimed-vs-audited table from a run's metrics frame (:func:`reports.frame.load_frame`).

    Columns: :data:`AUDIT_COLUMNS`, then one ``eps_hat[<attack>]`` column per audit (largest over
    seeds, NaN where that attack did not run on the row). Rows without any bound are kept (their
    ``eps_hat`` is NaN and they are never flagged). ``familywise``: :func:`familywise_bounds`
    (optional; without it the family-wise columns are NaN / None)."""
    example_claims = example_claims or {}
    familywise = familywise or {}
    familywise_own = familywise_own or {}
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
               "unit": unit, "accountant": acc, "dp_claim": is_dp_claim(unit, acc, claimed),
               "compared_epsilon": compared, "comparison": how}
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
        fwv = familywise.get(_key(ds, d, eps))
        row["eps_hat_familywise"] = float("nan") if fwv is None or not n_bounds else float(fwv)
        row["exceeds_claim_familywise"] = (None if fwv is None or not n_bounds
                                           else bool(math.isfinite(compared) and fwv > compared))
        # the verdict: family-wise over the row's bounds where the scores allow recomputing them
        # (multiple testing must not count for the auditor); without them, the per-bound flag
        row["flagged"] = (row["audited_exceeds_claim"] if row["exceeds_claim_familywise"] is None
                          else row["exceeds_claim_familywise"])
        # own-unit audits: compared with the claim itself, in its own unit (query / label)
        own = g[g.metric.isin(list(OWN_UNIT_METRICS))]
        own_ok = unit in ("query", "label", "example") and math.isfinite(claimed)
        if len(own):
            vals = own["value"].astype(float).to_numpy()
            i = int(np.argmax(vals))
            caps = g.loc[g.metric.isin([f"{m}_max_certifiable" for m in OWN_UNIT_METRICS]), "value"].astype(float)
            fwo = familywise_own.get(_key(ds, d, eps))
            exceeds = bool(own_ok and vals[i] > claimed)
            row.update({"eps_hat_own_unit": float(vals[i]),
                        "eps_hat_own_unit_source": f"{own['source'].iloc[i]}:{own['metric'].iloc[i]} "
                                                   f"(seed {own['seed'].iloc[i]})",
                        "eps_max_certifiable_own_unit": float(caps.max()) if len(caps) else float("nan"),
                        "n_bounds_own_unit": int(len(vals)),
                        "eps_hat_own_unit_familywise": float("nan") if fwo is None else float(fwo),
                        "own_unit_flagged": exceeds if fwo is None else bool(own_ok and fwo > claimed)})
        else:
            row.update({"eps_hat_own_unit": float("nan"), "eps_hat_own_unit_source": "",
                        "eps_max_certifiable_own_unit": float("nan"), "n_bounds_own_unit": 0,
                        "eps_hat_own_unit_familywise": float("nan"), "own_unit_flagged": False})
        rows.append(row)
    cols = AUDIT_COLUMNS + [f"eps_hat[{s}]" for s in audits]
    return pd.DataFrame(rows, columns=cols)


def _familywise_note(r) -> str:
    if r.exceeds_claim_familywise is None:
        return f"family-wise check unavailable (cached scores missing), {r.n_bounds} bounds in the row"
    verdict = "still exceeds" if r.exceeds_claim_familywise else "does NOT exceed"
    return (f"family-wise over the row's {r.n_bounds} bounds (Bonferroni): eps_hat = {r.eps_hat_familywise:.3f}, "
            f"{verdict} the claim")


def flagged_lines(table: pd.DataFrame) -> list[str]:
    """One line per flagged row (column ``flagged``: family-wise over the row's bounds when the
    cached scores are there, else the largest single bound)."""
    out = []
    for r in table[table["flagged"].astype(bool)].itertuples(index=False):
        out.append(f"AUDIT {r.dataset}/{r.defense}/eps={r.epsilon}: audited eps_hat = {r.eps_hat:.3f} "
                   f"({r.eps_hat_source}, 95 %) > claimed {r.compared_epsilon:.3g} "
                   f"({r.unit}, delta={r.delta:g}, {r.accountant}; {r.comparison}); {_familywise_note(r)}")
    return out


def own_unit_flagged_lines(table: pd.DataFrame) -> list[str]:
    """One line per row whose own-unit bound exceeds its claim (family-wise where cached)."""
    out = []
    for r in table[table["own_unit_flagged"].astype(bool)].itertuples(index=False):
        fw = ("family-wise unavailable (cached scores missing)" if math.isnan(r.eps_hat_own_unit_familywise)
              else f"family-wise over {r.n_bounds_own_unit} bounds: {r.eps_hat_own_unit_familywise:.3f}")
        out.append(f"AUDIT {r.dataset}/{r.defense}/eps={r.epsilon}: own-unit eps_hat = {r.eps_hat_own_unit:.3f} "
                   f"({r.eps_hat_own_unit_source}, 95 %) > claimed {r.claimed_epsilon:.3g} ({r.unit} unit, "
                   f"delta={r.delta:g}, {r.accountant}); {fw}")
    return out


def unaudited_mask(table: pd.DataFrame) -> pd.Series:
    """Rows that claim a DP epsilon but have no audited epsilon at all (membership or own unit)."""
    return table["dp_claim"].astype(bool) & ((table["n_bounds"] + table["n_bounds_own_unit"]) == 0)


def unaudited_lines(table: pd.DataFrame) -> list[str]:
    """One line per row that claims a DP epsilon but has no audited epsilon at all."""
    out = []
    for r in table[unaudited_mask(table)].itertuples(index=False):
        out.append(f"AUDIT {r.dataset}/{r.defense}/eps={r.epsilon}: nothing audited: the row claims "
                   f"eps = {r.claimed_epsilon:.3g} ({r.unit}, delta={r.delta:g}, {r.accountant}) but no attack of "
                   "the run computed an eps lower bound (add a membership attack, one-run-audit or own-unit-audit)")
    return out


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "**YES**" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return "∞" if math.isinf(v) else f"{v:.3g}"
    return str(v)


def warning_line(table: pd.DataFrame) -> str:
    flagged = table[table["flagged"].astype(bool) | table["own_unit_flagged"].astype(bool)]
    n = len(flagged)
    if not n:
        return ""
    cells = "; ".join(f"{r.dataset}/{r.defense}/eps={r.epsilon}" for r in flagged.itertuples(index=False))
    return (f"> **⚠ WARNING: AUDITED ε EXCEEDS THE CLAIMED ε in {n} row(s): {cells}.** An empirical lower "
            "bound at 95 % (family-wise over the row's bounds where the cached scores allow) is above the "
            "accountant's ε: the claim, its accounting or its implementation is suspect (see audit.md).")


def write_audit_report(run_dir, df: pd.DataFrame, out, summary_md: Path | None = None) -> list[Path]:
    """Write ``audit.md`` and ``audit.csv`` into ``out``; when a row is flagged, put the warning
    line at the top of ``summary_md`` too. Returns the paths written."""
    out = Path(out)
    table = audit_table(df, example_level_claims(run_dir), familywise_bounds(run_dir), familywise_own_unit(run_dir))
    csv = out / "audit.csv"
    table.to_csv(csv, index=False)
    disp = table.copy()
    for c in disp.columns:
        disp[c] = [("yes" if v else "no") if c == "dp_claim" else _fmt(v) for v in disp[c]]
    warn = warning_line(table)
    missing = unaudited_lines(table)
    if missing:
        warn = (warn + "\n\n" if warn else "") + "> **Nothing audited** in " + str(len(missing)) + \
            " row(s) that claim a DP ε: " + "; ".join(f"{r.dataset}/{r.defense}/eps={r.epsilon}" for r in
                                                    table[unaudited_mask(table)]
                                                    .itertuples(index=False)) + " (no attack computed ε̂)."
    md = out / "audit.md"
    md.write_text("# Claimed vs audited ε\n\n" + (warn + "\n\n" if warn else "")
                  + "ε̂: empirical lower bounds at 95 % (largest over seeds), beside the largest bound the "
                  "sample sizes could certify; `eps_hat_familywise`: all of a row's bounds at once at 95 % "
                  "(Bonferroni over `n_bounds`). Membership bounds (`eps_hat`) are compared only with "
                  "example-level claims; own-unit bounds (`eps_hat_own_unit`, the `own-unit-audit` canaries in "
                  "the query or label unit) with the claim of their own unit (see docs/methods/audit.md).\n\n" + disp.to_markdown(index=False) + "\n")
    if warn and summary_md is not None and Path(summary_md).exists():
        text = Path(summary_md).read_text()
        head, sep, rest = text.partition("\n\n")
        Path(summary_md).write_text(head + sep + warn + "\n\n" + rest if sep else warn + "\n\n" + text)
    return [md, csv]
