"""``bido``: Bilateral Dependency Optimization against model inversion (Peng, Liu, Zhang, Lan, Ye,
Liu, Han, "Bilateral Dependency Optimization: Defending Against Model-inversion Attacks", KDD
2022; code ``AlanPeng0897/Defend_MI``).

BiDO trains the classifier with, for every hidden layer Z_j,

    CE(f(x), y) + sum_j [ lambda_x d(X, Z_j) - lambda_y d(Z_j, Y) ]

-- less dependence between input and representation (what an inversion attack exploits), more
between representation and label (what utility needs). ``measure``: ``hsic`` (normalised HSIC,
BiDO-HSIC) or ``coco`` (constrained covariance, BiDO-COCO), computed per batch
(``bench.lib.dependence``): Gaussian kernels with sigma = 5 scaled by the feature dimension for X
and Z, a linear kernel on one-hot Y (the code's MNIST setting, ``--ktype linear``).

Hidden layers: the output of every activation module of the network (for the ``cnn``: the two conv
blocks and the hidden dense layer; the authors' MCNN has three conv blocks).

Settings: the paper's MNIST weights, HSIC (lambda_x, lambda_y) = (2, 20), COCO (1, 50); batch
64 (the kernels are batch statistics; the code's batch size). Base network and optimiser as
``none`` (``cnn``, Adam 1e-3 with cosine decay, 10 epochs) so the comparison isolates the
regulariser; the authors train MCNN with Adam and pick the epoch on the **test** set, where this
selects on the validation split.

Not differentially private: epsilon = inf, unit ``none``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense, val_selection
from bench.lib.dependence import coco, hsic_normalized
from bench.lib.models import build_model, spec_for
from bench.lib.train import fit_classifier, seed_everything

#: the paper's MNIST (lambda_x, lambda_y) per measure
PAPER_WEIGHTS = {"hsic": (2.0, 20.0), "coco": (1.0, 50.0)}
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.ELU, nn.GELU, nn.SiLU)


@dataclass
class BiDOConfig:
    arch: str = "cnn"
    measure: Literal["hsic", "coco"] = "hsic"
    #: weights of d(X, Z) and d(Z, Y); default: the paper's MNIST values for ``measure``
    lambda_x: Optional[float] = None
    lambda_y: Optional[float] = None
    sigma: float = 5.0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_schedule: Literal["cosine", "constant"] = "cosine"

    def validate(self):
        if self.epochs <= 0 or self.batch_size <= 1 or self.lr <= 0 or self.sigma <= 0:
            raise BenchError("bido: epochs, lr and sigma must be positive and batch_size > 1 (kernels need pairs)")
        if min(self.weights()) < 0:
            raise BenchError("bido: lambda_x and lambda_y must be >= 0")

    def weights(self) -> tuple[float, float]:
        lx, ly = PAPER_WEIGHTS[self.measure]
        return (lx if self.lambda_x is None else self.lambda_x, ly if self.lambda_y is None else self.lambda_y)


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are BiDO's hidden representations Z_j: every activation."""
    mods = [m for m in model.modules() if isinstance(m, _ACTIVATIONS)]
    if not mods:
        raise BenchError(f"bido: {type(model).__name__} has no activation layers to regularise")
    return mods


class HiddenRecorder:
    """Forward hooks that collect the hidden layers' outputs of each forward pass."""

    def __init__(self, model: nn.Module):
        self.outputs: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._keep) for m in hidden_layers(model)]

    def _keep(self, module, _inputs, out):
        if module.training:  # evaluation passes (validation accuracy) are not regularised
            self.outputs.append(out)

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def bido_loss(recorder: HiddenRecorder, num_classes: int, measure: str, lambda_x: float, lambda_y: float,
              sigma: float):
    dep = hsic_normalized if measure == "hsic" else coco

    def loss(model, xb, yb):
        recorder.take()
        logits = model(xb)
        hiddens = recorder.take()
        ce = F.cross_entropy(logits, yb)
        x = xb.reshape(len(xb), -1)
        y = F.one_hot(yb, num_classes).float()
        dxz = sum(dep(h.reshape(len(h), -1), x, sigma) for h in hiddens)  # summed over the hidden layers
        dyz = sum(dep(h.reshape(len(h), -1), y, sigma, y_kernel="linear") for h in hiddens)
        total = ce + lambda_x * dxz - lambda_y * dyz
        return total, {"ce": ce.detach(), "d_xz": dxz.detach(), "d_yz": dyz.detach()}

    return loss


@register_defense("bido")
class BiDO(Defense):
    """Bilateral dependency optimisation (HSIC or COCO) of the target classifier."""

    Config = BiDOConfig
    privacy_unit = "none"
    paper = "Peng et al., Bilateral Dependency Optimization: Defending Against Model-inversion Attacks, KDD 2022"

    def fit(self, ctx) -> Release:
        c = self.config
        lx, ly = c.weights()
        gen = seed_everything(ctx.seed)
        spec = spec_for(ctx.task, c.arch)
        model = build_model(spec)
        recorder = HiddenRecorder(model)
        try:
            model, hist = fit_classifier(model, ctx.task.members, ctx.task.val, epochs=c.epochs, lr=c.lr,
                                         batch_size=c.batch_size, optimizer=c.optimizer, device=ctx.device,
                                         generator=gen, progress=ctx.progress, lr_schedule=c.lr_schedule,
                                         loss_fn=bido_loss(recorder, ctx.task.num_classes, c.measure, lx, ly, c.sigma),
                                         desc="bido epochs")
        finally:
            recorder.close()  # the released model carries no hooks
        privacy = PrivacyReport(math.inf, 0.0, "none", "none",
                                f"bilateral dependency optimisation ({c.measure.upper()}; no formal guarantee)",
                                {"measure": c.measure, "lambda_x": lx, "lambda_y": ly, "sigma": c.sigma,
                                 "hidden_layers": len(hidden_layers(model))}, val_selection("the epoch"))
        return Release({"model": model}, {"model": spec}, privacy,
                       {"history": hist, "selected_by": "val_acc", "measure": c.measure, "lambda_x": lx,
                        "lambda_y": ly})
