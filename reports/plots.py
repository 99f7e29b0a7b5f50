"""Privacy-utility and privacy-leakage curves of a run (matplotlib, Agg, no pyplot state).

* ``accuracy_vs_eps_<dataset>.png``: test accuracy against the target ε, a line per defense with
  error bars = std over seeds; a non-private defense (ε = ∞) is a horizontal line with a band of
  ± one std (its own legend entry); y axis 0-100 %.
* ``leakage_vs_eps_<dataset>.png``: one panel per attack - membership (and generator) attacks their
  AUC (y axis 0.5-1 at least), inversion attacks the judge's top-1 attack accuracy (%, 0-100) - same
  layout; only for a dataset where such an attack ran. An attack's kind is the one the run recorded
  (:mod:`reports.kinds`).

* ``robustness_vs_utility_<dataset>.png``: one panel per inversion attack: its top-1 accuracy
  against the test accuracy of the release it attacked (the inversion-protocol target, metric
  ``inversion-target/test_acc``: accuracy on its private classes), a point per (defense, ε) with
  error bars = std over seeds: the robustness/utility view
  of the model-inversion defense papers (TL-DMI's curve over frozen depths, MID's and BiDO's
  trade-off); lower right is better.

The ε axis is logarithmic when the grid spans more than a factor of 4. Epsilons are the cells'
targets; each defense's privacy unit is in the legend, since equal ε in different units is not
equal privacy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from reports.frame import _defense_order
from reports.kinds import frame_kinds

#: which metric of an attack is plotted against ε: (metric, y label, chance level, scale, y range).
#: The y range is kept (widened only to show every point), so a small spread of, say, AUC 0.50-0.56
#: is drawn as small as it is, not stretched over the whole panel.
LEAKAGE_METRICS = [("auc", "membership AUC", 0.5, 1.0, (0.5, 1.0)),
                   ("top1", "inversion attack acc top-1 (%)", None, 100.0, (0.0, 100.0))]
#: the attack kinds whose panels plot each metric of :data:`LEAKAGE_METRICS`
LEAKAGE_KINDS = {"auc": ("membership", "generator"), "top1": ("inversion",)}
#: the y range of the accuracy curves (test accuracy, %)
ACCURACY_RANGE = (0.0, 100.0)
#: what the shaded band around a non-private (ε = ∞) line is, in the legend
BAND_LABEL = "± 1 std over seeds"


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(4.6 * cols + 1.8, 3.6 * rows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def _curves(ax, g: pd.DataFrame, order: list[str], ylabel: str, chance: float | None = None,
            scale: float = 1.0, yrange: tuple[float, float] | None = None) -> bool:
    """Draw one panel: a line per defense of ``g`` (rows: defense, unit, epsilon, seed, value); a
    non-private defense is a dashed line with a band of ± one std over seeds, labelled in the
    legend. ``yrange``: the y axis shows at least this range (widened to hold every point)."""
    private = g[g.epsilon != "inf"]
    eps = sorted({float(e) for e in private.epsilon})
    drew = False
    lo, hi = math.inf, -math.inf
    for i, d in enumerate(o for o in order if o in set(g.defense)):
        dg = g[g.defense == d]
        unit = dg["unit"].iloc[0]
        color = f"C{i % 10}"
        stats = dg.groupby("epsilon")["value"].agg(["mean", "std", "count"]).reset_index()
        stats["std"] = stats["std"].fillna(0.0)
        if unit == "none" or (stats.epsilon == "inf").all():
            m, s = scale * stats["mean"].iloc[0], scale * stats["std"].iloc[0]
            ax.axhline(m, color=color, ls="--", lw=1.2, label=f"{d} (ε=∞)")
            if s > 0:
                ax.axhspan(m - s, m + s, color=color, alpha=0.12, lw=0, label=f"{d} (ε=∞): {BAND_LABEL}")
            lo, hi = min(lo, m - s), max(hi, m + s)
        else:
            stats = stats[stats.epsilon != "inf"].assign(x=lambda t: t.epsilon.astype(float)).sort_values("x")
            ax.errorbar(stats.x, scale * stats["mean"], yerr=scale * stats["std"], color=color, marker="o", ms=4,
                        capsize=3, lw=1.4, label=f"{d} ({unit})")
            if len(stats):
                lo = min(lo, float((scale * (stats["mean"] - stats["std"])).min()))
                hi = max(hi, float((scale * (stats["mean"] + stats["std"])).max()))
        drew = True
    if chance is not None:
        ax.axhline(scale * chance, color="k", ls=":", lw=0.8, label="chance")
    if yrange is not None:
        span = yrange[1] - yrange[0]
        ax.set_ylim(min(yrange[0], lo - 0.03 * span) if math.isfinite(lo) else yrange[0],
                    max(yrange[1], hi + 0.03 * span) if math.isfinite(hi) else yrange[1])
    if eps:
        if eps[-1] / eps[0] > 4:
            ax.set_xscale("log")
        pad = 0.3 * (eps[-1] - eps[0]) or 0.5 * eps[0]
        ax.set_xlim((eps[0] / 1.6, eps[-1] * 1.6) if ax.get_xscale() == "log" else (eps[0] - pad, eps[-1] + pad))
        ax.set_xticks(eps)
        ax.set_xticklabels([f"{e:g}" for e in eps])
    ax.set(xlabel="target ε", ylabel=ylabel)
    ax.grid(alpha=0.3)
    return drew


def _legend(fig, axes, host) -> None:
    """One legend beside ``host`` with every entry of every panel, once."""
    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    labels = sorted(seen, key=lambda lab: lab == "chance")  # the reference line last
    host.legend([seen[lab] for lab in labels], labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def accuracy_figure(df: pd.DataFrame, dataset: str):
    """The accuracy-vs-ε figure of ``dataset`` (a matplotlib Figure), None without test accuracies."""
    g = df[(df.dataset == dataset) & (df.source == "utility") & (df.metric == "test_acc")]
    if not len(g):
        return None
    fig, axes = _figure(1)
    _curves(axes[0], g, _defense_order(df), "test accuracy (%)", scale=100.0, yrange=ACCURACY_RANGE)
    axes[0].set_title(f"{dataset}: accuracy vs ε (mean ± std over seeds)", fontsize=10)
    _legend(fig, axes[:1], axes[0])
    return fig


def accuracy_plot(df: pd.DataFrame, dataset: str, path: Path) -> Path | None:
    fig = accuracy_figure(df, dataset)
    return None if fig is None else _save(fig, path)


def leakage_figure(df: pd.DataFrame, dataset: str):
    """The leakage-vs-ε figure of ``dataset``: a panel per attack that ran (membership AUC, inversion
    top-1 in %); None when no attack of these kinds ran on it."""
    d = df[df.dataset == dataset]
    kinds = frame_kinds(df)
    panels = []
    for metric, label, chance, scale, yrange in LEAKAGE_METRICS:
        for attack in sorted(a for a in d[d.metric == metric]["source"].unique() if kinds.get(a) in LEAKAGE_KINDS[metric]):
            panels.append((attack, metric, label, chance, scale, yrange))
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    order = _defense_order(df)
    for ax, (attack, metric, label, chance, scale, yrange) in zip(axes, panels):
        g = d[(d.source == attack) & (d.metric == metric)]
        _curves(ax, g, order, label, chance, scale=scale, yrange=yrange)
        ax.set_title(f"{attack}", fontsize=10)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    _legend(fig, axes[:len(panels)], axes[len(panels) - 1])
    fig.suptitle(f"{dataset}: leakage vs ε (mean ± std over seeds)", fontsize=11)
    return fig


def leakage_plot(df: pd.DataFrame, dataset: str, path: Path) -> Path | None:
    fig = leakage_figure(df, dataset)
    return None if fig is None else _save(fig, path)


def robustness_figure(df: pd.DataFrame, dataset: str):
    """Inversion attack top-1 against the attacked (inversion-protocol) target's test accuracy, per
    inversion attack of ``dataset``; None when the run has no inversion target accuracy."""
    d = df[df.dataset == dataset]
    kinds = frame_kinds(df)
    util = d[(d.source == "inversion-target") & (d.metric == "test_acc")]
    attacks = sorted(a for a in d[d.metric == "top1"]["source"].unique() if kinds.get(a) == "inversion")
    if not attacks or not len(util):
        return None
    fig, axes = _figure(len(attacks))
    order = _defense_order(df)
    for ax, attack in zip(axes, attacks):
        top1 = d[(d.source == attack) & (d.metric == "top1")]
        pairs = top1.merge(util, on=["defense", "epsilon", "seed"], suffixes=("_y", "_x"))
        for k, defense in enumerate(order):
            for eps in sorted(pairs[pairs.defense == defense]["epsilon"].unique(),
                              key=lambda e: math.inf if e == "inf" else float(e)):
                sel = pairs[(pairs.defense == defense) & (pairs.epsilon == eps)]
                x = 100 * sel["value_x"].astype(float)
                y = 100 * sel["value_y"].astype(float)
                unit = sel["unit_y"].iloc[0]
                label = defense if eps == "inf" else f"{defense} (ε={eps}, {unit})"
                ax.errorbar(x.mean(), y.mean(), xerr=x.std(ddof=1) if len(x) > 1 else 0,
                            yerr=y.std(ddof=1) if len(y) > 1 else 0, fmt="o", color=f"C{k % 10}", capsize=3,
                            label=label)
                ax.annotate(defense, (x.mean(), y.mean()), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("attacked target's test accuracy, private classes (%)", fontsize=9)
        ax.set_ylabel("attack acc top-1 (%)", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(attack, fontsize=10)
    for ax in axes[len(attacks):]:
        ax.set_axis_off()
    _legend(fig, axes[:len(attacks)], axes[len(attacks) - 1])
    fig.suptitle(f"{dataset}: inversion robustness vs utility (mean ± std over seeds; lower right is better)",
                 fontsize=11)
    return fig


def robustness_plot(df: pd.DataFrame, dataset: str, path: Path) -> Path | None:
    fig = robustness_figure(df, dataset)
    return None if fig is None else _save(fig, path)


def write_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Accuracy-vs-ε and leakage-vs-ε figures, one of each per dataset of the run frame ``df``
    (:func:`reports.frame.load_frame`)."""
    out = Path(out_dir)
    paths = []
    for ds in sorted(df.dataset.unique()):
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ds)
        for p in (accuracy_plot(df, ds, out / f"accuracy_vs_eps_{safe}.png"),
                  leakage_plot(df, ds, out / f"leakage_vs_eps_{safe}.png"),
                  robustness_plot(df, ds, out / f"robustness_vs_utility_{safe}.png")):
            if p is not None:
                paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------------
