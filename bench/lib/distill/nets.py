"""Architectures of the data-free distillation defenses (``dpsd``, ``dpdfd``), registered with
:func:`bench.lib.models.register_arch` so releases rebuild them from their JSON spec:
``dafl-generator`` (the DAFL generator, Chen et al. ICCV 2019, output mapped to [0, 1]; its
output arguments for a dataset from :func:`generator_spec_args`) and ``student-cnn`` (the
"three-layer CNN" student), plus :func:`logits_and_features`, the student's logits and
penultimate features in one pass."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError
from bench.lib.datasets.base import dataset_info
from bench.lib.models import Classifier, _flat_dim, register_arch


@register_arch("dafl-generator")
class DAFLGenerator(nn.Module):
    """DAFL generator (Chen et al., ICCV 2019): Linear(latent -> w*(s/4)^2) -> BN -> Up x2 ->
    Conv3x3(w, w) BN(eps 0.8) LeakyReLU(0.2) -> Up x2 -> Conv3x3(w, w/2) BN(eps 0.8) LeakyReLU(0.2)
    -> Conv3x3(w/2, C) -> tanh.

    Output layer. DAFL ends with ``BatchNorm2d(C, affine=False)`` after the tanh: its teachers
    take standardized inputs, so the generator emits images with the statistics the teacher's
    input normalization expects. Our teachers take images in [0, 1]; with ``out_std`` given, the
    same BatchNorm output is mapped back through the teacher's input normalization,
    ``clamp(out_mean + out_std * BN(tanh), 0, 1)`` (per channel), which is DAFL's output layer
    expressed in pixel space. Without ``out_std`` the tanh is mapped affinely, ``(tanh + 1) / 2``
    (mid-grey images: an MNIST teacher labels almost all of them "1"). Sides not divisible by 4
    are produced at ``4 * ceil(s / 4)`` and bilinearly resized to ``s``."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, latent_dim=100, width=128,
                 out_mean=None, out_std=None):
        super().__init__()
        self.out_bn = None
        if out_std is not None:
            mean = torch.as_tensor(out_mean, dtype=torch.float32).reshape(-1)
            std = torch.as_tensor(out_std, dtype=torch.float32).reshape(-1)
            self.out_bn = nn.BatchNorm2d(in_channels, affine=False)
            self.register_buffer("out_mean", mean.expand(in_channels).clone().view(1, -1, 1, 1))
            self.register_buffer("out_std", std.expand(in_channels).clone().view(1, -1, 1, 1))
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.init_size = max(1, math.ceil(image_size / 4))
        self.l1 = nn.Linear(latent_dim, width * self.init_size ** 2)
        self.width = width
        self.bn0 = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width, eps=0.8), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2, eps=0.8), nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, in_channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.l1(z).view(z.shape[0], self.width, self.init_size, self.init_size)
        x = self.blocks(self.bn0(h))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if self.out_bn is not None:
            return (self.out_mean + self.out_std * self.out_bn(x)).clamp(0.0, 1.0)
        return (x + 1) / 2

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, device="cpu") -> torch.Tensor:
        """``n`` synthetic images in [0, 1] (the released generator's downstream use)."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return self(z)


def input_stats(dataset: str) -> Optional[tuple]:
    """The dataset's standard, published per-channel input normalization constants (mean, std)
    (``dataset_info(dataset).input_stats``: torchvision / DAFL conventions), used as the
    generator's output statistics like DAFL's final BatchNorm: part of the teacher's input
    interface, not computed from the private split. None for a dataset without published
    constants, and for a name that is not a registered dataset (a task built by hand)."""
    try:
        return dataset_info(dataset).input_stats
    except BenchError:
        return None


def generator_spec_args(dataset: str, output: str) -> dict:
    """The ``dafl-generator`` output arguments for ``output``: ``dataset-stats`` (DAFL's BatchNorm
    output layer with the dataset's standard normalization constants, :func:`input_stats`; plain
    tanh for a dataset without published constants) or ``tanh`` ((tanh + 1) / 2)."""
    if output not in ("dataset-stats", "tanh"):
        raise ValueError(f"generator_output must be 'dataset-stats' or 'tanh', got {output!r}")
    stats = input_stats(dataset) if output == "dataset-stats" else None
    if stats is not None:
        mean, std = stats
        return {"out_mean": list(mean), "out_std": list(std)}
    return {}


@register_arch("student-cnn")
class StudentCNN(Classifier):
    """The "three-layer CNN" student: Conv(w, 3x3) ReLU MaxPool2 -> Conv(2w, 3x3) ReLU MaxPool2 ->
    Linear(K), with each ReLU applied after its pooling (ReLU is monotone, so max-pooling commutes
    with it: the same values and gradients, bit for bit, with a 4x smaller ReLU). No BatchNorm
    (the student is trained on synthetic batches and evaluated on real data; batch statistics of
    synthetic data would not transfer) and no dropout. ``penultimate``
    is the flattened conv feature map (the DAFL activation loss uses it)."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, width=32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        )
        d = _flat_dim(self.features, in_channels, image_size)
        self.head = nn.Sequential(nn.Linear(d, num_classes))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.flatten(self.features(x), 1)
        return self.head(f), f


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(model, "forward_with_features"):
        return model.forward_with_features(x)
    return model(x), model.penultimate(x)
