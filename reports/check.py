"""``bench check``: the leakage gate for CI.

A baseline JSON holds, per (dataset, defense, epsilon), the mean of each gated metric and
whether higher is worse (leakage) or lower is worse (accuracy). The check fails when a leakage
metric rises above its baseline by more than the tolerance, when accuracy falls below it by
more than the accuracy tolerance, when a baseline row is missing from the run, or when an
audited epsilon exceeds the claimed one in any row of the claimed-vs-audited table
(:mod:`reports.audit_table`; one ``FAIL AUDIT`` line per flagged row, whatever the baseline).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.errors import BenchError

from .tables import load_frame

#: (source, metric) -> higher_is_worse; sources are matched for every attack of that kind
GATED_UTILITY = {"test_acc": False}
GATED_LEAKAGE = {"auc", "advantage", "tpr_at_1%fpr", "attack_acc"}


def _means(run_dir) -> dict:
    df = load_frame(run_dir)
    out: dict = {}
    for (ds, d, eps, src, met), g in df.groupby(["dataset", "defense", "epsilon", "source", "metric"]):
        if src == "utility" and met in GATED_UTILITY:
            worse = "lower"
        elif src not in ("utility", "privacy", "inversion-target") and met in GATED_LEAKAGE:
            worse = "higher"
        else:
            continue
        out.setdefault(f"{ds}/{d}/eps={eps}", {})[f"{src}.{met}"] = {"value": float(g["value"].mean()),
                                                                      "worse": worse}
    return out


def load_baseline(path) -> dict:
    """Read and validate a baseline file: {"rows": {row: {metric: {"value": float, "worse": ...}}}}."""
    bad = BenchError(f"baseline file {path} is not a bench baseline (expected JSON "
                     "{\"rows\": {row: {metric: {\"value\": number, \"worse\": \"higher\"|\"lower\"}}}})")
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except FileNotFoundError:
        raise BenchError(f"baseline file not found: {path} (create it with --write-baseline)") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise bad from None
    if not isinstance(rows, dict):
        raise bad
    for metrics in rows.values():
        if not isinstance(metrics, dict):
            raise bad
        for m in metrics.values():
            if (not isinstance(m, dict) or m.get("worse") not in ("higher", "lower")
                    or isinstance(m.get("value"), bool) or not isinstance(m.get("value"), (int, float))):
                raise bad
    return rows


def write_baseline(run_dir, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": 1, "rows": _means(run_dir)}, indent=1, sort_keys=True) + "\n")
    return path


def check_run(run_dir, baseline, leakage_tolerance: float = 0.05, accuracy_tolerance: float = 0.02):
    base = load_baseline(baseline)
    if not all(math.isfinite(t) and t >= 0 for t in (leakage_tolerance, accuracy_tolerance)):
        raise BenchError("tolerances must be >= 0 and finite")
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
            if b["worse"] == "higher":
                bad, tol = v > bv + leakage_tolerance, leakage_tolerance
            else:
                bad, tol = v < bv - accuracy_tolerance, accuracy_tolerance
            ok &= not bad
            lines.append(f"{'FAIL' if bad else 'ok  '} {row} {name}: {v:.4f} (baseline {bv:.4f}, "
                         f"{b['worse']} is worse, tolerance {tol:g})")
    audit_ok, audit_lines = check_audit(run_dir)
    lines += audit_lines
    why = ([] if ok else ["leakage rose or accuracy fell beyond tolerance"]) + \
        ([] if audit_ok else ["an audited epsilon exceeds the claimed epsilon"])
    lines.append("check passed" if not why else "check FAILED: " + "; ".join(why))
    return ok and audit_ok, lines


def check_audit(run_dir) -> tuple[bool, list[str]]:
    """(ok, lines): one ``FAIL AUDIT ...`` line per row whose audited eps exceeds its claim."""
    from .audit_table import audit_table, example_level_claims, familywise_bounds, flagged_lines

    table = audit_table(load_frame(run_dir), example_level_claims(run_dir), familywise_bounds(run_dir))
    bad = flagged_lines(table)
    n = int(table["n_bounds"].sum())
    if bad:
        return False, [f"FAIL {line}" for line in bad]
    return True, [f"ok   audit: no audited epsilon above its claim ({n} bounds in {len(table)} rows)"]
