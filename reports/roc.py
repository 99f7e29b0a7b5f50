"""ROC curves of membership attacks: a linear panel beside a log-log panel (FPR and TPR from
1e-5 to 1, as in Carlini et al.'s ``plot.py`` and ML Privacy Meter's ``ROC_log``), from scores and
labels (higher score = "member").

    from reports.roc import plot_roc
    plot_roc({"LiRA": (scores, labels), "RMIA": (s2, l2)}, "roc.png", title="MNIST, none")

or, for every finished cell of a run (one PNG per cell, every membership attack on it):

    python -m reports.roc runs/mia-calibration [--out DIR]

On the log-log panel, points with FPR = 0 cannot be drawn; the lowest FPR a curve can show is
1 / n_nonmembers (marked by the dotted vertical line), so TPR at 0.1 % FPR needs >= 1 000
non-members to be read off at all and many more to be read off reliably.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold (no dropped points), starting at (0, 0)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(int).ravel()
    if scores.shape != labels.shape:
        raise ValueError("scores and labels must have the same length")
    if labels.min() == labels.max():
        raise ValueError("need both members (1) and non-members (0)")
    uniq, inv = np.unique(-scores, return_inverse=True)
    pos = np.bincount(inv[labels == 1], minlength=len(uniq))
    neg = np.bincount(inv[labels == 0], minlength=len(uniq))
    tpr = np.r_[0.0, np.cumsum(pos) / pos.sum()]
    fpr = np.r_[0.0, np.cumsum(neg) / neg.sum()]
    return fpr, tpr


def _label(name: str, fpr, tpr) -> str:
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    low = float(tpr[fpr <= 1e-3].max()) if (fpr <= 1e-3).any() else 0.0
    return f"{name} (AUC {auc:.3f}, TPR@0.1% {100 * low:.1f}%)"


def plot_roc(curves, path, *, title: str | None = None, dpi: int = 120) -> Path:
    """Write a PNG with a linear and a log-log ROC panel.

    ``curves``: ``{name: (scores, labels)}``, or one ``(scores, labels)`` pair.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(curves, Mapping):
        curves = {"attack": curves}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_lin, ax_log) = plt.subplots(1, 2, figsize=(11, 4.8))
    min_fpr = 1.0
    for name, (scores, labels) in curves.items():
        fpr, tpr = roc_points(scores, labels)
        lab = _label(name, fpr, tpr)
        line, = ax_lin.plot(fpr, tpr, label=lab, lw=1.4)
        ok = (fpr > 0) & (tpr > 0)
        ax_log.plot(fpr[ok], tpr[ok], color=line.get_color(), lw=1.4, label=lab)
        min_fpr = min(min_fpr, 1.0 / max(1, int((np.asarray(labels) == 0).sum())))
    grid = np.logspace(-5, 0, 200)
    ax_lin.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax_log.plot(grid, grid, "k--", lw=0.8, label="chance")
    ax_log.axvline(min_fpr, color="grey", ls=":", lw=0.8)
    ax_lin.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax_log.set(xscale="log", yscale="log", xlim=(1e-5, 1), ylim=(1e-5, 1), xlabel="false positive rate",
               ylabel="true positive rate", title="ROC (log-log)")
    for ax in (ax_lin, ax_log):
        ax.grid(alpha=0.3, which="both" if ax is ax_log else "major")
    ax_log.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    # fixed margins: tight_layout measured about half of a large report's CPU time
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.11, top=0.86 if title else 0.92, wspace=0.2)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def load_run_curves(run_dir) -> dict[str, dict]:
    """Per finished cell: {"title": ..., "curves": {attack: (scores, labels)}} from the run's
    store and the cached attack arrays."""
    from reports.artifacts import cached_arrays
    from reports.frame import open_run

    store = open_run(run_dir)
    try:
        cells = store.query("SELECT cell_key, dataset, defense, epsilon, seed FROM cells WHERE status='done'")
        out = {}
        for c in cells:
            key, ds, defense, eps, seed = c["cell_key"], c["dataset"], c["defense"], c["epsilon"], c["seed"]
            arts = store.query("SELECT name, path FROM artifacts WHERE cell_key=? AND kind='attack'", (key,))
            curves = {}
            for a in arts:
                z = cached_arrays(a["path"], "scores", "labels")
                if z is not None:
                    curves[a["name"].split(":", 1)[-1]] = (z["scores"], z["labels"])
            if curves:
                eps_s = "inf" if eps is None else f"{eps:g}"
                out[key] = {"title": f"{ds} - {defense} - eps={eps_s} - seed {seed}",
                            "stem": f"roc_{ds}_{defense}_eps{eps_s}_seed{seed}", "curves": curves}
        return out
    finally:
        store.close()


def plot_run(run_dir, out_dir=None) -> list[Path]:
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    paths = []
    for cell in load_run_curves(run_dir).values():
        paths.append(plot_roc(dict(sorted(cell["curves"].items())), out_dir / f"{cell['stem']}.png",
                              title=cell["title"]))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="ROC plots (linear + log-log) of a run's membership attacks")
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None, help="output folder (default: RUN_DIR/plots)")
    args = ap.parse_args(argv)
    for p in plot_run(args.run_dir, args.out):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
