"""``bench check``: the leakage gate for CI.

A baseline JSON (format 2) holds, per (dataset, defense, epsilon), each gated metric's mean over
seeds, whether higher is worse (leakage) or lower is worse (accuracy), its **own tolerance** and
the spread that tolerance was derived from. The check fails when a leakage metric rises above its
baseline by more than its tolerance, when accuracy falls below it by more than its tolerance,
when a baseline row or metric is missing from the run, when an audited epsilon exceeds the claimed
one (:mod:`reports.audit_table`; one ``FAIL AUDIT`` line per flagged row, whatever the baseline),
and when a row that claims a DP epsilon has no audited epsilon at all (``FAIL AUDIT ... nothing
audited``; ``--unaudited warn`` turns that into a warning line).

Tolerances (:func:`metric_tolerance`). One absolute tolerance for every metric cannot be right: a
rise of AUC by 0.05 is noise on 200 evaluation examples, while TPR at 1 % FPR going from 0.007 to
0.05 is a sevenfold rise and passed the old 0.05 gate. Each metric's tolerance is therefore

    tolerance = max(floor[metric], Z * sqrt(2) * sigma),  Z = 3,

where sigma is the baseline's standard error: the largest of the std over seeds (ddof 1, two or
more seeds), the mean bootstrap half-width of its 95 % interval / 1.96 (attacks that report
``<metric>_ci_lo`` / ``_ci_hi``), and for test accuracy the binomial standard error on the test
split's size. sqrt(2): the run's value is as noisy as the baseline's. The floor
(:data:`TOLERANCE_FLOORS`) keeps a spread of 0 (one deterministic seed) from gating on
floating-point noise. ``--tolerance`` / ``--accuracy-tolerance`` override every leakage /
accuracy tolerance with one absolute value (the old behaviour).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.core.errors import BenchError
from reports.frame import load_frame, open_run

#: (source, metric) -> higher_is_worse; sources are matched for every attack of that kind
GATED_UTILITY = {"test_acc": False}
GATED_LEAKAGE = {"auc", "advantage", "tpr_at_1%fpr", "attack_acc"}
#: smallest tolerance per metric (absolute)
TOLERANCE_FLOORS = {"test_acc": 0.005, "auc": 0.01, "advantage": 0.01, "tpr_at_1%fpr": 0.005, "attack_acc": 0.01}
#: standard errors of the difference of two estimates that a change must exceed
Z = 3.0
BASELINE_FORMAT = 2


def metric_tolerance(metric: str, seed_std: float | None, ci_half: float | None,
                     binomial_se: float | None) -> float:
    """``max(floor, Z * sqrt(2) * sigma)``, sigma the largest of the given spreads (module doc)."""
    spreads = [v for v in (seed_std, None if ci_half is None else ci_half / 1.96, binomial_se)
               if v is not None and math.isfinite(v)]
    sigma = max(spreads) if spreads else 0.0
    return float(max(TOLERANCE_FLOORS.get(metric, 0.01), Z * math.sqrt(2.0) * sigma))


def _test_sizes(run_dir) -> dict:
    """{(dataset, defense, epsilon label, seed): test split size} from the cells' split info."""
    store = open_run(run_dir)
    try:
        cells = store.cells("done")
    finally:
        store.close()
    out = {}
    for c in cells:
        split = json.loads(c["split"] or "{}") or {}
        n = (split.get("sizes") or {}).get("test")
        if n:
            out[(c["dataset"], c["defense"], "inf" if c["epsilon"] is None else f"{c['epsilon']:g}", c["seed"])] = int(n)
    return out


def _means(run_dir) -> dict:
    df = load_frame(run_dir)
    sizes = _test_sizes(run_dir)
    out: dict = {}
    for (ds, d, eps, src, met), g in df.groupby(["dataset", "defense", "epsilon", "source", "metric"]):
        if src == "utility" and met in GATED_UTILITY:
            worse = "lower"
        elif src not in ("utility", "privacy", "inversion-target") and met in GATED_LEAKAGE:
            worse = "higher"
        else:
            continue
        vals = g["value"].astype(float)
        mean = float(vals.mean())
        n_seeds = int(g["seed"].nunique())
        seed_std = float(vals.std(ddof=1)) if len(vals) > 1 else None
        cell = df[(df.dataset == ds) & (df.defense == d) & (df.epsilon == eps) & (df.source == src)]
        lo = cell.loc[cell.metric == f"{met}_ci_lo", "value"].astype(float)
        hi = cell.loc[cell.metric == f"{met}_ci_hi", "value"].astype(float)
        ci_half = float(((hi.to_numpy() - lo.to_numpy()) / 2).mean()) if len(lo) and len(lo) == len(hi) else None
        binomial = None
        if src == "utility" and met == "test_acc":
            ns = [sizes.get((ds, d, eps, s)) for s in g["seed"]]
            if ns and all(ns):
                # standard error of the mean over seeds of per-seed binomial accuracies
                binomial = math.sqrt(sum(p * (1 - p) / n for p, n in zip(vals, ns))) / len(ns)
        tol = metric_tolerance(met, seed_std, ci_half, binomial)
        out.setdefault(f"{ds}/{d}/eps={eps}", {})[f"{src}.{met}"] = {
            "value": mean, "worse": worse, "tolerance": tol,
            "spread": {"n_seeds": n_seeds, "seed_std": seed_std, "ci_half_width": ci_half, "binomial_se": binomial}}
    return out


