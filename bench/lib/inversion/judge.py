"""The judge of every inversion attack: the evaluation classifier ``eval-cnn`` (BatchNorm +
LeakyReLU, three conv blocks: a different architecture from every target), its config
(:class:`EvaluatorConfig`), its training on the *classification* protocol of the same dataset
(all classes, resized to the inversion protocol's image size), and :func:`get_evaluator`, which
caches it as an artifact (its ``build`` is defined here, so the harness keys it on this module's
code). Attacks never see it: they produce their reconstructions first and hand them to
:func:`bench.lib.inversion.evaluate.evaluate_inversion`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError
from bench.lib.inversion.common import (
    ARTIFACT_VERSION,
    freeze,
    load_state,
    predict,
    resize,
    resolve,
    state_bundle,
)
from bench.lib.models import Classifier, build_model, register_arch


@register_arch("eval-cnn")
class EvalCNN(Classifier):
    """The inversion judge: conv3-BN-LeakyReLU blocks (widths w, 2w, 4w), max-pooling while the
    map is at least 4 px wide, a ``hidden``-d feature layer and the head. Not Opacus-compatible
    (BatchNorm) and deliberately unlike the targets' ``cnn`` / ``tanh-cnn`` / ``mlp``."""

    def __init__(self, in_channels=1, image_size=32, num_classes=10, width=32, hidden=128, dropout=0.3):
        super().__init__()
        layers, c, s = [], in_channels, image_size
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            if s >= 4:
                layers.append(nn.MaxPool2d(2))
                s //= 2
            c = out
        self.features = nn.Sequential(*layers)
        d = c * s * s
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, num_classes))


@dataclass
class EvaluatorConfig:
    width: int = 16
    hidden: int = 128
    epochs: int = 4
    #: at least this many optimisation steps (small datasets get more epochs)
    min_steps: int = 400
    batch_size: int = 128
    lr: float = 2e-3
    #: the classification-protocol seed the judge is trained on: fixed, so that one judge scores
    #: every cell and seed of a dataset
    seed: int = 0
    #: the classification protocol the judge is trained under (e.g. ``{}``: the dataset's default
    #: sizes); None: the suite's own protocol. Suites with a small member set (``dpsd-audit``) set
    #: ``{}`` so that their judge is trained like the full-data one of ``mnist-eps1``, not on 2 000 images.
    protocol: Optional[dict] = None

    def validate(self):
        if self.protocol is not None:
            if not isinstance(self.protocol, dict):
                raise BenchError("evaluator.protocol must be a mapping (a classification protocol) or null")
            if self.protocol.get("kind", "classification") != "classification":
                raise BenchError("evaluator.protocol must be a classification protocol")


def _train_evaluator(ptask, image_shape, cfg: EvaluatorConfig, device, progress) -> dict:
    """Adam with a one-cycle schedule on members + non-members of the classification protocol;
    the epoch with the best accuracy on its validation split is kept."""
    x = resize(torch.cat([ptask.members.x, ptask.nonmembers.x]), image_shape)
    y = torch.cat([ptask.members.y, ptask.nonmembers.y])
    vx, vy = resize(ptask.val.x, image_shape), ptask.val.y
    tx, ty = resize(ptask.test.x, image_shape), ptask.test.y
    spec = {"name": "eval-cnn", "in_channels": image_shape[0], "image_size": image_shape[-1],
            "num_classes": ptask.num_classes, "width": cfg.width, "hidden": cfg.hidden}
    gen = torch.Generator().manual_seed(cfg.seed + 4242)
    model = build_model(spec).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    best = (-1.0, None)
    for _ in progress(range(epochs), desc="evaluator epochs"):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two
                continue
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        va = float((predict(model, vx, device).argmax(1) == vy).float().mean()) if len(vy) else 0.0
        if va > best[0]:
            best = (va, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    model.eval()
    test_acc = float((predict(model, tx, device).argmax(1) == ty).float().mean()) if len(ty) else float("nan")
    return {**state_bundle("E", model), "spec": spec, "val_acc": best[0], "test_acc": test_acc,
            "train_rows": int(len(x))}


def get_evaluator(ctx, cfg: Any = None) -> tuple[nn.Module, dict]:
    """The (cached) judge for ``ctx.task``'s dataset and image size: ``(model, info)``. ``cfg``:
    an :class:`EvaluatorConfig`, a mapping of overrides of its defaults, or None."""
    ecfg = resolve(EvaluatorConfig, cfg, "evaluator")
    ptask = ctx.task_for("protocol", seed=ecfg.seed, protocol=ecfg.protocol)
    config = dataclasses.asdict(ecfg)
    if config["protocol"] is None:  # the judge of a suite's own protocol keeps its key
        del config["protocol"]
    key = {"dataset": ctx.task.dataset, "task": ptask.fingerprint, "image_shape": list(ctx.task.image_shape),
           "config": config, "version": ARTIFACT_VERSION}

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ecfg.seed)
            return _train_evaluator(ptask, ctx.task.image_shape, ecfg, ctx.device, ctx.progress)

    b = ctx.artifact("inversion-evaluator", key, build)
    model = freeze(load_state(build_model(b["spec"]), b, "E")).to(ctx.device)
    return model, {"eval_val_acc": float(b["val_acc"]), "eval_test_acc": float(b["test_acc"]),
                   "num_classes": int(b["spec"]["num_classes"])}
