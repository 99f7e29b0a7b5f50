"""The GAN building blocks of the inversion priors (DCGAN family of GMI's MNIST GeneratorMNIST /
DGWGAN32, width-scalable): class-conditional BatchNorm, the generator (unconditional for GMI and
KEDMI, conditional for PLG-MI), the shared discriminator trunk, the WGAN-GP critic, KEDMI's
K+1-class discriminator with minibatch discrimination, PLG-MI's projection discriminator, KEDMI's
prior loss; and :class:`GANConfig`, the config fields every GAN prior shares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError


@dataclass
class GANConfig:
    """What every GAN prior's config has: latent size, network width, batch size and Adam's
    ``lr``, ``(beta1, beta2)``. Subclasses add their schedule and losses (and may change a
    default); ``positive`` names the fields ``validate`` requires to be > 0, in checking order."""

    z_dim: int = 100
    dim: int = 16
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    positive: ClassVar[tuple[str, ...]] = ("z_dim", "dim", "batch_size")

    def validate(self):
        for k in self.positive:
            if getattr(self, k) <= 0:
                raise BenchError(f"gan.{k} must be positive")


class CondBN(nn.Module):
    """BatchNorm whose affine parameters are per class (class-conditional BN) when
    ``num_classes > 0``, an ordinary affine BatchNorm otherwise."""

    def __init__(self, dim: int, num_classes: int = 0, two_d: bool = True):
        super().__init__()
        bn = nn.BatchNorm2d if two_d else nn.BatchNorm1d
        self.num_classes = num_classes
        self.bn = bn(dim, affine=num_classes == 0)
        if num_classes:
            self.gamma = nn.Embedding(num_classes, dim)
            self.beta = nn.Embedding(num_classes, dim)
            nn.init.ones_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)

    def forward(self, x, y=None):
        h = self.bn(x)
        if not self.num_classes:
            return h
        shape = (-1, h.shape[1]) + (1,) * (h.dim() - 2)
        return h * self.gamma(y).view(shape) + self.beta(y).view(shape)


class DCGenerator(nn.Module):
    """GMI's MNIST generator: Linear(z -> 4w x b x b) + BN + ReLU, then ConvT 5x5 stride 2 blocks
    4w -> 2w -> w (BN, ReLU) -> C with a sigmoid (b = ceil(S / 8); GMI: w = 64, S = 32). With
    ``num_classes > 0`` every BN is class-conditional (the conditional generator of PLG-MI)."""

    def __init__(self, z_dim=100, dim=64, out_channels=1, image_size=32, num_classes=0):
        super().__init__()
        self.z_dim, self.image_size, self.num_classes = z_dim, image_size, num_classes
        self.base = max(1, math.ceil(image_size / 8))
        self.fc = nn.Linear(z_dim, 4 * dim * self.base ** 2, bias=False)
        self.bn0 = CondBN(4 * dim * self.base ** 2, num_classes, two_d=False)
        self.up1 = nn.ConvTranspose2d(4 * dim, 2 * dim, 5, 2, padding=2, output_padding=1, bias=False)
        self.bn1 = CondBN(2 * dim, num_classes)
        self.up2 = nn.ConvTranspose2d(2 * dim, dim, 5, 2, padding=2, output_padding=1, bias=False)
        self.bn2 = CondBN(dim, num_classes)
        self.up3 = nn.ConvTranspose2d(dim, out_channels, 5, 2, padding=2, output_padding=1)
        self.dim = dim

    def forward(self, z, y=None):
        h = F.relu(self.bn0(self.fc(z), y)).view(len(z), 4 * self.dim, self.base, self.base)
        h = F.relu(self.bn1(self.up1(h), y))
        h = F.relu(self.bn2(self.up2(h), y))
        x = torch.sigmoid(self.up3(h))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x


def _trunk(in_channels: int, dim: int, image_size: int, norm: bool, sn: bool) -> nn.Sequential:
    """GMI's DGWGAN32 body: conv 5x5 stride 2 (w) LReLU -> [conv 5x5 s2 + InstanceNorm + LReLU]
    x 2 (2w, 4w). ``sn``: spectral normalisation instead of InstanceNorm (SN-GAN style).
    InstanceNorm is left out on a 1 x 1 map (tiny inputs such as 8 x 8 digits)."""
    def conv(i, o):
        c = nn.Conv2d(i, o, 5, 2, padding=2)
        return nn.utils.parametrizations.spectral_norm(c) if sn else c

    s = (image_size + 1) // 2
    layers = [conv(in_channels, dim), nn.LeakyReLU(0.2)]
    for i, o in ((dim, 2 * dim), (2 * dim, 4 * dim)):
        s = (s + 1) // 2
        layers.append(conv(i, o))
        if norm and s > 1:
            layers.append(nn.InstanceNorm2d(o, affine=True))
        layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def _trunk_size(image_size: int) -> int:
    s = image_size
    for _ in range(3):
        s = (s + 1) // 2
    return s


class WGANCritic(nn.Module):
    """GMI's DGWGAN32 critic: the trunk, then a conv covering the remaining b x b map -> scalar."""

    def __init__(self, in_channels=1, dim=64, image_size=32):
        super().__init__()
        self.body = _trunk(in_channels, dim, image_size, norm=True, sn=False)
        s = _trunk_size(image_size)
        self.out = nn.Conv2d(4 * dim, 1, s)

    def forward(self, x):
        return self.out(self.body(x)).view(-1)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. (2016): per example, the summed exp(-L1) similarity to the rest of the
    batch under ``kernels`` learned projections of ``kernel_dim`` dimensions."""

    def __init__(self, in_features: int, kernels: int = 32, kernel_dim: int = 8):
        super().__init__()
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * 0.1)
        self.kernels, self.kernel_dim = kernels, kernel_dim

    def forward(self, h):
        m = (h @ self.T).view(-1, self.kernels, self.kernel_dim)
        dist = (m[:, None] - m[None]).abs().sum(-1)  # (N, N, kernels)
        o = torch.exp(-dist).sum(1) - 1.0
        return torch.cat([h, o], 1)


class KPlusOneDiscriminator(nn.Module):
    """KEDMI's MinibatchDiscriminator_MNIST: the trunk (InstanceNorm, LReLU), minibatch
    discrimination, and K logits; "real" is logsumexp of the logits (the implicit K+1-th class).
    ``forward`` returns ``(features, logits)``; features feed the generator's feature matching."""

    def __init__(self, in_channels=1, dim=64, image_size=32, num_classes=5, kernels=32, kernel_dim=8):
        super().__init__()
        self.body = _trunk(in_channels, dim, image_size, norm=True, sn=False)
        d = 4 * dim * _trunk_size(image_size) ** 2
        self.mbd = MinibatchDiscrimination(d, kernels, kernel_dim)
        self.fc = nn.Linear(d + kernels, num_classes)

    def forward(self, x):
        f = self.mbd(torch.flatten(self.body(x), 1))
        return f, self.fc(f)


class ProjectionDiscriminator(nn.Module):
    """Conditional discriminator with a projection head (Miyato & Koyama 2018), spectral norm
    throughout: the trunk, global sum pooling to h, output psi(h) + <embed(y), h>."""

    def __init__(self, in_channels=1, dim=64, image_size=32, num_classes=5):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = _trunk(in_channels, dim, image_size, norm=False, sn=True)
        self.psi = sn(nn.Linear(4 * dim, 1))
        self.embed = sn(nn.Embedding(num_classes, 4 * dim))

    def forward(self, x, y):
        h = self.body(x).sum((2, 3))
        return self.psi(h).view(-1) + (self.embed(y) * h).sum(1)


def log_sum_exp(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, 1)


def kplus1_prior(logits: torch.Tensor) -> torch.Tensor:
    """-log D_real(x) = softplus(lse) - lse, per example (KEDMI's prior loss)."""
    lse = log_sum_exp(logits)
    return F.softplus(lse) - lse
