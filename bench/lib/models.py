"""Architectures, built from JSON-able specs so released models can be rebuilt from the cache.

A spec is ``{"name": ..., "in_channels": C, "image_size": H, "num_classes": K, **kwargs}``.
Register more with ``@register_arch("name")``. Every architecture here is Opacus-compatible
(no BatchNorm) unless its docstring says otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.core.errors import BenchError, suggest

_ARCHS: dict[str, type] = {}


def register_arch(name: str):
    def deco(cls):
        _ARCHS[name] = cls
        return cls

    return deco


def arch_names() -> list[str]:
    return sorted(_ARCHS)


def build_model(spec: dict) -> nn.Module:
    spec = dict(spec)
    name = spec.pop("name")
    if name not in _ARCHS:
        raise BenchError(f"unknown architecture '{name}'{suggest(name, _ARCHS)}; known: {', '.join(arch_names())}")
    try:
        return _ARCHS[name](**spec)
    except RuntimeError as e:  # e.g. a conv kernel larger than the input (tanh-cnn on 8x8 digits)
        shape = f"{spec.get('in_channels', '?')}x{spec.get('image_size', '?')}x{spec.get('image_size', '?')}"
        raise BenchError(f"architecture '{name}' does not fit {shape} inputs ({' '.join(str(e).split())[:160]}); "
                         f"set another arch for this dataset, e.g. arch: mlp") from None


def _flat_dim(features: nn.Module, c: int, h: int) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, c, h, h)).numel())


class Classifier(nn.Module):
    """``features`` -> flatten -> ``head``; ``penultimate(x)`` gives the head's input features
    (used by activation losses, feature-space metrics and attacks)."""

    features: nn.Module
    head: nn.Module

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(self.features(x), 1)
        return self.head[:-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


@register_arch("cnn")
class CNN(Classifier):
    """Two conv blocks + two dense layers (ReLU, dropout): >= 99 % on MNIST in a few epochs. Each
    block pools before its ReLU: max-pooling commutes with the monotone ReLU, so the values and
    gradients are those of conv-ReLU-pool bit for bit, at a quarter of the ReLU's work."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, width=32, hidden=128, dropout=0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Dropout(dropout),
        )
        d = _flat_dim(self.features, in_channels, image_size)
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


@register_arch("tanh-cnn")
class TanhCNN(Classifier):
    """The end-to-end DP-SGD CNN of Papernot et al. (2021) / Tramer & Boneh (ICLR 2021):
    Conv(16, 8x8, s2, p2) tanh, MaxPool(2,1), Conv(32, 4x4, s2) tanh, MaxPool(2,1), FC 32 tanh,
    FC K. ~26k parameters for 28x28 inputs; tanh ("tempered sigmoid") suits clipped training."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, width=16, hidden=32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 8, stride=2, padding=2), nn.Tanh(), nn.MaxPool2d(2, 1),
            nn.Conv2d(width, 2 * width, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1),
        )
        d = _flat_dim(self.features, in_channels, image_size)
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))


@register_arch("cnn-bn")
class CNNBN(Classifier):
    """The MNIST CNN of the data-free federated distillation papers (DENSE, Zhang et al. NeurIPS
    2022; Fed-ADI / FedDF use the same kind): Conv(w, 5x5, p2) BatchNorm ReLU MaxPool2 ->
    Conv(2w, 5x5, p2) BatchNorm ReLU MaxPool2 -> Linear(K). **Has BatchNorm** (not
    Opacus-compatible): DENSE's generator matches the running statistics of these layers. The
    pooling comes before the ReLU (the same values, as in ``cnn``)."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.BatchNorm2d(width), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.BatchNorm2d(2 * width), nn.MaxPool2d(2), nn.ReLU(),
        )
        d = _flat_dim(self.features, in_channels, image_size)
        self.head = nn.Sequential(nn.Linear(d, num_classes))