# Per-cell inversion grids as plain image mosaics (no matplotlib layout: milliseconds per cell,
# so a run with a hundred cell x attack pairs still renders in seconds). The combined grids of
# reports/inversion_grid.py keep their captions.
# ------------------------------------------------------------------------------------------------

_GREEN = np.array([0.17, 0.63, 0.17], dtype=np.float32)
_RED = np.array([0.84, 0.15, 0.16], dtype=np.float32)


def cell_mosaic(images: np.ndarray, path: str | Path, *, eval_pred=None, max_rows: int = 10, scale: int = 2,
                border: int = 2) -> Path:
    """``images`` (K, N, C, H, W) in [0, 1] as one RGB PNG: columns = the K target classes, rows =
    the first ``max_rows`` restarts / samples, each tile framed green when the judge's prediction
    ``eval_pred[k, n]`` is the target class ``k``, red when not, grey when unknown; pixels
    upscaled ``scale`` times (nearest)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        images = images[:, None]
    if images.ndim != 5:
        raise ValueError(f"images must be (K, N, C, H, W), got shape {images.shape}")
    k, n, c, h, w = images.shape
    rows = max(1, min(n, max_rows))
    th, tw = h * scale + 2 * border, w * scale + 2 * border
    canvas = np.ones((rows * th + (rows + 1) * border, k * tw + (k + 1) * border, 3), dtype=np.float32)
    for r in range(rows):
        for col in range(k):
            img = np.clip(images[col, r], 0, 1)
            rgb = np.repeat(img, 3, 0) if c == 1 else img[:3]
            rgb = np.transpose(rgb, (1, 2, 0)).repeat(scale, 0).repeat(scale, 1)
            frame = np.full((th, tw, 3), 0.6, dtype=np.float32)
            if eval_pred is not None:
                frame[:] = _GREEN if int(np.asarray(eval_pred)[col, r]) == col else _RED
            frame[border:border + h * scale, border:border + w * scale] = rgb
            y, x = border + r * (th + border), border + col * (tw + border)
            canvas[y:y + th, x:x + tw] = frame
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib.image

    matplotlib.image.imsave(path, canvas)
    return path


def write_cell_mosaics(run_dir: str | Path, out_dir: str | Path, *, max_rows: int = 10) -> list[Path]:
    """One mosaic per finished cell and inversion attack of ``run_dir`` (the arrays the attack
    cached: ``images``, ``eval_pred``), named like reports/inversion_grid.py's per-cell grids."""
    from bench.core.store import Store
    from reports.inversion_grid import _load_arrays, _safe

    store = Store(run_dir, create=False)
    try:
        cells = {c["cell_key"]: c for c in store.cells("done")}
        arts = store.query("SELECT cell_key, name, path FROM artifacts WHERE name LIKE 'attack:%' ORDER BY name")
    finally:
        store.close()
    paths = []
    for a in arts:
        cell = cells.get(a["cell_key"])
        arrays = None if cell is None else _load_arrays(Path(a["path"]))
        if arrays is None:
            continue
        eps = cell["epsilon"]
        name = (f"{_safe(cell['dataset'])}_{_safe(cell['defense'])}_eps{'inf' if eps is None else f'{eps:g}'}"
                f"_seed{cell['seed']}_{_safe(a['name'].split(':', 1)[1])}.png")
        paths.append(cell_mosaic(arrays["images"], Path(out_dir) / name, eval_pred=arrays.get("eval_pred"),
                                 max_rows=max_rows))
    return sorted(paths)


