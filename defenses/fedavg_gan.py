"""``fedavg-gan``: DP-FedAvg-GAN (Augenstein, McMahan, Ramage, Ramaswamy, Kairouz, Chen, Mathews &
Agüera y Arcas, "Generative Models for Effective ML on Private, Decentralized Datasets", ICLR
2020, Algorithm 1), with a student classifier trained on its samples as the DP data generators of
the DataLens / DPSD tables are evaluated.

The members are split into ``clients`` (``partition: iid | dirichlet``, the federated issue's
partitions, :func:`bench.lib.federated.split_members`). The **discriminator** D is trained by
DP-FedAvg (:func:`bench.lib.federated.run_fedavg` with a :class:`~bench.lib.federated.ClientDP`):
each round every client joins with probability q = ``expected_clients_per_round`` / ``clients``;
a joining client starts from the server's D and G, takes ``local_steps`` minibatch steps of the
DCGAN discriminator loss on its own images (real) and as many images of the broadcast G with the
same labels (fake), and returns its D delta clipped to L2 norm ``clip`` S; the server adds
N(0, (z S)^2) per coordinate to the sum, divides by the fixed expected count q N and applies it.
The **generator** G is trained on the server only, ``g_steps`` steps per round of the
non-saturating loss through the new D: it never sees client data, so it is post-processing of the
DP discriminator updates (the paper's point: only D touches private data).

Privacy unit ``client`` (user-level DP: neighbouring datasets add or remove one client's whole
data). Each round is a Poisson-subsampled Gaussian mechanism of multiplier z (adding a client
moves the sum by at most S whatever its data); ``rounds`` rounds compose in dp_accounting (RDP)
and z is calibrated so that they spend the target epsilon. The release is G after the last round
(its samples and the student on them). No example-level epsilon is claimed (one member's change
moves its client's clipped delta by up to 2 S: replace-one-client, not accounted here).
epsilon = inf runs the same rounds with plain FedAvg of D (``expected_clients_per_round`` clients
per round, size-weighted average, no clipping, no noise): the leaky reference row.

Settings and CPU scale-down (docs/methods/fedavg-gan.md): the paper trains on EMNIST with
thousands of users; here MNIST members as 100 IID clients, 10 expected per round, the family's
conditional DCGAN generator (gf 32 / gfc 256) and conditional critic (width 16, GroupNorm: no
float buffers, as DP-FedAvg here requires), local Adam on D (fresh state per client round), Adam
on G at the server.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import calibrate_poisson_gaussian, poisson_gaussian_epsilon
from bench.lib.federated import ClientDP, run_fedavg, split_members
from bench.lib.seeding import seeded_init
from bench.lib.synthetic.gan import CondDCGANGenerator, CondDiscriminator
from bench.lib.synthetic.release import STUDENT_SELECTION, generator_release
from bench.lib.tasks import Split
from bench.lib.train import seed_everything


@dataclass
class FedAvgGANConfig:
    clients: int = 100
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.5
    #: q N: the expected participants per round and the fixed denominator of the update
    expected_clients_per_round: float = 10.0
    rounds: int = 500
    #: discriminator minibatch steps per joining client and round (local Adam, fresh state)
    local_steps: int = 5
    batch_size: int = 32
    lr_d: float = 2e-4
    #: server generator steps per round, and their batch
    g_steps: int = 1
    lr_g: float = 2e-4
    beta1: float = 0.5
    #: S: L2 bound of one client's discriminator delta
    clip: float = 0.1
    server_lr: float = 1.0
    accountant: Literal["rdp", "pld"] = "rdp"
    z_dim: int = 50
    gf_dim: int = 32
    gfc_dim: int = 256
    df_dim: int = 16
    # --- the synthetic set and its student
    n_synthetic: int = 60000
    synthetic_val_frac: float = 0.1
    student_arch: str = "cnn"
    student_epochs: int = 5
    student_lr: float = 1e-3
    student_batch_size: int = 128
    student_optimizer: str = "adam"

    def validate(self):
        if min(self.clients, self.rounds, self.local_steps, self.batch_size, self.g_steps, self.z_dim, self.gf_dim,
               self.gfc_dim, self.df_dim, self.student_epochs, self.student_batch_size) < 1 or self.n_synthetic < 10:
            raise BenchError("fedavg-gan: clients, rounds, local_steps, batch_size, g_steps, z_dim, gf_dim, gfc_dim, "
                             "df_dim, student_epochs and student_batch_size must be >= 1, n_synthetic >= 10")
        if not 0 < self.expected_clients_per_round <= self.clients:
            raise BenchError("fedavg-gan: expected_clients_per_round must be in (0, clients]")
        if not (self.clip > 0 and self.lr_d > 0 and self.lr_g > 0 and self.server_lr > 0 and self.alpha > 0
                and self.student_lr > 0 and 0 <= self.beta1 < 1):
            raise BenchError("fedavg-gan: clip, lr_d, lr_g, server_lr, alpha and student_lr must be > 0, "
                             "beta1 in [0, 1)")
        if not 0 < self.synthetic_val_frac < 1:
            raise BenchError("fedavg-gan: synthetic_val_frac must be in (0, 1)")


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def train_fedavg_gan(members: Split, num_classes: int, c: FedAvgGANConfig, *, epsilon: float, delta: float,
                     seed: int, device="cpu", progress=lambda it, **k: it, log=lambda m: None) -> dict:
    """D by (DP-)FedAvg over the clients, G on the server through D; returns G (eval mode) and the
    accounting record."""
    try:
        clients, split = split_members(members, num_classes, c.clients, c.partition, c.alpha, seed)
    except ValueError as e:
        raise BenchError(f"fedavg-gan: {e}") from None
    # ---- from here on the members are read only by the clients' local steps (inside DP-FedAvg) ----
    shape = tuple(clients[0].x.shape[1:])
    seed_everything(seed)
    q = c.expected_clients_per_round / c.clients
    private = not math.isinf(epsilon)
    z = calibrate_poisson_gaussian(float(epsilon), float(delta), q, c.rounds, c.accountant) if private else 0.0
    G = seeded_init(seed * 6007 + 1, lambda: CondDCGANGenerator(shape[0], shape[-1], num_classes, c.z_dim, c.gf_dim,
                                                                 c.gfc_dim)).to(device)
    D = seeded_init(seed * 6007 + 2, lambda: CondDiscriminator(shape[0], shape[-1], num_classes, c.df_dim)).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=c.lr_g, betas=(c.beta1, 0.999))
    z_rng = torch.Generator().manual_seed(seed * 6007 + 3)  # the server's latents and labels
    betas = (c.beta1, 0.999)

    def local_fn(Dl, data: Split, g: torch.Generator, layout) -> None:
        """A client's local discriminator steps against the broadcast G (public), on its own data."""
        opt = torch.optim.Adam(Dl.parameters(), lr=c.lr_d, betas=betas)
        n = len(data)
        G.eval()  # the broadcast generator: inference-mode BatchNorm, no state change
        for _ in range(c.local_steps):
            b = torch.randint(0, n, (min(c.batch_size, n),), generator=g)
            xr, yr = data.x[b].to(device).contiguous(memory_format=layout), data.y[b].to(device)
            with torch.no_grad():
                xf = G(G.sample_latent(len(b), g).to(device), yr).contiguous(memory_format=layout)
            loss = _bce(Dl(xr, yr), 1.0) + _bce(Dl(xf, yr), 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    g_hist = []

    def after_round(r: int) -> None:
        """The server's generator steps through the new D (no client data)."""
        for p in D.parameters():
            p.requires_grad_(False)
        G.train()
        for _ in range(c.g_steps):
            y = torch.randint(0, num_classes, (c.batch_size,), generator=z_rng).to(device)
            loss = _bce(D(G(G.sample_latent(c.batch_size, z_rng).to(device), y), y), 1.0)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
        for p in D.parameters():
            p.requires_grad_(True)
        if r % 50 == 49 or r == c.rounds - 1:
            g_hist.append((r + 1, float(loss.detach())))  # a function of the DP discriminator
            log(f"fedavg-gan: round {r + 1}/{c.rounds}, {time.time() - t0:.0f}s")

    dp = None
    if private:
        dp = ClientDP(sample_rate=q, clip=c.clip, noise_multiplier=z, expected_clients=c.expected_clients_per_round,
                      server_lr=c.server_lr)
    log(f"fedavg-gan: {c.clients} clients, q = {q:.4g}, {c.rounds} rounds, clip {c.clip:g}, noise multiplier "
        f"{z:.4g}")
    t0 = time.time()
    D, hist = run_fedavg(D, clients, rounds=c.rounds, local_epochs=1, batch_size=c.batch_size, lr=c.lr_d,
                         clients_per_round=None if private else max(1, round(c.expected_clients_per_round)), dp=dp,
                         seed=seed, device=device, progress=progress, local_fn=local_fn, after_round=after_round)
    spent = poisson_gaussian_epsilon(z, q, c.rounds, float(delta), c.accountant) if private else math.inf
    return {"generator": G.cpu().eval(), "noise_multiplier": z, "sample_rate": q, "epsilon": spent,
            "participants": hist["participants"], "g_loss": g_hist, "split": split,
            "clipped_fraction": hist.get("clipped_fraction", []), "seconds": time.time() - t0}


@register_defense("fedavg-gan")
class FedAvgGAN(Defense):
    """DP-FedAvg-GAN: the discriminator trained by DP-FedAvg across clients, the generator on the
    server through it; client-level DP; student classifier on its samples."""

    Config = FedAvgGANConfig
    privacy_unit = "client"
    paper = ("Augenstein, McMahan, Ramage, Ramaswamy, Kairouz, Chen, Mathews, Agüera y Arcas, Generative Models for "
             "Effective ML on Private, Decentralized Datasets, ICLR 2020")

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        out = train_fedavg_gan(task.members, task.num_classes, c, epsilon=ctx.epsilon, delta=ctx.delta,
                               seed=ctx.seed, device=ctx.device, progress=ctx.progress, log=ctx.log)
        private = not math.isinf(ctx.epsilon)
        if private:
            privacy = PrivacyReport(
                out["epsilon"], ctx.delta, "client", f"{c.accountant.upper()} (dp_accounting)",
                "DP-FedAvg on the discriminator (Poisson client sampling, per-client delta clipping, Gaussian noise); "
                "the generator is trained on the server through it: post-processing, as the synthetic set and the "
                "student",
                {"noise_multiplier": out["noise_multiplier"], "sample_rate": out["sample_rate"], "rounds": c.rounds,
                 "clip": c.clip, "clients": c.clients, "expected_clients_per_round": c.expected_clients_per_round,
                 "target_epsilon": ctx.epsilon, "neighbouring": "add/remove one client's whole data",
                 "example_level": "not accounted (one member's change moves its client's clipped delta by up to "
                                  "2 S: replace-one-client)"},
                f"{STUDENT_SELECTION}; fixed GAN settings, the generator after the last round")
        else:
            privacy = PrivacyReport.non_private()
        return generator_release(
            ctx, out["generator"], c, privacy,
            generator_history={"g_loss": out["g_loss"], "participants": out["participants"]},
            info={"generator_seconds": out["seconds"], "partition": c.partition,
                  "alpha": c.alpha if c.partition == "dirichlet" else None,
                  "simulation": {"clients": out["split"], "clipped_fraction": out["clipped_fraction"],
                                 "note": "noise-free statistics of the members for the experimenter; not part of "
                                         "the released model"}})
