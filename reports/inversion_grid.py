"""Image grids of model-inversion reconstructions (PNG, matplotlib, no pyplot state).

* :func:`cell_grid` - one cell and attack: rows = restarts / samples, columns = target classes.
* :func:`combined_grid` - one suite: rows = defenses (with epsilon and seed), columns = target
  classes, showing per class the reconstruction the attacker would pick (``selected``: highest
  target confidence; the first one when the attack stored no choice).
* :func:`write_grids` - both kinds from a run directory: the store's ``artifacts`` table maps
  each cell's ``attack:<name>`` to its cache entry, whose ``arrays.npz`` holds ``array.images``
  of shape (K, N, C, H, W) for inversion attacks (membership attacks have none and are skipped).

Each image is captioned with the judge's prediction (green = the target class, red = not).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from bench.core.store import Store
from reports.artifacts import cached_arrays


def _figure(rows: int, cols: int, cell: float = 1.1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * cell + 1.6, rows * cell * 1.15 + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _show(ax, img: np.ndarray):
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _caption(ax, pred: Optional[int], target: int):
    if pred is None:
        return
    ok = int(pred) == int(target)
    ax.set_xlabel(f"E: {int(pred)}", fontsize=7, color="tab:green" if ok else "tab:red", labelpad=1)


def _class_names(k: int, classes: Optional[Sequence]) -> list[str]:
    if classes is None or len(classes) != k:
        return [str(i) for i in range(k)]
    return [str(int(c)) if isinstance(c, (int, np.integer)) else str(c) for c in classes]


def cell_grid(images: np.ndarray, path: str | Path, *, title: str = "", classes: Optional[Sequence] = None,
              eval_pred: Optional[np.ndarray] = None, max_rows: int = 10) -> Path:
    """Render one attack's reconstructions ``images`` (K, N, C, H, W) - or (K, C, H, W), one per
    class - as rows = the first ``max_rows`` restarts/samples, columns = target classes."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, None]
    if images.ndim != 5:
        raise ValueError(f"images must be (K, N, C, H, W), got shape {images.shape}")
    k, n = images.shape[:2]
    rows = max(1, min(n, max_rows))
    names = _class_names(k, classes)
    fig, axes = _figure(rows, k)
    for r in range(rows):
        for c in range(k):
            ax = axes[r][c]
            _show(ax, images[c, r])
            _caption(ax, None if eval_pred is None else np.asarray(eval_pred)[c, r], c)
            if r == 0:
                ax.set_title(f"class {names[c]}", fontsize=8)
        axes[r][0].set_ylabel(f"#{r}", fontsize=7, rotation=0, labelpad=12, va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def combined_grid(rows: list[dict], path: str | Path, *, title: str = "", classes: Optional[Sequence] = None) -> Path:
    """rows: ``{"label": str, "images": (K, C, H, W), "eval_pred": (K,) or None}``, one per
    defense; columns = target classes."""
    if not rows:
        raise ValueError("no rows to draw")
    k = len(rows[0]["images"])
    names = _class_names(k, classes)
    fig, axes = _figure(len(rows), k)
    for r, row in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            if c < len(row["images"]):
                _show(ax, row["images"][c])
                pred = row.get("eval_pred")
                _caption(ax, None if pred is None else pred[c], c)
            else:
                ax.set_axis_off()
            if r == 0:
                ax.set_title(f"class {names[c]}", fontsize=8)
        axes[r][0].set_ylabel(row["label"], fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _load_arrays(entry: Path) -> Optional[dict]:
    """The verified arrays of an inversion attack's cache entry (None: missing, corrupt, no images)."""
    return cached_arrays(entry, "images")


def _eps_label(eps) -> str:
    return "∞" if eps is None or (isinstance(eps, float) and math.isinf(eps)) else f"{eps:g}"


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(s))


def write_grids(run_dir: str | Path, out_dir: str | Path, *, per_cell: bool = True, max_rows: int = 10) -> list[Path]:
    """Render every inversion attack of the finished cells of ``run_dir``: one combined grid per
    (dataset, attack) - rows = defenses (epsilon, seed), columns = target classes - in
    ``out_dir``, and (``per_cell``) one grid per cell and attack in ``out_dir/cells``. Returns
    the written paths; cells whose cache entry is gone are skipped with a warning."""
    store = Store(run_dir, create=False)
    try:
        cells = {c["cell_key"]: c for c in store.cells("done")}
        arts = store.query("SELECT cell_key, name, path FROM artifacts WHERE name LIKE 'attack:%'")
    finally:
        store.close()
    out = Path(out_dir)
    groups: dict[tuple, list] = {}
    paths: list[Path] = []
    for a in arts:
        cell = cells.get(a["cell_key"])
        if cell is None:
            continue
        arrays = _load_arrays(Path(a["path"]))
        if arrays is None:
            if not (Path(a["path"]) / "manifest.json").exists():
                warnings.warn(f"cache entry {a['path']} of {a['name']} is missing; grid skipped", stacklevel=2)
            continue
        attack = a["name"].split(":", 1)[1]
        images = arrays["images"]
        if images.ndim == 4:
            images = images[:, None]
        classes = arrays.get("classes")
        classes = None if classes is None else [int(c) for c in classes]
        eps = cell["epsilon"]
        label = f"{cell['defense']} ε={_eps_label(eps)} s{cell['seed']}"
        if per_cell:
            name = f"{_safe(cell['dataset'])}_{_safe(cell['defense'])}_eps{'inf' if eps is None else f'{eps:g}'}_seed{cell['seed']}_{_safe(attack)}.png"
            paths.append(cell_grid(images, out / "cells" / name, classes=classes, eval_pred=arrays.get("eval_pred"),
                                   max_rows=max_rows, title=f"{attack} on {cell['dataset']}: {label}"))
        sel = arrays.get("selected")
        idx = np.zeros(len(images), dtype=int) if sel is None else np.asarray(sel, dtype=int)
        pred = arrays.get("eval_pred")
        row = {"label": label, "images": images[np.arange(len(images)), idx],
               "eval_pred": None if pred is None else np.asarray(pred)[np.arange(len(images)), idx],
               "sort": (cell["defense"] != "none", cell["defense"], math.inf if eps is None else eps, cell["seed"]),
               "classes": classes}
        groups.setdefault((cell["dataset"], attack), []).append(row)
    for (dataset, attack), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["sort"])
        name = f"inversion_{_safe(dataset)}_{_safe(attack)}.png"
        paths.append(combined_grid(rows, out / name, classes=rows[0]["classes"],
                                   title=f"{attack} on {dataset}: selected reconstruction per target class"))
    return paths
