"""Shared training and evaluation loops (non-private). DP training lives with its defense."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.lib.tasks import Split


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device, batch_size: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0)


def accuracy(model: nn.Module, split: Split, device, batch_size: int = 1024) -> float:
    if len(split) == 0:
        return float("nan")
    logits = predict_logits(model, split.x, device, batch_size)
    return float((logits.argmax(1) == split.y).float().mean())


def true_class_log_odds(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``log p_y - log(1 - p_y) = z_y - logsumexp_{j != y} z_j`` in float64, per example.

    The membership score that keeps its ranking information: it is a strictly increasing
    function of minus the cross-entropy loss (``loss = log(1 + exp(-phi))``), but it is computed
    from the logits directly, so it neither rounds to a tie at loss 0 (float32 cross-entropy is
    exactly 0 once the margin passes about 17; float64 at about 37) nor overflows. Carlini et
    al.'s logit scaling (LiRA, S&P 2022). ``logits``: (..., classes), ``y``: labels of the
    leading dimension."""
    z = logits.detach().cpu().double()
    y = torch.as_tensor(y).cpu().long()
    yy = y.view(-1, *([1] * (z.dim() - 2)), 1).expand(*z.shape[:-1], 1)
    zy = torch.gather(z, -1, yy).squeeze(-1)
    others = z.scatter(-1, yy, float("-inf"))
    return (zy - torch.logsumexp(others, dim=-1)).numpy()


def loss_from_log_odds(phi) -> np.ndarray:
    """Cross-entropy loss ``log(1 + exp(-phi))`` from :func:`true_class_log_odds`, float64, stable
    (a tiny loss stays a tiny positive number instead of 0)."""
    return np.logaddexp(0.0, -np.asarray(phi, dtype=np.float64))


def per_example_log_odds(model: nn.Module, split: Split, device, batch_size: int = 1024) -> np.ndarray:
    """:func:`true_class_log_odds` of ``model`` on ``split`` (float64)."""
    return true_class_log_odds(predict_logits(model, split.x, device, batch_size), split.y)


def per_example_loss(model: nn.Module, split: Split, device, batch_size: int = 1024) -> np.ndarray:
    """Per-example cross-entropy in float64, computed stably from the log-odds (never rounds to 0
    for a finite margin below ~700)."""
    return loss_from_log_odds(per_example_log_odds(model, split, device, batch_size))


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def fit_classifier(model: nn.Module, train: Split, val: Split, *, epochs: int, lr: float, batch_size: int,
                   optimizer: str = "adam", weight_decay: float = 0.0, device="cpu",
                   generator: Optional[torch.Generator] = None, progress: Callable = lambda it, **k: it,
                   select_on_val: bool = True, lr_schedule: str = "constant",
                   curves: Optional[dict[str, Split]] = None, desc: str = "epochs",
                   loss_fn: Optional[Callable] = None) -> tuple[nn.Module, dict]:
    """Minibatch cross-entropy training; keeps the epoch with the best **validation** accuracy
    (or the last one with ``select_on_val=False`` or no ``val``). ``lr_schedule``: ``constant`` or
    ``cosine`` (per-step cosine decay to 0 over all epochs). ``curves`` maps a name to a split whose
    accuracy is recorded after every epoch as ``<name>_acc`` (diagnostics, never used for
    selection). ``loss_fn(model, xb, yb) -> (loss, terms)`` replaces the cross-entropy (a
    regularised objective); the per-epoch means of its ``terms`` (name -> float) go to
    ``history["terms"]``. Returns the model and its history."""
    has_val = val is not None and len(val) > 0
    select_on_val = select_on_val and has_val
    model.to(device)
    layout = conv_layout(model, train.x)
    with memory_layout(layout, model):
        return _fit(model, train, val, epochs, lr, batch_size, optimizer, weight_decay, device, generator, progress,
                    select_on_val, lr_schedule, curves, desc, has_val, layout, loss_fn)


def conv_layout(model: nn.Module, x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a network with 2-d convolutions trained on image batches, else the
    standard layout. oneDNN runs convolutions and pooling on NHWC without the reorders NCHW needs
    (1.68x the examples per second of the ``cnn`` at batch 128 on one CPU core,
    ``benchmarks/test_dpsd_loop.py``); the values are the same up to float rounding."""
    if x.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return torch.contiguous_format


@contextmanager
def memory_layout(layout: torch.memory_format, *nets: nn.Module):
    """Hold ``nets`` (parameters and buffers) in ``layout`` inside the block and hand them back in
    the standard layout, whatever happens in it (values unchanged: a layout change is a copy)."""
    for net in nets:
        net.to(memory_format=layout)
    try:
        yield
    finally:
        for net in nets:
            net.to(memory_format=torch.contiguous_format)


def _fit(model, train, val, epochs, lr, batch_size, optimizer, weight_decay, device, generator, progress,
         select_on_val, lr_schedule, curves, desc, has_val, layout, loss_fn=None) -> tuple[nn.Module, dict]:
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay=weight_decay)
    n = len(train)
    steps_per_epoch = -(-n // batch_size)
    if lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    elif lr_schedule == "constant":
        sched = None
    else:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}")
    history = {"train_loss": [], "val_acc": []}
    if loss_fn is not None:
        history["terms"] = {}
    for name in curves or {}:
        history[f"{name}_acc"] = []
    best = (-1.0, None, -1)
    for epoch in progress(range(epochs), desc=desc, leave=False):
        model.train()
        perm = torch.randperm(n, generator=generator)
        total, terms = 0.0, {}
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = train.x[idx].to(device, memory_format=layout), train.y[idx].to(device)
            if loss_fn is None:
                loss = F.cross_entropy(model(xb), yb)
            else:
                loss, parts = loss_fn(model, xb, yb)
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0.0) + float(v) * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(idx)
        va = accuracy(model, val, device) if has_val else float("nan")
        history["train_loss"].append(total / max(n, 1))
        for k, v in terms.items():
            history["terms"].setdefault(k, []).append(v / max(n, 1))
        history["val_acc"].append(va)
        for name, split in (curves or {}).items():
            history[f"{name}_acc"].append(accuracy(model, split, device))
        if not select_on_val or va > best[0]:
            best = (va, copy.deepcopy(model.state_dict()), epoch)
    model.load_state_dict(best[1])
    history["selected_epoch"] = best[2]
    history["selected_by"] = "val_acc" if select_on_val else "last_epoch"
    return model, history
