"""``dpsgd``: DP-SGD (Abadi et al., CCS 2016) with Opacus.

Poisson sampling with rate q = batch_size / |members|; per-example gradients clipped to
``max_grad_norm``; Gaussian noise with multiplier sigma calibrated by Opacus'
``get_noise_multiplier`` so that the **real** number of steps (epochs x batches per epoch of the
Poisson loader) spends exactly the target epsilon at the suite's delta under the chosen
accountant (PRV by default, RDP or GDP optional). The epsilon reported is the one the training
accountant actually recorded. Privacy unit: one training example (add/remove neighbours).

Model selection: the last iterate is released (no selection on any split, so no extra privacy
cost); validation accuracy is recorded per epoch for the curves. Defaults (tanh CNN, SGD with
momentum, C = 0.1) follow Papernot et al. (2021) / Tramer & Boneh (ICLR 2021); they were fixed
before looking at any test number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.api import Defense, PrivacyReport, Release
from bench.errors import BenchError
from bench.models import build_model, spec_for
from bench.privacy import dpsgd_noise_multiplier
from bench.registry import register_defense
from bench.train import accuracy, make_optimizer, seed_everything


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
    #: Opacus per-sample gradient engine
    grad_sample_mode: Literal["hooks", "functorch", "ew"] = "hooks"

    def validate(self):
        if self.epochs <= 0 or self.batch_size <= 0 or self.max_grad_norm <= 0 or self.lr <= 0:
            raise BenchError("dpsgd: epochs, batch_size, lr and max_grad_norm must be positive")


@register_defense("dpsgd")
class DPSGD(Defense):
    """DP-SGD via Opacus (Poisson sampling, per-example clipping, calibrated Gaussian noise)."""

    Config = DPSGDConfig
    privacy_unit = "example"
    paper = "Abadi et al., Deep Learning with Differential Privacy, CCS 2016"

    def fit(self, ctx) -> Release:
        from opacus import PrivacyEngine

        c = self.config
        if math.isinf(ctx.epsilon):
            raise BenchError("dpsgd needs a finite epsilon")
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
        sigma = dpsgd_noise_multiplier(ctx.epsilon, ctx.delta, sample_rate, steps, c.accountant)
        engine = PrivacyEngine(accountant=c.accountant)
        model, opt, private_loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=sigma, max_grad_norm=c.max_grad_norm,
            poisson_sampling=True, noise_generator=torch.Generator(device=ctx.device).manual_seed(ctx.seed + 7),
            grad_sample_mode=c.grad_sample_mode)
        history = {"val_acc": [], "epsilon": [], "train_loss": []}
        for _ in ctx.progress(range(c.epochs), desc="dpsgd epochs"):
            model.train()
            total, count = 0.0, 0
            for xb, yb in private_loader:
                if len(yb) == 0:  # Poisson sampling can draw an empty batch
                    continue
                xb, yb = xb.to(ctx.device), yb.to(ctx.device)
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(yb)
                count += len(yb)
            history["train_loss"].append(total / max(count, 1))
            history["val_acc"].append(accuracy(model, ctx.task.val, ctx.device))
            history["epsilon"].append(float(engine.accountant.get_epsilon(ctx.delta)))
        spent = float(engine.accountant.get_epsilon(ctx.delta))
        plain = build_model(spec)
        plain.load_state_dict(model._module.state_dict())
        privacy = PrivacyReport(spent, ctx.delta, "example", c.accountant.upper() + " (Opacus)",
                                "Poisson-subsampled Gaussian (DP-SGD)",
                                {"noise_multiplier": sigma, "sample_rate": sample_rate, "steps": steps,
                                 "max_grad_norm": c.max_grad_norm, "target_epsilon": ctx.epsilon,
                                 "members": n})
        return Release({"model": plain}, {"model": spec}, privacy,
                       {"history": history, "selected_by": "last_iterate"})
