"""``dpsgd``: DP-SGD (Abadi et al., CCS 2016) with Opacus.

Poisson sampling with rate q = batch_size / |members|; per-example gradients clipped to
``max_grad_norm``; Gaussian noise with multiplier sigma calibrated by Opacus'
``get_noise_multiplier`` so that the **real** number of steps (epochs x batches per epoch of the
Poisson loader) spends exactly the target epsilon at the suite's delta under the chosen
accountant (PRV by default, RDP or GDP optional). The epsilon reported is the one the training
accountant actually recorded. Privacy unit: one training example (add/remove neighbours).

At epsilon = inf (a grid's no-privacy column) it trains with clipping and sigma = 0 and reports
epsilon = inf: the cost of clipping alone.

The sample rate 1 / ceil(|members| / batch_size) and the step count are computed from the member
count, which is thereby treated as public (as Opacus does).

Model selection: the last iterate is released (no selection on any split, so no extra privacy
cost); validation accuracy (the DP model on the non-member validation split) is recorded per epoch
for the curves. The training loss is not recorded: it is the mean loss on the members' sampled
batches, a noise-free statistic of the members outside the DP guarantee. Defaults (tanh CNN, SGD with
momentum, C = 0.1) follow Papernot et al. (2021) / Tramer & Boneh (ICLR 2021); they were fixed
before looking at any test number.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import dpsgd_noise_multiplier
from bench.lib.models import build_model, spec_for
from bench.lib.train import accuracy, make_optimizer, seed_everything


@dataclass
class DPSGDConfig:
    arch: str = "tanh-cnn"
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 2.0
    momentum: float = 0.9
    optimizer: Literal["sgd", "adam"] = "sgd"
    max_grad_norm: float = 0.1
    accountant: Literal["prv", "rdp", "gdp"] = "prv"
    #: Opacus per-sample clipping engine: "ghost" (fast gradient / ghost clipping, Li et al. 2022;
    #: same DP-SGD update without materialising per-sample gradients), "hooks", "functorch", "ew"
    grad_sample_mode: Literal["ghost", "hooks", "functorch", "ew"] = "ghost"

    def validate(self):
        if self.epochs <= 0 or self.batch_size <= 0 or self.max_grad_norm <= 0 or self.lr <= 0:
            raise BenchError("dpsgd: epochs, batch_size, lr and max_grad_norm must be positive")


def make_private_training(model, optimizer, loader, sigma: float, max_grad_norm: float, accountant: str,
                          grad_sample_mode: str, noise_seed: int, device):
    """Wrap model/optimizer/loader with Opacus (Poisson sampling). Returns
    ``(model, optimizer, criterion, loader, engine)``; ``criterion`` is Opacus' wrapped loss in
    ghost-clipping mode and plain cross-entropy otherwise."""
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant=accountant)
    criterion = torch.nn.CrossEntropyLoss()
    common = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
                  max_grad_norm=max_grad_norm, poisson_sampling=True, grad_sample_mode=grad_sample_mode,
                  noise_generator=torch.Generator(device=device).manual_seed(noise_seed))
    if grad_sample_mode == "ghost":
        model, optimizer, criterion, loader = engine.make_private(criterion=criterion, **common)
    else:
        model, optimizer, loader = engine.make_private(**common)
    return model, optimizer, criterion, loader, engine


def train_epoch(model, optimizer, criterion, loader, device) -> float:
    """One pass over ``loader``; returns the mean training loss (a noise-free statistic of the
    training data: never put it in a release)."""
    model.train()
    total, count = 0.0, 0
    for xb, yb in loader:
        if len(yb) == 0:  # Poisson sampling can draw an empty batch
            continue
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(yb)
        count += len(yb)
    return total / max(count, 1)


@register_defense("dpsgd")
class DPSGD(Defense):
    """DP-SGD via Opacus (Poisson sampling, per-example clipping, calibrated Gaussian noise)."""

    Config = DPSGDConfig
    privacy_unit = "example"
    paper = "Abadi et al., Deep Learning with Differential Privacy, CCS 2016"

    def fit(self, ctx) -> Release:
        c = self.config
        gen = seed_everything(ctx.seed)
        spec = spec_for(ctx.task, c.arch)
        model = build_model(spec).to(ctx.device)
        members = ctx.task.members
        n = len(members)
        loader = DataLoader(TensorDataset(members.x, members.y), batch_size=c.batch_size, shuffle=False,
                            generator=gen)
        opt = make_optimizer(model.parameters(), c.optimizer, c.lr, momentum=c.momentum)
        sample_rate = 1.0 / len(loader)
        steps = c.epochs * len(loader)
        # epsilon = inf (the "no privacy" column of a grid): clipping without noise, nothing accounted
        private = not math.isinf(ctx.epsilon)
        t0 = time.perf_counter()
        sigma = dpsgd_noise_multiplier(ctx.epsilon, ctx.delta, sample_rate, steps, c.accountant) if private else 0.0
        model, opt, criterion, private_loader, engine = make_private_training(
            model, opt, loader, sigma, c.max_grad_norm, c.accountant, c.grad_sample_mode, ctx.seed + 7, ctx.device)
        # where a cell's time goes (issue 18: the rest of a cell should add <= 10 % to its epochs)
        history = {"val_acc": [], "epsilon": [], "train_seconds": [], "eval_seconds": [], "accountant_seconds": [],
                   "setup_seconds": time.perf_counter() - t0}
        for _ in ctx.progress(range(c.epochs), desc="dpsgd epochs"):
            t0 = time.perf_counter()
            train_epoch(model, opt, criterion, private_loader, ctx.device)  # its loss is not released
            t1 = time.perf_counter()
            history["val_acc"].append(accuracy(model, ctx.task.val, ctx.device))
            t2 = time.perf_counter()
            history["epsilon"].append(float(engine.accountant.get_epsilon(ctx.delta)) if private else math.inf)
            history["train_seconds"].append(t1 - t0)
            history["eval_seconds"].append(t2 - t1)
            history["accountant_seconds"].append(time.perf_counter() - t2)
        spent = history["epsilon"][-1] if history["epsilon"] else (
            float(engine.accountant.get_epsilon(ctx.delta)) if private else math.inf)
        plain = build_model(spec)
        plain.load_state_dict(model._module.state_dict())
        privacy = PrivacyReport(spent, ctx.delta, "example",
                                c.accountant.upper() + " (Opacus)" if private else "none (sigma = 0)",
                                "Poisson-subsampled Gaussian (DP-SGD)",
                                {"noise_multiplier": sigma, "sample_rate": sample_rate, "steps": steps,
                                 "max_grad_norm": c.max_grad_norm, "target_epsilon": ctx.epsilon,
                                 "members": n})
        return Release({"model": plain}, {"model": spec}, privacy,
                       {"history": history, "selected_by": "last_iterate"})
