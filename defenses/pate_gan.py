"""``pate-gan``: PATE-GAN (Jordon, Yoon & van der Schaar, "PATE-GAN: Generating Synthetic Data
with Differential Privacy Guarantees", ICLR 2019), conditional, with a student classifier trained
on its samples as the DP data generators of the DataLens / DPSD tables are evaluated.

The private members are split into ``teachers`` disjoint shards (``partition: record``: a member's
shard is a seeded function of its own dataset row, so adding or removing it changes one shard).
Each step of Algorithm 1:

1. every teacher discriminator takes ``teacher_steps`` GAN steps on its own shard (real) against
   fakes of the current generator (one fake per shard slot, with that slot's label, from latents
   that do not depend on the data);
2. ``student_steps`` times, ``batch_size`` fresh fakes u_j = G(z_j, y_j) are labelled by the
   **PATE mechanism**: n_1 = number of teachers that call (u_j, y_j) real (D_i > 0), n_0 = N - n_1,
   Laplace(b) noise added to each count, label r_j = 1 if the noisy n_1 exceeds the noisy n_0; the
   student discriminator S (which never sees a real example) takes one BCE step on (u_j, r_j);
3. the generator takes one step against S (non-saturating loss; the paper writes the saturating
   log(1 - S) form).

Privacy (unit ``example``, add/remove one member): the member is in one shard, so it may flip
that one teacher's vote on every query: the vote histogram (n_0, n_1) moves by (+1, -1) or
(-1, +1), i.e. each query releases two independent sensitivity-1 Laplace counts. A run of Q
queries is accounted as 2Q compositions of the Laplace mechanism with noise multiplier b by
dp_accounting's PLD accountant (tight for Laplace; ``accountant: rdp`` for the RDP bound) -
**data-independent**: the paper's moments accountant uses PATE's data-dependent bound, whose
epsilon is itself a function of the private votes and cannot be released without smooth
sensitivity, so here the noise b is calibrated before training to spend the target epsilon in the
planned ``steps`` x ``student_steps`` x ``batch_size`` queries (the paper stops when its running
bound reaches the target). The teachers are inside the mechanism; the student discriminator, the
generator, the synthetic set and the student classifier are post-processing. The number of
teachers, the shard capacity, the queries and every random draw are public quantities. epsilon =
inf labels the queries with the noise-free vote (the non-private reference).

Scale-down and choices (docs/methods/pate-gan.md): the teachers are the stacked conditional MLP
discriminators of the family (:class:`bench.lib.synthetic.teachers.TeacherEnsemble`, one batched
matmul for all teachers) instead of separate networks; the generator is the conditional DCGAN
generator (``datalens-generator``) at ``gf_dim`` 32 / ``gfc_dim`` 256; the student discriminator
the small conditional conv net of :class:`bench.lib.synthetic.gan.CondDiscriminator`. Labels
condition every player (the paper's tabular generator has none; the image tables evaluate a
classifier trained on labelled samples).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import calibrate_laplace, laplace_epsilon
from bench.lib.seeding import seeded_init
from bench.lib.synthetic import row_universe
from bench.lib.synthetic.gan import CondDCGANGenerator, CondDiscriminator
from bench.lib.synthetic.partition import padded_shards
from bench.lib.synthetic.release import STUDENT_SELECTION, generator_release
from bench.lib.synthetic.teachers import LinearTeacherEnsemble, TeacherEnsemble
from bench.lib.tasks import Split
from bench.lib.train import seed_everything


@dataclass
class PATEGANConfig:
    #: teacher discriminators (disjoint shards of the members)
    teachers: int = 2000
    #: teacher discriminator: ``mlp`` (conditional one-hidden-layer MLP, ``teacher_hidden`` units)
    #: or ``linear`` (class-conditional maxout with ``teacher_pieces`` pieces, as DataLens')
    teacher: Literal["mlp", "linear"] = "mlp"
    teacher_hidden: int = 16
    teacher_pieces: int = 4
    teacher_lr: float = 1e-3
    #: decoupled weight decay of the teachers (AdamW; 0 = Adam)
    teacher_weight_decay: float = 0.0
    #: teacher GAN steps per iteration (n_T) and before the first one
    teacher_steps: int = 1
    pretrain_teacher: int = 10
    partition: Literal["record", "balanced"] = "record"
    #: iterations of Algorithm 1
    steps: int = 1000
    #: student-discriminator steps per iteration (n_S), each on ``batch_size`` fresh queries
    student_steps: int = 1
    #: queries (generated samples labelled by the noisy teacher vote) per student step; also the
    #: generator's batch
    batch_size: int = 64
    #: ``pld`` (dp_accounting's PLD accountant, tight for Laplace) or ``rdp``
    accountant: Literal["pld", "rdp"] = "pld"
    lr_d: float = 2e-4
    lr_g: float = 2e-4
    beta1: float = 0.5
    z_dim: int = 50
    gf_dim: int = 32
    gfc_dim: int = 256
    df_dim: int = 32
    # --- the synthetic set and its student
    n_synthetic: int = 60000
    student_arch: str = "cnn"
    student_epochs: int = 5
    student_lr: float = 1e-3
    student_batch_size: int = 128
    student_optimizer: str = "adam"
    synthetic_val_frac: float = 0.1

    @property
    def queries(self) -> int:
        return self.steps * self.student_steps * self.batch_size

    def validate(self):
        if min(self.teachers, self.teacher_hidden, self.teacher_steps, self.steps, self.student_steps,
               self.batch_size, self.z_dim, self.gf_dim, self.gfc_dim, self.df_dim, self.n_synthetic,
               self.student_epochs, self.student_batch_size) < 1:
            raise BenchError("pate-gan: teachers, teacher_hidden, teacher_steps, steps, student_steps, batch_size, "
                             "z_dim, gf_dim, gfc_dim, df_dim, n_synthetic, student_epochs and student_batch_size "
                             "must be >= 1")
        if self.teacher not in ("mlp", "linear") or self.teacher_pieces < 1 or self.teacher_weight_decay < 0:
            raise BenchError("pate-gan: teacher must be 'mlp' or 'linear', teacher_pieces >= 1, "
                             "teacher_weight_decay >= 0")
        if self.pretrain_teacher < 0:
            raise BenchError("pate-gan: pretrain_teacher must be >= 0")
        if not (self.teacher_lr > 0 and self.lr_d > 0 and self.lr_g > 0 and self.student_lr > 0):
            raise BenchError("pate-gan: teacher_lr, lr_d, lr_g and student_lr must be > 0")
        if not 0 <= self.beta1 < 1 or not 0 < self.synthetic_val_frac < 1:
            raise BenchError("pate-gan: beta1 must be in [0, 1) and synthetic_val_frac in (0, 1)")
        if self.accountant not in ("pld", "rdp"):
            raise BenchError("pate-gan: accountant must be 'pld' or 'rdp'")


def laplace(shape, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Laplace(0, ``scale``) draws from a seeded generator (difference of two exponentials)."""
    e = torch.empty(2, *shape).exponential_(generator=generator)
    return scale * (e[0] - e[1])