# ------------------------------------------------------------------------------------------------
# Every figure of a report, in parallel when there are many
# ------------------------------------------------------------------------------------------------

def _roc_chunk(jobs: list) -> list[Path]:
    from reports.roc import plot_roc

    return [plot_roc(curves, path, title=title) for curves, path, title in jobs]


def render_figures(run_dir: str | Path, out: str | Path, df: pd.DataFrame, *, workers: int | None = None,
                   parallel_from: int = 12, inversion_run: str | Path | None = None) -> dict[str, list[Path]]:
    """All figures of ``bench report``: ``plots`` (accuracy / leakage vs ε), ``roc`` (one
    linear + log-log ROC figure per cell, reports/roc.py), ``grids`` (combined inversion grids of
    reports/inversion_grid.py, then the per-cell mosaics). Matplotlib layout dominates the cost
    of a large run, so with ``parallel_from`` or more ROC figures the ROC figures and the combined
    grids are drawn by a pool of ``workers`` spawned processes (default: the CPU count, at most 4)
    while this process draws the rest; the output is the same either way."""
    from concurrent.futures import ProcessPoolExecutor

    from reports.inversion_grid import write_grids
    from reports.roc import load_run_curves

    out = Path(out)
    inv_run = inversion_run or run_dir  # the inversion grids' store (write_report's inversion_from)
    cells = sorted(load_run_curves(run_dir).values(), key=lambda c: c["stem"])
    roc_jobs = [(dict(sorted(c["curves"].items())), out / "roc" / f"{c['stem']}.png", c["title"]) for c in cells]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(roc_jobs) < parallel_from:
        roc = _roc_chunk(roc_jobs)
        grids = write_grids(inv_run, out / "inversion", per_cell=False)
        plots = write_plots(df, out / "plots")
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            grids_f = pool.submit(write_grids, inv_run, out / "inversion", per_cell=False)
            size = max(1, math.ceil(len(roc_jobs) / (4 * workers)))
            roc_f = [pool.submit(_roc_chunk, roc_jobs[i:i + size]) for i in range(0, len(roc_jobs), size)]
            plots = write_plots(df, out / "plots")
            mosaics = write_cell_mosaics(inv_run, out / "inversion" / "cells")
            roc = [p for f in roc_f for p in f.result()]
            grids = grids_f.result() + mosaics
        return {"plots": plots, "roc": roc, "grids": grids}
    return {"plots": plots, "roc": roc, "grids": grids + write_cell_mosaics(inv_run, out / "inversion" / "cells")}
