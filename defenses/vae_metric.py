"""``vae-metric``: privacy-preserving generative framework with metric privacy (Yang et al., 2022,
"Privacy-preserving generative framework against membership inference attacks").

1. A VAE is trained on the private members (non-privately).
2. Every member x_i is mapped to its latent code z_i = mu(x_i).
3. The code is perturbed with noise that satisfies **metric privacy** (d_X-privacy, Chatzikokolakis
   et al. 2013) for the Euclidean distance in latent space: z~_i = z_i + n_i with density
   p(n) proportional to exp(-epsilon ||n||_2) (a uniform direction, radius ~ Gamma(d, 1/epsilon)),
   so that for any two codes z, z' and any output set A,
   P[z~ in A | z] <= exp(epsilon ||z - z'||_2) P[z~ in A | z'].
4. The decoder maps z~_i to a synthetic image, which keeps the member's label; a classifier is
   trained on the synthetic set (epoch selected on the validation split) and released together
   with the decoder (``generator``).

What epsilon means here (read before comparing with the DP rows): **metric privacy is not
(epsilon, delta)-differential privacy.** The suite's epsilon is the metric-privacy parameter per
unit of L2 distance between latent codes (the VAE prior is N(0, I), so two typical codes are about
sqrt(2 d) apart and their outputs are only exp(epsilon sqrt(2 d))-indistinguishable). Each member
is perturbed once (parallel composition over members). The encoder and decoder are trained on the
members without any noise and the labels are released as they are, so the release has **no
example-level DP guarantee** (DP epsilon = inf). The privacy unit is ``metric`` (metric privacy,
not DP) with ``delta = 0``; ``extra["metric"]`` names the metric (L2 distance between latent
codes), ``extra["metric_scale"]`` its scale (sqrt(2 d), the typical distance between two codes
under the N(0, I) prior, so two typical members are exp(epsilon * metric_scale)-indistinguishable)
and ``extra["guarantee"] = "metric privacy, not differential privacy"``; tables must not rank it
against DP rows by epsilon.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense, val_selection
from bench.lib.models import build_model, register_arch, spec_for
from bench.lib.synthetic import train_student
from bench.lib.tasks import Split
from bench.lib.train import seed_everything


@register_arch("vae-decoder")
class VAEDecoder(nn.Module):
    """z (latent_dim) -> FC hidden ReLU -> FC C*H*W -> sigmoid (the released generator)."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, latent_dim=8, hidden=256):
        super().__init__()
        self.latent_dim, self.shape = latent_dim, (in_channels, image_size, image_size)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, in_channels * image_size * image_size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(-1, *self.shape)

    @torch.no_grad()
    def sample(self, n: int, generator=None, device="cpu") -> torch.Tensor:
        return self(torch.randn(n, self.latent_dim, generator=generator).to(device))


class VAEEncoder(nn.Module):
    def __init__(self, dim: int, latent_dim: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x):
        h = self.body(x.flatten(1))
        return self.mu(h), self.logvar(h)