def load_baseline(path) -> dict:
    """Read and validate a baseline file (format 2: every metric carries its tolerance)."""
    bad = BenchError(f"baseline file {path} is not a bench baseline (expected JSON "
                     "{\"format\": 2, \"rows\": {row: {metric: {\"value\": number, \"worse\": \"higher\"|\"lower\", "
                     "\"tolerance\": number}}}})")
    try:
        data = json.loads(Path(path).read_text())
        rows = data["rows"]
    except FileNotFoundError:
        raise BenchError(f"baseline file not found: {path} (create it with --write-baseline)") from None
    except IsADirectoryError:
        raise BenchError(f"baseline {path} is a directory, not a file") from None
    except OSError as e:
        raise BenchError(f"cannot read baseline file {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, RecursionError):
        raise bad from None
    if not isinstance(rows, dict):
        raise bad
    old = False
    for metrics in rows.values():
        if not isinstance(metrics, dict):
            raise bad
        for m in metrics.values():
            if (not isinstance(m, dict) or m.get("worse") not in ("higher", "lower")
                    or isinstance(m.get("value"), bool) or not isinstance(m.get("value"), (int, float))):
                raise bad
            t = m.get("tolerance")
            if t is None:
                old = True
            elif isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise bad
    if old or data.get("format") != BASELINE_FORMAT:
        raise BenchError(f"baseline file {path} has no per-metric tolerances (format {data.get('format')!r}, "
                         f"need {BASELINE_FORMAT}): rewrite it with `bench check RUN --baseline {path} --write-baseline`")
    return rows


def write_baseline(run_dir, path) -> Path:
    path = Path(path)
    rows = _means(run_dir)
    rule = (f"tolerance = max(floor, {Z:g} * sqrt(2) * sigma); sigma = max(seed std, bootstrap 95% half-width / 1.96, "
            f"binomial SE of test accuracy); floors {TOLERANCE_FLOORS}")
    text = json.dumps({"format": BASELINE_FORMAT, "tolerance_rule": rule, "rows": rows}, indent=1, sort_keys=True) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise BenchError(f"cannot write baseline {path}: {e.strerror or e}") from None
    return path


def check_run(run_dir, baseline, leakage_tolerance: float | None = None, accuracy_tolerance: float | None = None,
              unaudited: str = "fail"):
    """(ok, lines). ``leakage_tolerance`` / ``accuracy_tolerance``: absolute overrides of the
    baseline's per-metric tolerances (None: use the baseline's). ``unaudited``: ``fail`` or
    ``warn`` for a DP row without any audited epsilon."""
    base = load_baseline(baseline)
    if not all(t is None or (math.isfinite(t) and t >= 0) for t in (leakage_tolerance, accuracy_tolerance)):
        raise BenchError("tolerances must be >= 0 and finite")
    if unaudited not in ("fail", "warn"):
        raise BenchError(f"--unaudited must be 'fail' or 'warn', got {unaudited!r}")
    cur = _means(run_dir)
    ok, lines = True, []
    for row, metrics in sorted(base.items()):
        if row not in cur:
            ok = False
            lines.append(f"FAIL {row}: missing from the run")
            continue
        for name, b in sorted(metrics.items()):
            if name not in cur[row]:
                ok = False
                lines.append(f"FAIL {row} {name}: missing from the run")
                continue
            v, bv = cur[row][name]["value"], b["value"]
            override = leakage_tolerance if b["worse"] == "higher" else accuracy_tolerance
            tol = float(b["tolerance"]) if override is None else float(override)
            bad = v > bv + tol if b["worse"] == "higher" else v < bv - tol
            ok &= not bad
            lines.append(f"{'FAIL' if bad else 'ok  '} {row} {name}: {v:.4f} (baseline {bv:.4f}, "
                         f"{b['worse']} is worse, tolerance {tol:.4g})")
    audit_ok, audit_lines = check_audit(run_dir, unaudited=unaudited)
    lines += audit_lines
    why = ([] if ok else ["leakage rose or accuracy fell beyond tolerance"]) + \
        ([] if audit_ok else ["the privacy audit failed (see the FAIL AUDIT lines)"])
    lines.append("check passed" if not why else "check FAILED: " + "; ".join(why))
    return ok and audit_ok, lines


def check_audit(run_dir, unaudited: str = "fail") -> tuple[bool, list[str]]:
    """(ok, lines): one ``FAIL AUDIT ...`` line per row whose audited epsilon exceeds its claim
    (family-wise over the row's bounds where the cached scores allow it,
    :func:`reports.audit_table.flagged_lines`), and one per row that claims a DP epsilon but has
    no audited epsilon (``unaudited="warn"``: a ``WARN AUDIT`` line, the check still passes)."""
    from reports.audit_table import (
        audit_table,
        example_level_claims,
        familywise_bounds,
        familywise_own_unit,
        flagged_lines,
        own_unit_flagged_lines,
        unaudited_lines,
    )

    table = audit_table(load_frame(run_dir), example_level_claims(run_dir), familywise_bounds(run_dir),
                        familywise_own_unit(run_dir))
    bad = flagged_lines(table) + own_unit_flagged_lines(table)
    missing = unaudited_lines(table)
    n = int(table["n_bounds"].sum())
    lines = [f"FAIL {line}" for line in bad]
    tag = "FAIL" if unaudited == "fail" else "WARN"
    lines += [f"{tag} {line}" for line in missing]
    ok = not bad and (unaudited == "warn" or not missing)
    if ok and not bad:
        n_dp = int(table["dp_claim"].sum())
        lines.append(f"ok   audit: no audited epsilon above its claim ({n} bounds in {len(table)} rows, "
                     f"{n_dp - len(missing)} of {n_dp} DP rows audited)")
    return ok, lines
