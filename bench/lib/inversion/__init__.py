"""Shared parts of the model-inversion attacks (``gmi``, ``kedmi``, ``plgmi``, ``mi-face``).

* **The judge.** An evaluation classifier ``eval-cnn`` (BatchNorm + LeakyReLU, three conv
  blocks: a different architecture from every target), trained by the harness on the
  *classification* protocol of the same dataset (all classes), resized to the inversion
  protocol's image size, and cached as an artifact. Attacks never see it: they produce their
  reconstructions first and hand them to :func:`evaluate_inversion`.
* **GAN priors** on the attacker's public split, built through ``ctx.artifact`` so that one prior
  serves every cell that asks for the same (dataset, public rows, image size, config, seed, code):
  the WGAN-GP of GMI (target-independent), the inversion-specific semi-supervised GAN of KEDMI
  and the pseudo-label conditional GAN of PLG-MI (both keyed by a hash of the target's weights).
* **Metrics**, pure functions: top-k attack accuracy, KNN distance, FID in evaluator features,
  LPIPS (``lpips`` package; NaN with a reason when the ImageNet backbone weights are missing).

Images are float tensors in [0, 1] of shape (N, C, H, W), like the task splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.lib.models import Classifier, build_model, register_arch

#: bump when the meaning of a shared artifact changes without a source change it would see
ARTIFACT_VERSION = "inv-1"


# ----------------------------------------------------------------------------------------------
# keys and small helpers
# ----------------------------------------------------------------------------------------------

def source_hash(*objs) -> str:
    """Hash of the source code of ``objs`` (classes / functions): part of every artifact key, so
    editing a GAN or its training loop rebuilds exactly the artifacts that depend on it."""
    h = hashlib.sha256()
    for o in objs:
        h.update(inspect.getsource(o).encode())
    return h.hexdigest()[:16]


def tensor_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's weights and buffers (identifies a target across cells)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def public_key(task) -> dict:
    """What a prior trained on the attacker's public split depends on."""
    if task.public is None or len(task.public) == 0:
        raise BenchError(f"{task.dataset}: inversion attacks need the inversion protocol's public split")
    return {"dataset": task.dataset, "image_shape": list(task.image_shape),
            "public_classes": task.info.get("public_classes"), "public": tensor_hash(task.public.x)}


def state_bundle(prefix: str, module: nn.Module) -> dict:
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_state(module: nn.Module, bundle: dict, prefix: str) -> nn.Module:
    p = prefix + "."
    module.load_state_dict({k[len(p):]: v for k, v in bundle.items() if isinstance(k, str) and k.startswith(p)
                            and isinstance(v, torch.Tensor)})
    return module.eval()


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve(cls: type, values: Optional[dict], where: str):
    """A nested config mapping (e.g. ``gan: {dim: 16}``) validated against its dataclass (also
    called from the attacks' ``validate`` so that a bad key fails at suite-parse time)."""
    return make_config(cls, dict(values or {}), where)


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Endless shuffled index batches (full batches only when n allows)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        stop = n - batch_size + 1 if n >= batch_size else 1
        for i in range(0, stop, batch_size):
            yield perm[i:i + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device, batch_size: int = 512, features: bool = False):
    """Logits (or penultimate features) of ``model`` on ``x``, in batches, on the CPU."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        out.append((model.penultimate(xb) if features else model(xb)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def resize(x: torch.Tensor, shape) -> torch.Tensor:
    """Resize (N, C, H, W) images to ``shape`` = (C, H, W) as the task protocol does."""
    if tuple(x.shape[-2:]) == tuple(shape[-2:]):
        return x
    return F.interpolate(x, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)


def max_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PLG-MI's max-margin loss, per example: -logit_y + max_{j != y} logit_j."""
    real = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - real


# ----------------------------------------------------------------------------------------------
# the evaluation classifier (the judge)
# ----------------------------------------------------------------------------------------------

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