def train_vae(x: torch.Tensor, latent_dim: int, hidden: int, epochs: int, lr: float, batch_size: int, seed: int,
              device="cpu", progress=lambda it, **k: it) -> tuple[VAEEncoder, VAEDecoder, list[float]]:
    """Standard VAE (Bernoulli likelihood, N(0, I) prior), Adam, on images in [0, 1]."""
    torch.manual_seed(seed)
    C, H, W = x.shape[1:]
    enc = VAEEncoder(C * H * W, latent_dim, hidden).to(device)
    dec = VAEDecoder(C, H, latent_dim=latent_dim, hidden=hidden).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in progress(range(epochs), desc="vae epochs", leave=False):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            xb = x[perm[i:i + batch_size]].to(device)
            mu, logvar = enc(xb)
            z = mu + torch.randn(mu.shape, generator=gen).to(device) * (0.5 * logvar).exp()
            rec = F.binary_cross_entropy(dec(z), xb, reduction="sum")
            kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum()
            loss = (rec + kl) / len(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
        losses.append(total / len(x))
    return enc.eval(), dec.eval(), losses


def metric_privacy_noise(n: int, d: int, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """n draws of the d-dimensional noise with density proportional to exp(-epsilon ||v||_2):
    direction uniform on the sphere, radius ~ Gamma(shape d, scale 1 / epsilon). Adding it to a
    point gives epsilon * d_2-privacy (metric privacy for the Euclidean distance)."""
    u = torch.randn(n, d, generator=generator)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if math.isinf(epsilon):
        return torch.zeros(n, d)
    # Gamma(d, 1/eps) as a sum of d exponentials (integer shape; exact, seeded)
    e = -torch.log(torch.rand(n, d, generator=generator).clamp_min(1e-12))
    r = e.sum(1, keepdim=True) / epsilon
    return u * r


@dataclass
class VAEMetricConfig:
    latent_dim: int = 8
    hidden: int = 256
    vae_epochs: int = 10
    vae_lr: float = 1e-3
    vae_batch_size: int = 128
    student_arch: str = "cnn"
    student_epochs: int = 4
    student_lr: float = 1e-3
    student_batch_size: int = 128
    student_optimizer: Literal["adam", "sgd"] = "adam"

    def validate(self):
        if self.latent_dim <= 0 or self.vae_epochs <= 0 or self.student_epochs <= 0:
            raise BenchError("vae-metric: latent_dim, vae_epochs, student_epochs must be positive")


@register_defense("vae-metric")
class VAEMetric(Defense):
    """VAE latent codes perturbed under metric privacy, decoded into a synthetic training set."""

    Config = VAEMetricConfig
    privacy_unit = "metric"  # metric (d_X) privacy, not DP (see module doc)
    paper = "Yang et al., Privacy-preserving generative framework against membership inference attacks, 2022"

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        seed_everything(ctx.seed)
        t0 = time.time()
        members = task.members
        enc, dec, vl = train_vae(members.x, c.latent_dim, c.hidden, c.vae_epochs, c.vae_lr, c.vae_batch_size,
                                 ctx.seed * 5501 + 1, ctx.device, ctx.progress)
        with torch.no_grad():
            mu = torch.cat([enc(members.x[i:i + 2048].to(ctx.device))[0].cpu() for i in range(0, len(members), 2048)])
        noise = metric_privacy_noise(len(mu), c.latent_dim, ctx.epsilon, torch.Generator().manual_seed(ctx.seed * 5501 + 2))
        with torch.no_grad():
            xs = torch.cat([dec((mu + noise)[i:i + 2048].to(ctx.device)).cpu() for i in range(0, len(mu), 2048)])
        synth = Split(xs, members.y.clone())
        t_vae = time.time() - t0
        spec = spec_for(task, c.student_arch)
        torch.manual_seed(ctx.seed * 5501 + 3)
        student = build_model(spec)
        student, hist = train_student(student, synth, task.val, epochs=c.student_epochs, lr=c.student_lr,
                                      batch_size=c.student_batch_size, optimizer=c.student_optimizer,
                                      device=ctx.device, seed=ctx.seed * 5501 + 4, progress=ctx.progress)
        code_dist = float(torch.cdist(mu[:500], mu[500:1000]).mean()) if len(mu) >= 1000 else float("nan")
        privacy = PrivacyReport(
            ctx.epsilon, 0.0, "metric",
            "none (metric privacy: one perturbed code per member, parallel composition; no DP accounting)",
            "metric (d_X) privacy: latent code + noise with density ~ exp(-eps ||n||_2)",
            {"guarantee": "metric privacy, not differential privacy", "dp_epsilon": None,
             "metric": "L2 distance between VAE latent codes mu(x) (prior N(0, I))",
             "metric_scale": math.sqrt(2 * c.latent_dim),
             "metric_scale_note": "sqrt(2 d): typical L2 distance between two codes under the prior; two typical "
                                  "members are exp(epsilon * metric_scale)-indistinguishable",
             "epsilon_per_unit_distance": ctx.epsilon, "latent_dim": c.latent_dim,
             "mean_noise_norm": c.latent_dim / ctx.epsilon if not math.isinf(ctx.epsilon) else 0.0,
             "mean_code_distance": code_dist,
             "not_protected": "VAE encoder/decoder trained on members without noise; labels released as is"},
            val_selection("the student's epoch"))
        dspec = spec_for(task, {"name": "vae-decoder", "latent_dim": c.latent_dim, "hidden": c.hidden})
        info = {"history": {"student": hist, "vae_loss": vl}, "selected_by": "val_acc",
                "selected_epoch": hist["selected_epoch"], "vae_seconds": t_vae}
        return Release({"model": student.cpu().eval(), "generator": dec.cpu().eval()},
                       {"model": spec, "generator": dspec}, privacy, info)
