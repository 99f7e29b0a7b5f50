"""Students trained on data the defense did not read directly (synthetic images, teacher-
labelled public queries): :func:`holdout`, a seeded train / selection split,
:func:`train_student`, epoch-selected minibatch training with diagnostic accuracy curves, and
:func:`train_synthetic_student`, the student of a DP data generator (DataLens, DP-GAN)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
from torch import nn

from bench.lib.models import build_model, spec_for
from bench.lib.tasks import Split
from bench.lib.train import fit_classifier


def holdout(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, selection) with ``round(frac * n)`` (at least one)
    selection rows; ``frac = 0`` gives an empty selection part."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    k = 0 if frac <= 0 else max(1, int(round(frac * n)))
    k = min(k, n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])


def train_student(model: nn.Module, train: Split, select: Optional[Split], *, epochs: int, lr: float,
                  batch_size: int, optimizer: str = "adam", weight_decay: float = 0.0, device="cpu",
                  seed: int = 0, curves: Optional[dict[str, Split]] = None,
                  progress: Callable = lambda it, **k: it, desc: str = "student epochs") -> tuple[nn.Module, dict]:
    """Cross-entropy training of ``model`` on ``train`` through :func:`bench.lib.train.fit_classifier`;
    keeps the epoch with the best accuracy on ``select`` (the last epoch when ``select`` is None or
    empty; history key ``select_acc``). ``curves`` maps a name to a split whose accuracy is recorded
    after every epoch (diagnostics only: never used for selection)."""
    use_select = select is not None and len(select) > 0
    model, hist = fit_classifier(model, train, select if use_select else None, epochs=epochs, lr=lr,
                                 batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                                 device=device, generator=torch.Generator().manual_seed(seed), progress=progress,
                                 select_on_val=use_select, curves=curves, desc=desc)
    hist["select_acc"] = hist.pop("val_acc")
    model.eval()
    return model, hist


def train_synthetic_student(task, synth: Split, *, arch, epochs: int, lr: float, batch_size: int, optimizer: str,
                            val_frac: float, seed: int, device="cpu", progress: Callable = lambda it, **k: it,
                            curves: Optional[dict[str, Split]] = None) -> tuple[nn.Module, dict, dict]:
    """The student of a synthetic set: architecture ``arch`` (a name or spec) trained on it, the
    epoch selected on its seeded synthetic holdout (``val_frac``; post-processing of the
    generator, no private data); returns (student, its spec, history). ``curves``: diagnostic
    accuracy curves (never selection)."""
    tr, va = holdout(len(synth), val_frac, seed * 31 + 5)
    spec = spec_for(task, arch)
    torch.manual_seed(seed * 31 + 6)
    student = build_model(spec)
    student, hist = train_student(student, synth.subset(tr), synth.subset(va), epochs=epochs, lr=lr,
                                  batch_size=batch_size, optimizer=optimizer, device=device, seed=seed * 31 + 7,
                                  curves=curves, progress=progress)
    return student, spec, hist