def noisy_vote(real_votes: torch.Tensor, n_teachers: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """PATE's label of each query: 1 where n_1 + Lap(b) > n_0 + Lap(b), n_1 = ``real_votes``,
    n_0 = ``n_teachers`` - n_1 (``scale`` 0: the noise-free majority, ties to "fake")."""
    n1 = real_votes.float()
    n0 = n_teachers - n1
    if scale > 0:
        noise = laplace((2, len(n1)), scale, generator)
        n1, n0 = n1 + noise[0], n0 + noise[1]
    return (n1 > n0).float()


def train_pate_gan(members: Split, num_classes: int, c: PATEGANConfig, *, epsilon: float, delta: float, seed: int,
                   device="cpu", universe=None, progress=lambda it, **k: it, log=lambda m: None) -> dict:
    """Teachers, PATE-labelled student discriminator and generator; returns the generator (eval
    mode) and the accounting record."""
    N = c.teachers
    shape = tuple(members.x.shape[1:])
    dim = int(np.prod(shape))
    rows = members.index if members.index is not None else np.arange(len(members))
    if len(members) < N:
        raise BenchError(f"pate-gan: {len(members)} members cannot fill {N} teachers")
    private = not math.isinf(epsilon)
    Q = c.queries
    # the noise is fixed before any member is read: a function of (epsilon, delta, queries) only
    scale = calibrate_laplace(float(epsilon), float(delta), 2 * Q, c.accountant) if private else 0.0

    pos, mask, M = padded_shards(np.asarray(rows), members.y.numpy(), N, c.partition, seed, universe)
    pos_t, mask_t = torch.from_numpy(pos), torch.from_numpy(mask).to(device)
    yr = members.y[pos_t].to(device)
    xall = torch.empty(N, 2 * M, dim, device=device)  # real rows, then the step's fakes
    xall[:, :M] = members.x.reshape(len(members), -1).float()[pos_t].to(device)
    # ---- from here on the members are read only through the teachers (inside the mechanism) ----

    seed_everything(seed)
    t_rng = torch.Generator().manual_seed(seed * 7907 + 1)  # teacher init
    z_rng = torch.Generator().manual_seed(seed * 7907 + 2)  # latents and labels
    n_rng = torch.Generator().manual_seed(seed * 7907 + 3)  # vote noise
    G = seeded_init(seed * 7907 + 4, lambda: CondDCGANGenerator(shape[0], shape[-1], num_classes, c.z_dim, c.gf_dim,
                                                                 c.gfc_dim)).to(device)
    S = seeded_init(seed * 7907 + 5, lambda: CondDiscriminator(shape[0], shape[-1], num_classes, c.df_dim)).to(device)
    if c.teacher == "mlp":
        T = TeacherEnsemble(N, dim, num_classes, c.teacher_hidden, t_rng, c.teacher_lr, c.beta1, device,
                            batch_norm=False, input_norm=False, projection=True, weight_decay=c.teacher_weight_decay)
    else:
        T = LinearTeacherEnsemble(N, dim, num_classes, t_rng, c.teacher_lr, c.beta1, device, input_norm=False,
                                  weight_decay=c.teacher_weight_decay, pieces=c.teacher_pieces)
    opt_g = torch.optim.Adam(G.parameters(), lr=c.lr_g, betas=(c.beta1, 0.999))
    opt_s = torch.optim.Adam(S.parameters(), lr=c.lr_d, betas=(c.beta1, 0.999))
    B, K = c.batch_size, num_classes
    log(f"pate-gan: {N} teachers (slot capacity {M}), {c.steps} steps x {c.student_steps} x {B} = {Q} queries, "
        f"Laplace scale {scale:.4g} ({c.accountant.upper()})")
    hist = {"real_label_frac": [], "g_loss": [], "epsilon": []}
    t0 = time.time()
    for step in progress(range(c.steps), desc="pate-gan steps"):
        G.train()
        with torch.no_grad():  # one fake per slot, with the slot's label, from data-independent latents
            z = G.sample_latent(M, z_rng).to(device)
            allc = G(z.repeat_interleave(K, 0), torch.arange(K, device=device).repeat(M)).reshape(M, K, dim)
        xall[:, M:] = allc[torch.arange(M, device=device).view(1, M).expand(N, M), yr]
        for _ in range(c.pretrain_teacher if (step == 0 and c.pretrain_teacher > 0) else c.teacher_steps):
            T.train_step(xall, yr, mask_t)  # the teachers' loss is a noise-free statistic: not kept
        for _ in range(c.student_steps):
            yq = torch.randint(0, K, (B,), generator=z_rng).to(device)
            with torch.no_grad():
                u = G(G.sample_latent(B, z_rng).to(device), yq)
                votes = (T.logits(u.reshape(B, dim), yq) > 0).sum(0)
            r = noisy_vote(votes.cpu(), N, scale, n_rng).to(device)
            hist["real_label_frac"].append(float(r.mean()))  # a function of the DP labels
            loss_s = F.binary_cross_entropy_with_logits(S(u, yq), r)
            opt_s.zero_grad(set_to_none=True)
            loss_s.backward()
            opt_s.step()
        yg = torch.randint(0, K, (B,), generator=z_rng).to(device)
        logits = S(G(G.sample_latent(B, z_rng).to(device), yg), yg)
        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        hist["g_loss"].append(float(loss_g.detach()))
        if step % 100 == 99:
            log(f"pate-gan: step {step + 1}/{c.steps}, {time.time() - t0:.0f}s, "
                f"real labels {np.mean(hist['real_label_frac'][-100 * c.student_steps:]):.2f}")
    spent = laplace_epsilon(scale, 2 * Q, delta, c.accountant) if private else math.inf
    hist["epsilon"].append((Q, spent))
    # the teachers are returned for tests and diagnostics only: never released
    return {"generator": G.cpu().eval(), "scale": scale, "queries": Q, "epsilon": spent, "shard_capacity": M,
            "history": hist, "teachers": T}


@register_defense("pate-gan")
class PATEGAN(Defense):
    """PATE-GAN: teacher discriminators on disjoint shards, a student discriminator trained on
    Laplace-noised teacher votes, the generator trained against the student; student classifier
    on its samples."""

    Config = PATEGANConfig
    privacy_unit = "example"
    paper = ("Jordon, Yoon, van der Schaar, PATE-GAN: Generating Synthetic Data with Differential Privacy "
             "Guarantees, ICLR 2019")

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        t0 = time.time()
        out = train_pate_gan(task.members, task.num_classes, c, epsilon=ctx.epsilon, delta=ctx.delta, seed=ctx.seed,
                             device=ctx.device, universe=row_universe(task), progress=ctx.progress, log=ctx.log)
        t_gen = time.time() - t0
        private = not math.isinf(ctx.epsilon)
        privacy = PrivacyReport(
            out["epsilon"], ctx.delta, "example",
            f"{c.accountant.upper()} (dp_accounting), data-independent" if private else "none (noise-free votes)",
            "PATE: Laplace noise on the two vote counts of disjoint teacher discriminators, one query per "
            "generated sample; the student discriminator, generator, synthetic set and student are post-processing"
            if private else "none",
            {"laplace_scale": out["scale"], "l1_sensitivity_per_count": 1, "counts_per_query": 2,
             "queries": out["queries"], "teachers": c.teachers, "steps": c.steps, "student_steps": c.student_steps,
             "batch_size": c.batch_size, "target_epsilon": ctx.epsilon, "partition": c.partition,
             "members": len(task.members),
             "neighbouring": "add/remove one member (changes one teacher's shard: one vote per query)"},
            f"{STUDENT_SELECTION}; fixed GAN settings, last iterate of the generator")
        return generator_release(ctx, out["generator"], c, privacy, generator_history=out["history"],
                                 info={"generator_seconds": t_gen, "shard_capacity": out["shard_capacity"]})