def get_evaluator(ctx, cfg: Optional[dict] = None) -> tuple[nn.Module, dict]:
    """The (cached) judge for ``ctx.task``'s dataset and image size: ``(model, info)``."""
    ecfg = resolve(EvaluatorConfig, cfg, "evaluator")
    ptask = ctx.task_for("protocol", seed=ecfg.seed, protocol=ecfg.protocol)
    config = dataclasses.asdict(ecfg)
    if config["protocol"] is None:  # the judge of a suite's own protocol keeps its key
        del config["protocol"]
    key = {"dataset": ctx.task.dataset, "task": ptask.fingerprint, "image_shape": list(ctx.task.image_shape),
           "config": config, "version": ARTIFACT_VERSION,
           "code": source_hash(EvalCNN, _train_evaluator)}

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ecfg.seed)
            return _train_evaluator(ptask, ctx.task.image_shape, ecfg, ctx.device, ctx.progress)

    b = ctx.artifact("inversion-evaluator", key, build)
    model = freeze(load_state(build_model(b["spec"]), b, "E")).to(ctx.device)
    return model, {"eval_val_acc": float(b["val_acc"]), "eval_test_acc": float(b["test_acc"]),
                   "num_classes": int(b["spec"]["num_classes"])}


# ----------------------------------------------------------------------------------------------
# GAN architectures (DCGAN family of GMI's MNIST GeneratorMNIST / DGWGAN32, width-scalable)
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# GAN training
# ----------------------------------------------------------------------------------------------

@dataclass
class WGANConfig:
    """GMI's stage 1 (WGAN-GP on public data). Paper/official MNIST: width 64, 100 epochs."""

    z_dim: int = 100
    dim: int = 16
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 5
    gp_weight: float = 10.0

    def validate(self):
        for k in ("z_dim", "dim", "epochs", "batch_size", "n_critic"):
            if getattr(self, k) <= 0:
                raise BenchError(f"gan.{k} must be positive")


