"""``mid``: Mutual-Information regularisation against model inversion (Wang, Zhang, Hong, Jia, Wang,
Gu, "Improving Robustness to Model Inversion Attacks via Mutual Information Regularization",
AAAI 2021).

MID penalises the information the model's output carries about its input, I(X; Y_hat), through a
variational information bottleneck (Alemi et al. 2017): the classifier's representation h is
mapped to a Gaussian code z ~ N(mu(h), sigma(h)^2) (k dimensions, sigma = softplus(s - 5)), the
output layer reads z, and the loss is

    CE(f(z), y) + beta * KL(N(mu, sigma^2) || N(0, I))   (KL summed over the k dimensions, batch mean).

Settings: ``beta`` = 0.1, k = half the representation's dimension (the MID/BiDO MNIST code,
``MCNN_vib``: 256 -> k = 128, beta = 0.1). The base network and its optimiser are those of
``none`` (``cnn``, Adam 1e-3 with cosine decay, 10 epochs, batch 128), so the comparison with the
undefended row isolates the regulariser; the authors train MCNN with SGD (lr 0.1, momentum 0.5,
20 epochs, batch 64) and pick the epoch on the **test** set, where this selects on the validation
split. The released model predicts from z = mu (deterministic; ``sample_at_eval: true`` keeps
the sampling of the authors' code at test time).

Not differentially private: epsilon = inf, unit ``none``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense, val_selection
from bench.lib.models import build_model, spec_for
from bench.lib.train import fit_classifier, seed_everything


@dataclass
class MIDConfig:
    #: the base architecture whose last layer the bottleneck replaces
    arch: str = "cnn"
    beta: float = 0.1
    #: bottleneck dimension (default: half the representation's)
    k: Optional[int] = None
    sample_at_eval: bool = False
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_schedule: Literal["cosine", "constant"] = "cosine"

    def validate(self):
        if self.beta < 0 or self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise BenchError("mid: beta must be >= 0 and epochs, batch_size, lr positive")
        if self.k is not None and self.k <= 0:
            raise BenchError("mid: k must be positive")


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), summed over dimensions, averaged over the batch."""
    return (-0.5 * (1 + 2 * torch.log(sigma) - mu.pow(2) - sigma.pow(2))).sum(1).mean()


def mid_loss(beta: float):
    def loss(model, xb, yb):
        mu, sigma = model.encode(xb)
        z = mu + sigma * torch.randn_like(sigma)
        ce = F.cross_entropy(model.head[-1](z), yb)
        kl = kl_to_standard_normal(mu, sigma)
        return ce + beta * kl, {"ce": ce.detach(), "kl": kl.detach()}

    return loss


@register_defense("mid")
class MID(Defense):
    """Variational-information-bottleneck training (MID) of the target classifier."""

    Config = MIDConfig
    privacy_unit = "none"
    paper = "Wang et al., Improving Robustness to Model Inversion Attacks via Mutual Information Regularization, AAAI 2021"

    def fit(self, ctx) -> Release:
        c = self.config
        gen = seed_everything(ctx.seed)
        spec = spec_for(ctx.task, {"name": "vib", "base": c.arch, "k": c.k, "sample_at_eval": c.sample_at_eval})
        model = build_model(spec)
        model, hist = fit_classifier(model, ctx.task.members, ctx.task.val, epochs=c.epochs, lr=c.lr,
                                     batch_size=c.batch_size, optimizer=c.optimizer, device=ctx.device,
                                     generator=gen, progress=ctx.progress, lr_schedule=c.lr_schedule,
                                     loss_fn=mid_loss(c.beta), desc="mid epochs")
        privacy = PrivacyReport(math.inf, 0.0, "none", "none",
                                "variational information bottleneck on the representation (no formal guarantee)",
                                {"beta": c.beta, "k": model.k}, val_selection("the epoch"))
        return Release({"model": model}, {"model": spec}, privacy,
                       {"history": hist, "selected_by": "val_acc", "beta": c.beta, "k": model.k})
