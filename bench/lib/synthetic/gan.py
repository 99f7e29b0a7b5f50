"""Conditional GANs for DP synthetic data (DataLens, DP-GAN, PATE-GAN; reusable by G-PATE and
others): the conditional DCGAN generator of DataLens' ``model.py``, registered as architecture
``datalens-generator`` (releases rebuild it from their spec), :func:`generate`, a labelled
synthetic set sampled from it, and :class:`CondDiscriminator`, a small conditional conv
discriminator without BatchNorm (Opacus-compatible; DP-GAN's DP-SGD discriminator and PATE-GAN's
student discriminator)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError
from bench.lib.models import register_arch
from bench.lib.tasks import Split


@register_arch("datalens-generator")
class CondDCGANGenerator(nn.Module):
    """The conditional DCGAN generator of DataLens' ``model.py``: [z, y] -> FC gfc BN ReLU ->
    [., y] -> FC 2gf*(s/4)^2 BN ReLU -> [., y maps] -> deconv5 s2 (2gf) BN ReLU -> [., y maps] ->
    deconv5 s2 (C) -> sigmoid. z ~ U(-1, 1)^z_dim. ``forward(z, y)`` takes integer labels.

    ``output_blur`` (Gaussian sigma in pixels, 3x3 kernel; 0 = off) then ``output_contrast``
    (``"none"`` or ``"autocontrast"``: per-image min-max rescaling to [0, 1]), both torchvision
    functions, are applied by :meth:`sample` only (the synthetic-data interface; ``forward``, which
    the DP training regresses, is the raw network). See ``defenses.datalens.DataLensConfig``."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, z_dim=50, gf_dim=64, gfc_dim=1024,
                 output_contrast: str = "none", output_blur: float = 0.0):
        super().__init__()
        if output_contrast not in ("none", "autocontrast"):
            raise BenchError(f"datalens-generator: output_contrast must be 'none' or 'autocontrast', "
                             f"not {output_contrast!r}")
        if not output_blur >= 0:
            raise BenchError(f"datalens-generator: output_blur must be >= 0, not {output_blur!r}")
        self.output_contrast, self.output_blur = output_contrast, float(output_blur)
        self.z_dim, self.num_classes, self.image_size = z_dim, num_classes, image_size
        self.s4 = max(1, math.ceil(image_size / 4))
        self.gf = gf_dim
        K = num_classes
        self.fc0 = nn.Linear(z_dim + K, gfc_dim)
        self.bn0 = nn.BatchNorm1d(gfc_dim)
        self.fc1 = nn.Linear(gfc_dim + K, 2 * gf_dim * self.s4 ** 2)
        self.bn1 = nn.BatchNorm1d(2 * gf_dim * self.s4 ** 2)
        self.dc2 = nn.ConvTranspose2d(2 * gf_dim + K, 2 * gf_dim, 5, stride=2, padding=2, output_padding=1)
        self.bn2 = nn.BatchNorm2d(2 * gf_dim)
        self.dc3 = nn.ConvTranspose2d(2 * gf_dim + K, in_channels, 5, stride=2, padding=2, output_padding=1)
        for m in self.modules():  # DCGAN-tensorflow initialisation: N(0, 0.02) weights, zero biases
            if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y1 = F.one_hot(y.long(), self.num_classes).to(z.dtype)
        h = F.relu(self.bn0(self.fc0(torch.cat([z, y1], 1))))
        h = F.relu(self.bn1(self.fc1(torch.cat([h, y1], 1))))
        h = h.view(-1, 2 * self.gf, self.s4, self.s4)

        def cat_y(t):
            return torch.cat([t, y1[:, :, None, None].expand(-1, -1, t.shape[2], t.shape[3])], 1)

        h = F.relu(self.bn2(self.dc2(cat_y(h))))
        x = torch.sigmoid(self.dc3(cat_y(h)))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.rand(n, self.z_dim, generator=generator) * 2 - 1

    @torch.no_grad()
    def sample(self, n: int, labels: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               device="cpu", batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` synthetic (image, label) pairs, labels uniform unless given."""
        if labels is None:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        z = self.sample_latent(n, generator)
        out = [self(z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)).cpu()
               for i in range(0, n, batch_size)]
        x = torch.cat(out)
        from torchvision.transforms.v2.functional import (  # imported here: keeps the CLI start-up torch-only
            autocontrast,
            gaussian_blur,
        )

        if self.output_blur > 0:
            x = gaussian_blur(x, [3, 3], [self.output_blur, self.output_blur])
        if self.output_contrast == "autocontrast":
            x = autocontrast(x)
        return x, labels


@torch.no_grad()
def generate(G: CondDCGANGenerator, n: int, seed: int, batch: int = 1000) -> Split:
    """``n`` synthetic examples with uniform labels (BatchNorm in inference mode)."""
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    x, y = G.sample(n, generator=gen, batch_size=batch)
    return Split(x.contiguous(), y.long())


class CondDiscriminator(nn.Module):
    """[x, one-hot label maps] -> Conv(C+K, d, 4, s2) LeakyReLU(0.2) -> Conv(d, 2d, 4, s2)
    GroupNorm LeakyReLU(0.2) -> Linear -> one logit. No BatchNorm (Opacus)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels + num_classes, width, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(min(8, 2 * width), 2 * width)
        side = math.floor((math.floor((image_size + 2 - 4) / 2) + 1 + 2 - 4) / 2) + 1
        self.out = nn.Linear(2 * width * side * side, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        maps = F.one_hot(y.long(), self.num_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        h = F.leaky_relu(self.conv1(torch.cat([x, maps], 1)), 0.2)
        h = F.leaky_relu(self.norm2(self.conv2(h)), 0.2)
        return self.out(h.flatten(1)).squeeze(1)