def _gradient_penalty(D, real, fake, gen):
    a = torch.rand(len(real), 1, 1, 1, generator=gen).to(real.device)
    xi = (a * real + (1 - a) * fake).requires_grad_(True)
    g = torch.autograd.grad(D(xi).sum(), xi, create_graph=True)[0]
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def train_wgan_gp(x: torch.Tensor, cfg: WGANConfig, seed: int, device, progress, log=lambda m: None) -> dict:
    """WGAN-GP (Gulrajani et al. 2017) as in GMI: a critic step per batch, a generator step every
    ``n_critic`` batches, Adam(lr, (beta1, beta2)), gradient penalty ``gp_weight``."""
    gen = torch.Generator().manual_seed(seed)
    C, S = x.shape[1], x.shape[-1]
    G = DCGenerator(cfg.z_dim, cfg.dim, C, S).to(device)
    D = WGANCritic(C, cfg.dim, S).to(device)
    og = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    od = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    bs = min(cfg.batch_size, len(x))
    per_epoch = max(1, len(x) // bs)
    it = batches(len(x), bs, gen)
    hist = {"d_loss": [], "g_loss": [], "w_dist": []}
    step = 0
    for epoch in progress(range(cfg.epochs), desc="WGAN-GP epochs"):
        dl = gl = wd = 0.0
        for _ in range(per_epoch):
            step += 1
            real = x[next(it)].to(device)
            with torch.no_grad():
                fake = G(torch.randn(len(real), cfg.z_dim, generator=gen).to(device))
            w = D(real).mean() - D(fake).mean()
            d_loss = -w + cfg.gp_weight * _gradient_penalty(D, real, fake, gen)
            od.zero_grad(set_to_none=True)
            d_loss.backward()
            od.step()
            dl += float(d_loss)
            wd += float(w)
            if step % cfg.n_critic == 0:
                for p in D.parameters():
                    p.requires_grad_(False)
                g_loss = -D(G(torch.randn(bs, cfg.z_dim, generator=gen).to(device))).mean()
                og.zero_grad(set_to_none=True)
                g_loss.backward()
                og.step()
                for p in D.parameters():
                    p.requires_grad_(True)
                gl += float(g_loss)
        hist["d_loss"].append(dl / per_epoch)
        hist["w_dist"].append(wd / per_epoch)
        hist["g_loss"].append(gl / max(1, per_epoch // cfg.n_critic))
        log(f"WGAN-GP epoch {epoch + 1}/{cfg.epochs}: W-distance {wd / per_epoch:.3f}")
    return {**state_bundle("G", G), **state_bundle("D", D), "history": hist, "generator_steps": step // cfg.n_critic,
            "G_arch": {"z_dim": cfg.z_dim, "dim": cfg.dim, "out_channels": C, "image_size": S},
            "D_arch": {"in_channels": C, "dim": cfg.dim, "image_size": S}}


def wgan_prior(ctx, gan: Optional[dict] = None) -> tuple[nn.Module, nn.Module, dict]:
    """GMI's public prior (cached per dataset, public split, config and seed; target-independent,
    so every cell and every attack asking for it shares one): ``(G, D, info)``."""
    cfg = resolve(WGANConfig, gan, "gan")
    key = {"public": public_key(ctx.task), "config": dataclasses.asdict(cfg), "seed": ctx.seed,
           "version": ARTIFACT_VERSION, "code": source_hash(DCGenerator, CondBN, WGANCritic, _trunk, train_wgan_gp,
                                                            _gradient_penalty, batches)}

    def build():
        with torch.random.fork_rng(devices=[]):
            return train_wgan_gp(ctx.task.public.x, cfg, ctx.seed, ctx.device, ctx.progress, ctx.log)

    b = ctx.artifact("gan-wgangp", key, build)
    G = freeze(load_state(DCGenerator(**b["G_arch"]), b, "G")).to(ctx.device)
    D = freeze(load_state(WGANCritic(**b["D_arch"]), b, "D")).to(ctx.device)
    return G, D, {"generator_steps": b["generator_steps"], "final_w_dist": b["history"]["w_dist"][-1]}


@dataclass
class KEDMIGANConfig:
    """KEDMI's inversion-specific GAN. Paper/BiDO MNIST: width 64, 100 epochs."""

    z_dim: int = 100
    dim: int = 16
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 5
    #: weight of the entropy of D's class output on fakes in the generator loss
    entropy_weight: float = 1e-4
    mbd_kernels: int = 32
    mbd_dim: int = 8

    def validate(self):
        for k in ("z_dim", "dim", "epochs", "batch_size", "n_critic"):
            if getattr(self, k) <= 0:
                raise BenchError(f"gan.{k} must be positive")


def train_kedmi_gan(x: torch.Tensor, soft: torch.Tensor, cfg: KEDMIGANConfig, seed: int, device, progress,
                    log=lambda m: None) -> dict:
    """KEDMI (Chen et al. 2021) stage 1. Discriminator: soft cross-entropy to the target's soft
    labels on public images (L_sup) + the semi-supervised real/fake loss with "real" =
    logsumexp of the K logits (L_unsup). Generator, every ``n_critic`` steps: L1 feature
    matching between mean D features of fakes and of an independent public batch, plus
    ``entropy_weight`` x the entropy of D's class output on the fakes."""
    gen = torch.Generator().manual_seed(seed)
    C, S, K = x.shape[1], x.shape[-1], soft.shape[1]
    G = DCGenerator(cfg.z_dim, cfg.dim, C, S).to(device)
    D = KPlusOneDiscriminator(C, cfg.dim, S, K, cfg.mbd_kernels, cfg.mbd_dim).to(device)
    og = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    od = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    bs = min(cfg.batch_size, len(x))
    per_epoch = max(1, len(x) // bs)
    lab, unl1, unl2 = batches(len(x), bs, gen), batches(len(x), bs, gen), batches(len(x), bs, gen)
    hist = {"d_sup": [], "d_unsup": [], "g_loss": [], "d_acc": []}
    step = 0
    for epoch in progress(range(cfg.epochs), desc="KEDMI GAN epochs"):
        ls = lu = lg = acc = 0.0
        for _ in range(per_epoch):
            step += 1
            i = next(lab)
            xl, pl = x[i].to(device), soft[i].to(device)
            xu = x[next(unl1)].to(device)
            xu2_idx = next(unl2)
            with torch.no_grad():
                fake = G(torch.randn(bs, cfg.z_dim, generator=gen).to(device))
            _, out_l = D(xl)
            _, out_u = D(xu)
            _, out_f = D(fake)
            sup = -(pl * F.log_softmax(out_l, 1)).sum(1).mean()
            lse_u, lse_f = log_sum_exp(out_u), log_sum_exp(out_f)
            unsup = 0.5 * (F.softplus(lse_u).mean() - lse_u.mean() + F.softplus(lse_f).mean())
            od.zero_grad(set_to_none=True)
            (sup + unsup).backward()
            od.step()
            ls += float(sup)
            lu += float(unsup)
            acc += float((out_l.argmax(1) == pl.argmax(1)).float().mean())
            if step % cfg.n_critic == 0:
                for p in D.parameters():
                    p.requires_grad_(False)
                f_fake, o_fake = D(G(torch.randn(bs, cfg.z_dim, generator=gen).to(device)))
                f_real, _ = D(x[xu2_idx].to(device))
                p = F.softmax(o_fake, 1)
                entropy = -(p * F.log_softmax(o_fake, 1)).sum(1).mean()
                g_loss = (f_fake.mean(0) - f_real.mean(0)).abs().mean() + cfg.entropy_weight * entropy
                og.zero_grad(set_to_none=True)
                g_loss.backward()
                og.step()
                for p_ in D.parameters():
                    p_.requires_grad_(True)
                lg += float(g_loss)
        hist["d_sup"].append(ls / per_epoch)
        hist["d_unsup"].append(lu / per_epoch)
        hist["d_acc"].append(acc / per_epoch)
        hist["g_loss"].append(lg / max(1, per_epoch // cfg.n_critic))
        log(f"KEDMI GAN epoch {epoch + 1}/{cfg.epochs}: L_sup {ls / per_epoch:.3f} L_unsup {lu / per_epoch:.3f}")
    return {**state_bundle("G", G), **state_bundle("D", D), "history": hist, "generator_steps": step // cfg.n_critic,
            "G_arch": {"z_dim": cfg.z_dim, "dim": cfg.dim, "out_channels": C, "image_size": S},
            "D_arch": {"in_channels": C, "dim": cfg.dim, "image_size": S, "num_classes": K,
                       "kernels": cfg.mbd_kernels, "kernel_dim": cfg.mbd_dim}}


def kedmi_gan(ctx, target: nn.Module, gan: Optional[dict] = None) -> tuple[nn.Module, nn.Module, dict]:
    """KEDMI's GAN for this target (cached per target weights, public split, config, seed)."""
    cfg = resolve(KEDMIGANConfig, gan, "gan")
    key = {"public": public_key(ctx.task), "target": model_hash(target), "config": dataclasses.asdict(cfg),
           "seed": ctx.seed, "version": ARTIFACT_VERSION,
           "code": source_hash(DCGenerator, CondBN, KPlusOneDiscriminator, MinibatchDiscrimination, _trunk,
                               train_kedmi_gan, batches)}

    def build():
        with torch.random.fork_rng(devices=[]):
            soft = F.softmax(predict(target, ctx.task.public.x, ctx.device), 1)
            return train_kedmi_gan(ctx.task.public.x, soft, cfg, ctx.seed, ctx.device, ctx.progress, ctx.log)

    b = ctx.artifact("gan-kedmi", key, build)
    G = freeze(load_state(DCGenerator(**b["G_arch"]), b, "G")).to(ctx.device)
    D = freeze(load_state(KPlusOneDiscriminator(**b["D_arch"]), b, "D")).to(ctx.device)
    return G, D, {"generator_steps": b["generator_steps"], "final_d_acc": b["history"]["d_acc"][-1]}


# -- differentiable augmentations (PLG-MI) ------------------------------------------------------

def augment(x: torch.Tensor, *, scale=(0.8, 1.0), rotate: float = 5.0, brightness: float = 0.2,
            contrast: float = 0.2, hflip: bool = False) -> torch.Tensor:
    """PLG-MI's augmentation, differentiable: random resized crop (square, area ``scale``),
    rotation within +-``rotate`` degrees, brightness/contrast jitter, optional horizontal flip
    (off by default: a mirrored digit is another glyph, unlike a mirrored face)."""
    n, dev = len(x), x.device
    s = torch.sqrt(torch.empty(n, device=dev).uniform_(*scale))  # side fraction of the crop
    tx = (1 - s) * torch.empty(n, device=dev).uniform_(-1, 1)
    ty = (1 - s) * torch.empty(n, device=dev).uniform_(-1, 1)
    a = torch.deg2rad(torch.empty(n, device=dev).uniform_(-rotate, rotate))
    flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0) if hflip else torch.ones(n, device=dev)
    theta = torch.stack([torch.stack([s * torch.cos(a) * flip, -s * torch.sin(a), tx], 1),
                         torch.stack([s * torch.sin(a) * flip, s * torch.cos(a), ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    b = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - brightness, 1 + brightness)
    c = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - contrast, 1 + contrast)
    mean = out.mean((1, 2, 3), keepdim=True)
    return ((out * b - mean * b) * c + mean * b).clamp(0, 1)


@dataclass
class PLGGANConfig:
    """PLG-MI's pseudo-label conditional GAN. Paper: SN-ResNet64 pair, 30k generator iterations,
    top-30 of each class, alpha = 0.2, Adam 2e-4 (0, 0.9), n_dis = 5, batch 64, z 128."""

    z_dim: int = 128
    dim: int = 16
    #: generator iterations (each after ``n_dis`` discriminator steps)
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    n_dis: int = 5
    #: public images pseudo-labelled per target class (ranked by the target's probability)
    top_n: int = 200
    #: weight of the max-margin inversion loss of the target on augmented fakes
    alpha: float = 0.2
    hflip: bool = False

    def validate(self):
        for k in ("z_dim", "dim", "steps", "batch_size", "n_dis", "top_n"):
            if getattr(self, k) <= 0:
                raise BenchError(f"gan.{k} must be positive")


def top_n_selection(probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PLG-MI's pseudo-labels: for each class k, the ``n`` public images with the highest target
    probability of k among those the target assigns to k (argmax), topped up from the rest by
    p_k when fewer are assigned. Returns (indices, pseudo-labels)."""
    K = probs.shape[1]
    pred = probs.argmax(1)
    idx, lab, used = [], [], torch.zeros(len(probs), dtype=torch.bool)
    for k in range(K):
        order = torch.argsort(probs[:, k], descending=True)
        first = order[pred[order] == k]
        rest = order[(pred[order] != k)]
        pick = torch.cat([first, rest])
        pick = pick[~used[pick]][:n]
        used[pick] = True
        idx.append(pick)
        lab.append(torch.full((len(pick),), k, dtype=torch.long))
    return torch.cat(idx), torch.cat(lab)


def train_plg_gan(x: torch.Tensor, y: torch.Tensor, target: nn.Module, num_classes: int, cfg: PLGGANConfig,
                  seed: int, device, progress, log=lambda m: None) -> dict:
    """PLG-MI (Yuan et al. 2023) stage 1: conditional GAN on the pseudo-labelled public images,
    hinge loss; the generator loss adds ``alpha`` x the target's max-margin loss on an augmented
    G(z, y) for random pseudo-labels y."""
    gen = torch.Generator().manual_seed(seed)
    C, S, K = x.shape[1], x.shape[-1], num_classes
    G = DCGenerator(cfg.z_dim, cfg.dim, C, S, num_classes=K).to(device)
    D = ProjectionDiscriminator(C, cfg.dim, S, K).to(device)
    og = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    od = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    bs = min(cfg.batch_size, len(x))
    it = batches(len(x), bs, gen)
    hist = {"d_loss": [], "g_adv": [], "g_inv": []}
    acc = {"d": 0.0, "a": 0.0, "i": 0.0, "n": 0}
    log_every = max(1, cfg.steps // 10)
    for step in progress(range(1, cfg.steps + 1), desc="PLG-MI cGAN steps"):
        for _ in range(cfg.n_dis):
            i = next(it)
            real, yr = x[i].to(device), y[i].to(device)
            yf = torch.randint(0, K, (bs,), generator=gen).to(device)
            with torch.no_grad():
                fake = G(torch.randn(bs, cfg.z_dim, generator=gen).to(device), yf)
            d_loss = F.relu(1 - D(real, yr)).mean() + F.relu(1 + D(fake, yf)).mean()
            od.zero_grad(set_to_none=True)
            d_loss.backward()
            od.step()
        for p in D.parameters():
            p.requires_grad_(False)
        yf = torch.randint(0, K, (bs,), generator=gen).to(device)
        fake = G(torch.randn(bs, cfg.z_dim, generator=gen).to(device), yf)
        adv = -D(fake, yf).mean()
        inv = max_margin_loss(target(augment(fake, hflip=cfg.hflip)), yf).mean()
        g_loss = adv + cfg.alpha * inv
        og.zero_grad(set_to_none=True)
        g_loss.backward()
        og.step()
        for p in D.parameters():
            p.requires_grad_(True)
        acc["d"] += float(d_loss)
        acc["a"] += float(adv)
        acc["i"] += float(inv)
        acc["n"] += 1
        if step % log_every == 0 or step == cfg.steps:
            n = acc["n"]
            hist["d_loss"].append(acc["d"] / n)
            hist["g_adv"].append(acc["a"] / n)
            hist["g_inv"].append(acc["i"] / n)
            log(f"PLG-MI cGAN step {step}/{cfg.steps}: D {acc['d'] / n:.3f} G_adv {acc['a'] / n:.3f} "
                f"L_inv {acc['i'] / n:.3f}")
            acc = {"d": 0.0, "a": 0.0, "i": 0.0, "n": 0}
    return {**state_bundle("G", G), **state_bundle("D", D), "history": hist, "generator_steps": cfg.steps,
            "G_arch": {"z_dim": cfg.z_dim, "dim": cfg.dim, "out_channels": C, "image_size": S, "num_classes": K},
            "D_arch": {"in_channels": C, "dim": cfg.dim, "image_size": S, "num_classes": K}}


def plg_gan(ctx, target: nn.Module, gan: Optional[dict] = None) -> tuple[nn.Module, dict]:
    """PLG-MI's conditional generator for this target (cached per target weights, public split,
    config, seed): ``(G, info)``."""
    cfg = resolve(PLGGANConfig, gan, "gan")
    K = ctx.task.num_classes
    key = {"public": public_key(ctx.task), "target": model_hash(target), "num_classes": K,
           "config": dataclasses.asdict(cfg), "seed": ctx.seed, "version": ARTIFACT_VERSION,
           "code": source_hash(DCGenerator, CondBN, ProjectionDiscriminator, _trunk, train_plg_gan, top_n_selection,
                               augment, max_margin_loss, batches)}

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            probs = F.softmax(predict(target, ctx.task.public.x, ctx.device), 1)
            idx, lab = top_n_selection(probs, cfg.top_n)
            ctx.log(f"PLG-MI: {len(idx)} pseudo-labelled public images (top {cfg.top_n} per class)")
            b = train_plg_gan(ctx.task.public.x[idx], lab, target, K, cfg, ctx.seed, ctx.device, ctx.progress,
                              ctx.log)
            b["pseudo_rows"] = np.asarray(ctx.task.public.index[idx.numpy()], dtype=np.int64)
            b["pseudo_labels"] = lab.numpy()
            b["pseudo_true"] = ctx.task.public.y[idx].numpy()
            return b

    b = ctx.artifact("gan-plgmi", key, build)
    G = freeze(load_state(DCGenerator(**b["G_arch"]), b, "G")).to(ctx.device)
    # which public classes the pseudo-labels drew from, per target class (for the report)
    purity = {}
    for k in range(K):
        true = b["pseudo_true"][b["pseudo_labels"] == k]
        vals, cnt = np.unique(true, return_counts=True)
        purity[str(k)] = {str(int(v)): int(c) for v, c in zip(vals, cnt)}
    return G, {"generator_steps": int(b["generator_steps"]), "pseudo_label_sources": purity,
               "final_inv_loss": b["history"]["g_inv"][-1]}


# ----------------------------------------------------------------------------------------------
# metrics (pure functions)
# ----------------------------------------------------------------------------------------------

def topk_correct(logits: torch.Tensor | np.ndarray, labels, k: int = 1) -> np.ndarray:
    """Per example: is ``labels`` among the ``k`` largest logits? (bool array)."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(1).numpy()


def knn_distance(rec_feats, rec_labels, priv_feats, priv_labels) -> np.ndarray:
    """Per reconstruction: the squared L2 distance to the nearest private example of the same
    class, in (evaluator) feature space; also returns the index of that neighbour.
    Returns ``(dist, index)``; a class with no private example gives NaN / -1."""
    rf = torch.as_tensor(np.asarray(rec_feats), dtype=torch.float64)
    pf = torch.as_tensor(np.asarray(priv_feats), dtype=torch.float64)
    rl, pl = np.asarray(rec_labels), np.asarray(priv_labels)
    dist = np.full(len(rf), np.nan)
    index = np.full(len(rf), -1, dtype=np.int64)
    for c in np.unique(rl):
        ri, pi = np.flatnonzero(rl == c), np.flatnonzero(pl == c)
        if len(pi) == 0:
            continue
        d = torch.cdist(rf[ri], pf[pi]).pow(2)
        m, j = d.min(1)
        dist[ri] = m.numpy()
        index[ri] = pi[j.numpy()]
    return dist, index


def fid_from_features(f1, f2, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017), with
    ``scipy.linalg.sqrtm``; an ``eps`` ridge is added when the product is singular (as in
    pytorch-fid). Needs at least two rows per set."""
    from scipy import linalg

    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if len(f1) < 2 or len(f2) < 2:
        return float("nan")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))


def alexnet_weights_path() -> Optional[str]:
    """Where torchvision keeps the ImageNet AlexNet weights LPIPS needs (None if absent)."""
    try:
        from torchvision.models import AlexNet_Weights

        name = os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    except Exception:  # pragma: no cover - old torchvision
        name = "alexnet-owt-7be5be79.pth"
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    return path if os.path.exists(path) else None


_LPIPS: dict = {}


def load_alexnet_trunk(net: nn.Module, path: str) -> None:
    """Load torchvision's ImageNet AlexNet ``features`` from ``path`` into an lpips AlexNet trunk
    (``slice1..5``, children named by their index in ``features``). The file's SHA-256 must start
    with the hex digits in its name (torch.hub's convention, ``alexnet-owt-7be5be79.pth``) and it
    is read with ``weights_only=True``: tensors only, no code."""
    m = torch.hub.HASH_REGEX.search(os.path.basename(path))
    if m is None or len(m.group(1)) < 6:
        raise BenchError(f"{path}: no hash prefix in the file name, refusing to load it")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(m.group(1)):
        raise BenchError(f"{path}: SHA-256 {h.hexdigest()[:12]}... does not match the {m.group(1)} in its name "
                         "(a corrupt or replaced file), refusing to load it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = {}
    for sname in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for idx, layer in getattr(net, sname).named_children():
            for pname in dict(layer.named_parameters()):
                own[f"{sname}.{idx}.{pname}"] = state[f"features.{idx}.{pname}"]
    net.load_state_dict(own, strict=True)


def lpips_model(random_backbone: bool = False):
    """``(model, reason)``: LPIPS (AlexNet, v0.1) with the pretrained backbone when its weights
    are in the torch hub cache; ``(None, reason)`` otherwise (nothing is downloaded).
    ``random_backbone=True`` builds it with a randomly initialised backbone (tests only: the
    numbers mean nothing)."""
    key = "rand" if random_backbone else "pretrained"
    if key in _LPIPS:
        return _LPIPS[key]
    try:
        import lpips
    except ImportError as e:
        out = (None, f"LPIPS unavailable: the lpips package is not installed ({e})")
        _LPIPS[key] = out
        return out
    if not random_backbone and alexnet_weights_path() is None:
        out = (None, "LPIPS unavailable: the ImageNet AlexNet backbone weights are not in the torch hub cache "
                     f"({os.path.join(torch.hub.get_dir(), 'checkpoints')}) and nothing is downloaded")
        _LPIPS[key] = out
        return out
    try:
        # the trunk is always built random here and the ImageNet weights are loaded below: lpips
        # itself would load them through torchvision with weights_only=False (a planted pickle in
        # the hub cache would run)
        m = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
        if not random_backbone:
            load_alexnet_trunk(m.net, alexnet_weights_path())
    except Exception as e:  # a failed backbone load is reported, never fatal
        out = (None, f"LPIPS unavailable: {type(e).__name__}: {' '.join(str(e).split())}")
        _LPIPS[key] = out
        return out
    for p in m.parameters():
        p.requires_grad_(False)
    out = (m, "LPIPS (AlexNet, v0.1): " + ("RANDOM backbone (test only)" if random_backbone else "pretrained backbone"))
    _LPIPS[key] = out
    return out


@torch.no_grad()
def lpips_distance(model, x: torch.Tensor, y: torch.Tensor, size: int = 64, batch_size: int = 256) -> np.ndarray:
    """Per pair LPIPS between images ``x`` and ``y`` in [0, 1] (grey images are repeated to three
    channels and upsampled to ``size`` px, since AlexNet's 11x11/stride-4 stem needs >= ~32 px)."""
    out = []
    for i in range(0, len(x), batch_size):
        a, b = x[i:i + batch_size].float(), y[i:i + batch_size].float()
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        if a.shape[-1] < size:
            a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False)
        dev = next(model.parameters()).device
        out.append(model(a.to(dev) * 2 - 1, b.to(dev) * 2 - 1).view(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


# ----------------------------------------------------------------------------------------------
# the evaluation every inversion attack shares
# ----------------------------------------------------------------------------------------------

def evaluate_inversion(ctx, images: torch.Tensor, target: nn.Module, *, evaluator: Optional[dict] = None,
                       lpips: bool = True, max_private: int = 0, select_scores: Optional[torch.Tensor] = None,
                       lpips_random_backbone: bool = False) -> tuple[dict, dict, dict]:
    """Score reconstructions ``images`` of shape (K, N, C, H, W) (N per target class: restarts
    or samples) with the judge. Returns ``(metrics, arrays, info)``.

    Metrics: ``top1`` / ``top1_std`` (mean and sample std over the N columns of the judge's
    accuracy over the K classes, the judge restricted to the private classes: chance 1/K),
    ``top2``; ``top1_all`` / ``top5_all`` (argmax over all the judge's classes: a
    reconstruction that looks like a public class counts as a miss); ``top1_selected`` (the
    reconstruction per class the attacker picks by the target's own confidence, GMI's rule);
    ``target_acc``; ``knn_dist`` (squared L2 to the nearest same-class private member in judge
    features); ``fid`` (judge features, all reconstructions vs the private members); ``lpips``
    (to that nearest member; NaN when unavailable, the reason in ``info``)."""
    task = ctx.task
    K, N = images.shape[:2]
    if K != task.num_classes:
        raise ValueError(f"expected images for {task.num_classes} classes, got {K}")
    flat = images.reshape(K * N, *images.shape[2:]).float().clamp(0, 1)
    labels = torch.arange(K).repeat_interleave(N)
    E, einfo = get_evaluator(ctx, evaluator)
    private = task.info.get("private_classes") or list(range(K))
    priv_cls = torch.as_tensor(private, dtype=torch.long)
    e_logits = predict(E, flat, ctx.device)
    e_feats = predict(E, flat, ctx.device, features=True)
    restricted = e_logits[:, priv_cls]
    c1 = topk_correct(restricted, labels, 1).reshape(K, N)
    c2 = topk_correct(restricted, labels, 2).reshape(K, N)
    glob = priv_cls[labels]
    c1a = topk_correct(e_logits, glob, 1).reshape(K, N)
    c5a = topk_correct(e_logits, glob, 5).reshape(K, N)
    per_col = c1.mean(0)  # accuracy over the classes, per restart / sample
    t_logits = predict(target, flat, ctx.device)
    t_conf = F.softmax(t_logits, 1).gather(1, labels[:, None]).view(K, N)
    scores = t_conf if select_scores is None else select_scores.view(K, N).float().cpu()
    sel = scores.argmax(1)
    metrics = {
        "top1": float(per_col.mean()), "top1_std": float(per_col.std(ddof=1)) if N > 1 else 0.0,
        "top2": float(c2.mean()), "top1_all": float(c1a.mean()), "top5_all": float(c5a.mean()),
        "top1_selected": float(c1[np.arange(K), sel.numpy()].mean()),
        "target_acc": float((t_logits.argmax(1) == labels).float().mean()),
        "n_reconstructions": float(K * N), "eval_test_acc": einfo["eval_test_acc"],
    }
    # private reference: the target's own training members (what inversion tries to recover)
    mem = task.members
    if max_private and len(mem) > max_private:
        g = torch.Generator().manual_seed(ctx.seed)
        mem = mem.subset(np.sort(torch.randperm(len(mem), generator=g)[:max_private].numpy()))
    p_feats = predict(E, mem.x, ctx.device, features=True)
    dist, nn_idx = knn_distance(e_feats, labels, p_feats, mem.y)
    metrics["knn_dist"] = float(np.nanmean(dist))
    metrics["fid"] = fid_from_features(e_feats.numpy(), p_feats.numpy())
    info = {"evaluator": einfo, "private_classes": list(private), "lpips": ""}
    if lpips:
        model, reason = lpips_model(random_backbone=lpips_random_backbone)
        info["lpips"] = reason
        if model is not None:
            ok = nn_idx >= 0
            d = lpips_distance(model, flat[ok], mem.x[nn_idx[ok]])
            metrics["lpips"] = float(d.mean()) if len(d) else float("nan")
        else:
            metrics["lpips"] = float("nan")
    else:
        info["lpips"] = "LPIPS not computed (lpips: false)"
        metrics["lpips"] = float("nan")
    arrays = {"images": images.detach().cpu().float().numpy().astype(np.float32),
              "eval_pred": restricted.argmax(1).view(K, N).numpy().astype(np.int16),
              "eval_pred_all": e_logits.argmax(1).view(K, N).numpy().astype(np.int16),
              "target_conf": t_conf.numpy().astype(np.float32),
              "selected": sel.numpy().astype(np.int16),
              "classes": np.asarray(private, dtype=np.int16)}
    return metrics, arrays, info


def common_eval_kwargs(cfg) -> dict:
    """The evaluation options every attack config carries (``evaluator``, ``lpips``,
    ``max_private``)."""
    return {"evaluator": getattr(cfg, "evaluator", None), "lpips": getattr(cfg, "lpips", True),
            "max_private": getattr(cfg, "max_private", 0)}