class ScatterNet(nn.Module):
    """A fixed (untrained, data-independent) wavelet scattering transform of order 2 (Bruna &
    Mallat 2013; kymatio's ``Scattering2D``): ``(B, C, H, W) -> (B, C * K, H / 2^J, W / 2^J)``
    with K = 1 + J L + L^2 J (J - 1) / 2 channels per input channel (81 for J = 2, L = 8).
    Differentiable, so gradient-based inversion attacks see through it. It has no parameters and
    its filters are not saved in the state dict: they are rebuilt from (J, L, shape)."""

    def __init__(self, image_size: int, J: int = 2, L: int = 8):
        super().__init__()
        try:  # the 2-d torch frontend alone: ``kymatio.torch`` also imports the 3-d frontend,
            # which needs ``scipy.special.sph_harm`` (removed in SciPy 1.15)
            from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
        except ImportError as e:  # pragma: no cover - kymatio is a declared dependency
            raise BenchError(f"the ScatterNet front end needs kymatio ({e}); pip install kymatio") from None
        if image_size % (2 ** J):
            raise BenchError(f"ScatterNet with J = {J} needs an image size divisible by {2 ** J}, got {image_size}")
        self.J, self.L = J, L
        self.channels = 1 + J * L + L * L * J * (J - 1) // 2
        self.scattering = ScatteringTorch2D(J=J, shape=(image_size, image_size), L=L)
        for name, _ in list(self.scattering.named_buffers()):  # data-independent: rebuilt, never stored
            self.scattering._non_persistent_buffers_set.add(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scattering(x.contiguous())
        return s.reshape(s.shape[0], -1, s.shape[-2], s.shape[-1])


@register_arch("scatter-cnn")
class ScatterCNN(Classifier):
    """Tramer & Boneh (ICLR 2021), "Differentially Private Learning Needs Better Features":
    a fixed ScatterNet (J = 2, L = 8) front end, GroupNorm over its channels (``groups`` groups,
    no affine parameters: a per-example normalisation, so it costs no privacy), then a small tanh
    CNN: Conv(width, 3x3, s2, p1) tanh, Conv(2 width, 3x3, p1) tanh, FC ``hidden`` tanh, FC K (their
    ``MNIST_CNN`` on scattering features). ``frontend`` is the fixed part: a DP trainer may
    compute it once per example and train ``trainable()`` on its output."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, J=2, L=8, groups=27, width=16, hidden=32):
        super().__init__()
        frontend = ScatterNet(image_size, J, L)
        k = in_channels * frontend.channels
        if k % groups:
            raise BenchError(f"scatter-cnn: groups ({groups}) must divide the {k} scattering channels")
        body = nn.Sequential(
            nn.GroupNorm(groups, k, affine=False),
            nn.Conv2d(k, width, 3, stride=2, padding=1), nn.Tanh(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.Tanh(),
        )
        self.features = nn.Sequential(frontend, body)  # [0] fixed, [1] trained
        with torch.no_grad():
            d = int(self.features(torch.zeros(1, in_channels, image_size, image_size)).numel())
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    @property
    def frontend(self) -> ScatterNet:
        return self.features[0]

    def trainable(self) -> nn.Module:
        """Everything after the fixed front end, as one module on its output (shares parameters)."""
        return nn.Sequential(self.features[1], nn.Flatten(1), self.head)


@register_arch("mlp")
class MLP(Classifier):
    """A fully connected net (for tiny inputs such as sklearn's 8x8 digits)."""

    def __init__(self, in_channels=1, image_size=8, num_classes=10, hidden=128, depth=2, activation="relu"):
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        self.features = nn.Identity()
        layers, d = [], in_channels * image_size * image_size
        for _ in range(depth - 1):
            layers += [nn.Linear(d, hidden), act()]
            d = hidden
        self.head = nn.Sequential(*layers, nn.Linear(d, num_classes))

    def penultimate(self, x):
        h = torch.flatten(x, 1)
        return self.head[:-1](h) if len(self.head) > 1 else h


@register_arch("vib")
class VIBClassifier(Classifier):
    """A variational information bottleneck (Alemi et al., ICLR 2017) between a base architecture's
    representation and its output layer, as MID (Wang et al., AAAI 2021) trains it: the base's
    features and hidden layers give h (dimension d, the input of the base's last layer), then
    Linear(d, 2k) -> (mu, s), sigma = softplus(s - 5), z = mu + sigma * noise while training,
    Linear(k, K) on z. In eval mode z = mu (the deterministic prediction; ``sample_at_eval`` keeps
    sampling, as the MID/BiDO code does at test time). ``encode(x)`` gives (mu, sigma) for the
    KL(N(mu, sigma^2) || N(0, I)) term; ``penultimate(x)`` is mu."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, base: dict | str = "cnn", k=None,
                 sample_at_eval=False):
        super().__init__()
        spec = {"name": base} if isinstance(base, str) else dict(base)
        spec.update(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        net = build_model(spec)
        if not isinstance(net, Classifier) or not isinstance(net.head[-1], nn.Linear):
            raise BenchError(f"vib: the base architecture {spec['name']!r} needs a features/head layout ending in Linear")
        d = net.head[-1].in_features
        self.k = int(k or max(1, d // 2))
        self.sample_at_eval = bool(sample_at_eval)
        self.features = net.features
        self.head = nn.Sequential(*net.head[:-1], nn.Linear(d, 2 * self.k), nn.Linear(self.k, num_classes))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.head[:-1](torch.flatten(self.features(x), 1))
        mu, s = stats[:, :self.k], stats[:, self.k:]
        return mu, nn.functional.softplus(s - 5)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.encode(x)
        z = mu + sigma * torch.randn_like(sigma) if (self.training or self.sample_at_eval) else mu
        return self.head[-1](z)


def spec_for(task, arch: dict | str) -> dict:
    """Complete an architecture spec with the task's input shape and class count."""
    spec = {"name": arch} if isinstance(arch, str) else dict(arch)
    spec.setdefault("in_channels", task.image_shape[0])
    spec.setdefault("image_size", task.image_shape[-1])
    spec.setdefault("num_classes", task.num_classes)
    return spec
