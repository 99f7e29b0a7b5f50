"""Where the time went: the runner's stage timings (bench/harness/timing.py) as two tables.

``timing``: one row per defense (suite variant), the mean over its cells of the seconds each stage
took on its own (``self`` time: a stage's time minus the stages inside it, so the stage columns add
up to the cell), the mean cell wall and CPU time, the number of cells and how many stages were
cache hits, and a last row with the run's totals (sums over every cell). ``timing-attacks``: the
mean own seconds of each attack per defense. Times are those of the invocation that built the cell
(a warm rerun skips finished cells and keeps their times); CPU seconds are the cell process's (work
in other processes, e.g. ``--jobs`` reference pools, is wall time only).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from reports.frame import Table, _defense_order, open_run

STAGE_ORDER = ("fit", "defense-fit", "references", "inversion-fit", "artifact", "attack")


def _frame(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = open_run(run_dir)
    try:
        t = pd.DataFrame(store.timings())
        cells = pd.DataFrame(store.cells("done"))
    finally:
        store.close()
    return t, cells


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.1f}" if v >= 0.05 or v == 0 else "<0.1"


def timing_tables(run_dir: str | Path, df: pd.DataFrame) -> list[Table]:
    """The two timing tables of the run, or [] when it recorded no timings (older stores)."""
    t, cells = _frame(run_dir)
    if t.empty or cells.empty:
        return []
    cells = cells[cells.cell_key.isin(set(t.cell_key))]
    label = cells.set_index("cell_key")["defense"]
    t["defense"] = t.cell_key.map(label)
    per_cell = t.pivot_table(index="cell_key", columns="stage", values="self_wall", aggfunc="sum", fill_value=0.0)
    cpu = t.groupby("cell_key")["self_cpu"].sum()
    hits = t.groupby("cell_key")["cached"].agg(["sum", "count"])
    stages = [s for s in STAGE_ORDER if s in per_cell.columns] + sorted(set(per_cell.columns) - set(STAGE_ORDER))
    order = [d for d in _defense_order(df) if d in set(label)] + sorted(set(label) - set(_defense_order(df)))
    wall = cells.set_index("cell_key")["wall_time"]
    rows, data = [], []
    for d in order + ["all cells (sum)"]:
        keys = list(label.index) if d == "all cells (sum)" else list(label[label == d].index)
        agg = (lambda s: float(s.sum())) if d == "all cells (sum)" else (lambda s: float(s.mean()))
        rec = {"defense": d, "cells": len(keys)}
        for s in stages:
            rec[f"{s} (s)"] = agg(per_cell.loc[keys, s])
        rec["cell wall (s)"] = agg(wall.loc[keys])
        rec["cell CPU (s)"] = agg(cpu.loc[keys])
        rec["cached stages"] = f"{int(hits.loc[keys, 'sum'].sum())}/{int(hits.loc[keys, 'count'].sum())}"
        data.append(rec)
        rows.append({k: (_fmt(v) if isinstance(v, float) else v) for k, v in rec.items()})
    notes = ["Seconds per cell, mean over the defense's cells (last row: sums over the run); a stage's own "
             "time excludes the stages inside it (an attack's reference models are in `references`, its GAN "
             "prior or judge in `artifact`), so the stage columns add up to the cell's timed work.",
             "Times are those of the invocation that built each cell; cached stages took only their load time. "
             "CPU is the cell process's (work in other processes shows as wall time only)."]
    stage_table = Table("timing", "Where the time went (seconds per cell)", pd.DataFrame(rows), pd.DataFrame(data), notes)
    att = t[t.stage == "attack"]
    if att.empty:
        return [stage_table]
    names = list(dict.fromkeys(att.name))
    piv = att.pivot_table(index="defense", columns="name", values="self_wall", aggfunc="mean")
    arows, adata = [], []
    for d in [d for d in order if d in piv.index]:
        rec = {"defense": d, **{f"{a} (s)": float(piv.loc[d, a]) if a in piv.columns else math.nan for a in names}}
        adata.append(rec)
        arows.append({k: (_fmt(v) if isinstance(v, float) else v) for k, v in rec.items()})
    attack_table = Table("timing-attacks", "Seconds per attack (own time, mean over cells)", pd.DataFrame(arows),
                         pd.DataFrame(adata), ["An attack's reference models and shared artifacts are not in its "
                                               "own time (see the stage table)."])
    return [stage_table, attack_table]
