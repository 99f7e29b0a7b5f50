"""``none``: ordinary non-private training.

The reference row of every table, and the teacher that distillation defenses (DPSD, DPDFD)
start from (they ask the runner for this defense's cached release on the same task and seed).
Defaults (cnn, Adam 1e-3 with cosine decay, batch 128, 10 epochs) were fixed on the
validation split (constant-LR 8-epoch training peaked early on noisy validation epochs and gave
98.78-99.09 % test across seeds). Model selection: the epoch with the best validation accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.api import Defense, PrivacyReport, Release, register_defense, val_selection
from bench.lib.models import build_model, spec_for
from bench.lib.train import fit_classifier, seed_everything


@dataclass
class NoneConfig:
    arch: str = "cnn"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    #: per-step cosine decay of the learning rate to 0 (or constant)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    #: select the epoch with the best validation accuracy (else keep the last epoch)
    select_on_val: bool = True


@register_defense("none")
class NoDefense(Defense):
    """Non-private training (no defense)."""

    Config = NoneConfig
    privacy_unit = "none"
    paper = "—"

    def fit(self, ctx) -> Release:
        c = self.config
        gen = seed_everything(ctx.seed)
        spec = spec_for(ctx.task, c.arch)
        model = build_model(spec)
        model, hist = fit_classifier(model, ctx.task.members, ctx.task.val, epochs=c.epochs, lr=c.lr,
                                     batch_size=c.batch_size, optimizer=c.optimizer, weight_decay=c.weight_decay,
                                     device=ctx.device, generator=gen, progress=ctx.progress,
                                     select_on_val=c.select_on_val, lr_schedule=c.lr_schedule)
        privacy = PrivacyReport.non_private()
        privacy.selection = val_selection("the epoch") if c.select_on_val else "last epoch (no selection on any split)"
        return Release({"model": model}, {"model": spec}, privacy, {"history": hist})
