"""``g-pate``: G-PATE (Long, Wang, Yang, Kailkhura, Zhang, Gunter, Li, "G-PATE: Scalable
Differentially Private Data Generator via Private Aggregation of Teacher Discriminators",
NeurIPS 2021), with a student classifier trained on its samples as the DP data generators of the
DataLens / DPSD tables are evaluated.

The private members are split into ``teachers`` disjoint shards (``partition: record``: a
member's shard is a seeded function of its own dataset row, so adding or removing it changes one
shard). Each generator step:

1. every teacher discriminator takes ``d_step`` GAN steps on its own shard against fakes of the
   current generator (one fake per shard slot, with the slot's label, from latents that do not
   depend on the data; ``pretrain_teacher`` steps before the first generator step);
2. ``batch_size`` images x_j = G(z_j, y_j) with random labels are the queries; teacher i's vote
   on x_j is its gradient of the non-saturating generator loss w.r.t. x_j, **projected** onto a
   fresh random Gaussian basis of ``proj_dim`` dimensions (entries N(0, 1/proj_dim), as
   scikit-learn's GaussianRandomProjection in the authors' code), each coordinate clipped to
   [-step_size, step_size] and discretised into ``nbins`` bins;
3. per image and projected coordinate, the teachers' bin votes go through PATE's
   **Confident-GNMax** (threshold ``thresh`` x teachers with noise ``sigma_thresh``, then the
   noisy argmax with noise ``sigma``); answered coordinates become bin centres, the rest 0, and
   the vector is projected back to image space;
4. the generator regresses each image onto image + aggregate (squared error), as DataLens (whose
   code derives from G-PATE's) does.

Privacy (unit ``example``, add/remove one member): the member is in one shard, so it may move that
one teacher's vote on every coordinate query. Each query is accounted **data-independently** as a
Gaussian mechanism (:func:`bench.lib.synthetic.aggregation.confident_gnmax_noise_multiplier`:
threshold test and answer both charged, answered or not) and the queries compose in
dp_accounting's RDP accountant; the run length is fixed before training by the budget
(``steps`` = the most generator steps of ``batch_size`` x ``proj_dim`` queries that fit in
epsilon). The paper instead charges PATE's **data-dependent** bound (small when the teachers
agree), whose value is a function of the private votes and cannot be released without smooth
sensitivity; the published numbers use it, so this row runs far fewer generator steps than the
paper's at the same nominal epsilon (docs/methods/g-pate.md). The projection bases, latents,
labels and the noise are public randomness; the teachers are inside the mechanism; the generator,
the synthetic set and the student classifier are post-processing. epsilon = inf runs
``steps_at_inf`` steps with the noise-free votes (the non-private reference).

Settings per tabulated epsilon (the authors' README commands for MNIST, :data:`PAPER_SETTINGS`):
eps 1: 4 000 teachers, sigma 1 000, sigma_thresh 3 000, z_dim 50; eps 10: 2 000 teachers,
sigma 100, sigma_thresh 600, z_dim 100; both step_size 1e-4, batch 64, and the code defaults
proj_dim 10, 10 bins, thresh 0.5, d_step 1, Adam 1e-3 / beta1 0.5. Scale-down (size, not
substance, as DataLens' row): the teachers are the stacked class-conditional maxout
discriminators of :mod:`bench.lib.synthetic.teachers` (``teacher: conv`` for the one-conv
variant) instead of DCGAN conv nets with BN.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import gaussian_rdp_epsilon, max_gaussian_compositions
from bench.lib.seeding import seeded_init
from bench.lib.synthetic import row_universe
from bench.lib.synthetic.aggregation import (
    back_project,
    confident_gnmax,
    confident_gnmax_noise_multiplier,
    projected_bin_votes,
)
from bench.lib.synthetic.gan import CondDCGANGenerator
from bench.lib.synthetic.partition import padded_shards
from bench.lib.synthetic.release import STUDENT_SELECTION, generator_release
from bench.lib.synthetic.teachers import ConvTeacherEnsemble, LinearTeacherEnsemble, TeacherEnsemble
from bench.lib.tasks import Split
from bench.lib.train import seed_everything

#: the authors' README commands for MNIST (AI-secure/G-PATE): eps -> settings
PAPER_SETTINGS = {
    1.0: {"teachers": 4000, "sigma": 1000.0, "sigma_thresh": 3000.0, "z_dim": 50},
    10.0: {"teachers": 2000, "sigma": 100.0, "sigma_thresh": 600.0, "z_dim": 100},
}


def paper_setting(epsilon: float) -> dict:
    """The README setting of the tabulated epsilon nearest to ``epsilon`` in log scale (eps = inf
    takes the eps 10 row), with its source."""
    if math.isinf(epsilon):
        key = 10.0
    else:
        key = min(PAPER_SETTINGS, key=lambda e: abs(math.log(e) - math.log(max(epsilon, 1e-9))))
    return {**PAPER_SETTINGS[key], "source": f"G-PATE README, MNIST eps={key:g} command"}


@dataclass
class GPATEConfig:
    #: None = the README setting of the nearest tabulated epsilon (:func:`paper_setting`)
    teachers: Optional[int] = None
    sigma: Optional[float] = None
    sigma_thresh: Optional[float] = None
    z_dim: Optional[int] = None
    #: Confident-GNMax threshold as a fraction of the teachers
    thresh: float = 0.5
    #: random-projection dimensions per image (the code's pca_dim) and discretisation
    proj_dim: int = 10
    nbins: int = 10
    #: clip range of a projected coordinate, and the bins' span (the code's step_size)
    step_size: float = 1e-4
    #: generated images (queries) per generator step
    batch_size: int = 64
    d_step: int = 1
    pretrain_teacher: int = 10
    lr: float = 1e-3
    beta1: float = 0.5
    partition: Literal["record", "balanced"] = "record"
    #: teacher discriminator (CPU scale-down; the family's stacked ensembles): "linear" (maxout with
    #: ``teacher_pieces`` pieces per class, DataLens' default here), "mlp" or "conv"
    teacher: Literal["linear", "mlp", "conv"] = "linear"
    teacher_pieces: int = 4
    teacher_hidden: int = 16
    teacher_filters: int = 4
    teacher_weight_decay: float = 20.0
    teacher_chunk: int = 500
    gf_dim: int = 64
    gfc_dim: int = 1024
    #: generator steps at epsilon = inf (no noise)
    steps_at_inf: int = 500
    #: optional cap on generator steps (tests); None = as many as the budget pays for
    max_steps: Optional[int] = None
    # --- the synthetic set and its student
    n_synthetic: int = 100000
    synthetic_val_frac: float = 0.1
    student_arch: str = "cnn"
    student_epochs: int = 3
    student_lr: float = 1e-3
    student_batch_size: int = 128
    student_optimizer: str = "adam"

    def validate(self):
        if min(self.proj_dim, self.nbins, self.batch_size, self.d_step, self.teacher_pieces, self.teacher_hidden,
               self.teacher_filters, self.teacher_chunk, self.gf_dim, self.gfc_dim, self.steps_at_inf,
               self.student_epochs, self.student_batch_size) < 1 or self.n_synthetic < 10:
            raise BenchError("g-pate: proj_dim, nbins, batch_size, d_step, teacher sizes, gf_dim, gfc_dim, "
                             "steps_at_inf, student_epochs and student_batch_size must be >= 1, n_synthetic >= 10")
        if self.teachers is not None and self.teachers < 1:
            raise BenchError("g-pate: teachers must be >= 1")
        if (self.sigma is not None and self.sigma <= 0) or (self.sigma_thresh is not None and self.sigma_thresh <= 0):
            raise BenchError("g-pate: sigma and sigma_thresh must be > 0")
        if not 0 < self.thresh <= 1 or not self.step_size > 0:
            raise BenchError("g-pate: thresh must be in (0, 1] and step_size > 0")
        if self.pretrain_teacher < 0 or self.teacher_weight_decay < 0:
            raise BenchError("g-pate: pretrain_teacher and teacher_weight_decay must be >= 0")
        if not 0 < self.synthetic_val_frac < 1:
            raise BenchError("g-pate: synthetic_val_frac must be in (0, 1)")


def train_g_pate(members: Split, num_classes: int, c: GPATEConfig, *, epsilon: float, delta: float, seed: int,
                 device="cpu", universe=None, progress=lambda it, **k: it, log=lambda m: None) -> dict:
    """Teachers, projected Confident-GNMax aggregation and the generator; returns the generator
    (eval mode) and the accounting record."""
    ps = paper_setting(epsilon)
    N = int(c.teachers or ps["teachers"])
    sigma = float(c.sigma if c.sigma is not None else ps["sigma"])
    sigma_t = float(c.sigma_thresh if c.sigma_thresh is not None else ps["sigma_thresh"])
    z_dim = int(c.z_dim or ps["z_dim"])
    shape = tuple(members.x.shape[1:])
    dim = int(np.prod(shape))
    if len(members) < N:
        raise BenchError(f"g-pate: {len(members)} members cannot fill {N} teachers")
    private = not math.isinf(epsilon)
    B, P = int(c.batch_size), int(c.proj_dim)
    per_step = B * P  # coordinate queries per generator step
    if private:
        z_mult = confident_gnmax_noise_multiplier(sigma, sigma_t)
        budget = max_gaussian_compositions(z_mult, float(epsilon), float(delta))
        steps = budget // per_step
    else:
        sigma = sigma_t = 0.0
        z_mult, budget, steps = math.inf, None, int(c.steps_at_inf)
    if c.max_steps is not None:
        steps = min(steps, int(c.max_steps))
    if steps <= 0:
        raise BenchError(f"g-pate: epsilon {epsilon} does not pay for one generator step of {per_step} queries "
                         f"(noise multiplier {z_mult:.4g})")
    rows = members.index if members.index is not None else np.arange(len(members))
    pos, mask, M = padded_shards(np.asarray(rows), members.y.numpy(), N, c.partition, seed, universe)
    pos_t, mask_t = torch.from_numpy(pos), torch.from_numpy(mask).to(device)
    yr = members.y[pos_t].to(device)
    xall = torch.empty(N, 2 * M, dim, device=device)  # real rows, then the step's fakes
    xall[:, :M] = members.x.reshape(len(members), -1).float()[pos_t].to(device)
    # ---- from here on the members are read only through the teachers (inside the mechanism) ----

    seed_everything(seed)
    t_rng = torch.Generator().manual_seed(seed * 7877 + 1)  # teacher init
    z_rng = torch.Generator().manual_seed(seed * 7877 + 2)  # latents and labels
    n_rng = torch.Generator().manual_seed(seed * 7877 + 3)  # projections and vote noise
    G = seeded_init(seed * 7877 + 4, lambda: CondDCGANGenerator(shape[0], shape[-1], num_classes, z_dim, c.gf_dim,
                                                                 c.gfc_dim)).to(device)
    if c.teacher == "linear":
        T = LinearTeacherEnsemble(N, dim, num_classes, t_rng, c.lr, c.beta1, device, input_norm=False,
                                  weight_decay=c.teacher_weight_decay, pieces=c.teacher_pieces)
    elif c.teacher == "conv":
        T = ConvTeacherEnsemble(N, shape, num_classes, t_rng, c.lr, c.beta1, device, c.teacher_filters,
                                c.teacher_weight_decay)
    else:
        T = TeacherEnsemble(N, dim, num_classes, c.teacher_hidden, t_rng, c.lr, c.beta1, device, batch_norm=False,
                            input_norm=False, projection=True, weight_decay=c.teacher_weight_decay)
    g_opt = torch.optim.Adam(G.parameters(), lr=c.lr, betas=(c.beta1, 0.999))
    K = num_classes
    log(f"g-pate: {N} teachers (slot capacity {M}), sigma {sigma:g}, sigma_thresh {sigma_t:g}, thresh {c.thresh}, "
        f"{steps} generator steps x {B} images x {P} projected coordinates = {steps * per_step} queries "
        f"(budget {budget}, noise multiplier {z_mult:.4g})")
    hist = {"answered_frac": [], "epsilon": []}
    t0 = time.time()
    for step in progress(range(steps), desc="g-pate steps"):
        G.train()
        with torch.no_grad():  # one fake per slot, with the slot's label, from data-independent latents
            z = G.sample_latent(M, z_rng).to(device)
            allc = G(z.repeat_interleave(K, 0), torch.arange(K, device=device).repeat(M)).reshape(M, K, dim)
        xall[:, M:] = allc[torch.arange(M, device=device).view(1, M).expand(N, M), yr]
        for _ in range(c.pretrain_teacher if (step == 0 and c.pretrain_teacher > 0) else c.d_step):
            T.train_step(xall, yr, mask_t)  # the teachers' loss is a noise-free statistic: not kept
        yq = torch.randint(0, K, (B,), generator=z_rng).to(device)
        img = G(G.sample_latent(B, z_rng).to(device), yq).reshape(B, dim)
        proj = (torch.randn(dim, P, generator=n_rng) / math.sqrt(P)).to(device)
        counts = projected_bin_votes(T, img, yq, proj, clip=c.step_size, nbins=c.nbins, chunk=c.teacher_chunk)
        ans = confident_gnmax(counts, N, thresh=c.thresh, sigma=sigma, sigma_thresh=sigma_t, generator=n_rng)
        agg = back_project(ans, proj, clip=c.step_size, nbins=c.nbins)
        hist["answered_frac"].append(float((ans >= 0).float().mean()))  # a function of the DP answers
        loss = ((img.detach() + agg - img) ** 2).sum()
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        if step % 10 == 9 or step == steps - 1:
            if private:
                hist["epsilon"].append((step + 1, gaussian_rdp_epsilon([(z_mult, (step + 1) * per_step)], delta)))
            log(f"g-pate: step {step + 1}/{steps}, {time.time() - t0:.0f}s, answered "
                f"{np.mean(hist['answered_frac'][-10:]):.3f}")
    queries = steps * per_step
    spent = gaussian_rdp_epsilon([(z_mult, queries)], delta) if private else math.inf
    # the teachers are returned for tests and diagnostics only: never released
    return {"generator": G.cpu().eval(), "steps": steps, "queries": queries, "budget_queries": budget,
            "noise_multiplier": z_mult, "epsilon": spent, "history": hist, "shard_capacity": M, "teachers": T,
            "setting": {"teachers": N, "sigma": sigma, "sigma_thresh": sigma_t, "z_dim": z_dim},
            "setting_source": ps["source"]}


@register_defense("g-pate")
class GPATE(Defense):
    """G-PATE: teacher discriminators on disjoint shards, their projected and discretised image
    gradients aggregated by Confident-GNMax, the generator trained on the aggregate; student
    classifier on its samples."""

    Config = GPATEConfig
    privacy_unit = "example"
    paper = ("Long, Wang, Yang, Kailkhura, Zhang, Gunter, Li, G-PATE: Scalable Differentially Private Data "
             "Generator via Private Aggregation of Teacher Discriminators, NeurIPS 2021")

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        t0 = time.time()
        out = train_g_pate(task.members, task.num_classes, c, epsilon=ctx.epsilon, delta=ctx.delta, seed=ctx.seed,
                           device=ctx.device, universe=row_universe(task), progress=ctx.progress, log=ctx.log)
        t_gen = time.time() - t0
        s = out["setting"]
        private = not math.isinf(ctx.epsilon)
        privacy = PrivacyReport(
            out["epsilon"], ctx.delta, "example",
            "RDP (dp_accounting), data-independent" if private else "none (noise-free votes)",
            "Confident-GNMax on the discretised random projections of disjoint teachers' image gradients, one query "
            "per generated image and projected coordinate; generator, synthetic set and student are post-processing"
            if private else "none",
            {"noise_multiplier": out["noise_multiplier"], "sigma": s["sigma"], "sigma_thresh": s["sigma_thresh"],
             "thresh": c.thresh, "teachers": s["teachers"], "proj_dim": c.proj_dim, "nbins": c.nbins,
             "queries": out["queries"], "generator_steps": out["steps"], "queries_per_step": c.batch_size * c.proj_dim,
             "budget_queries": out["budget_queries"], "target_epsilon": ctx.epsilon, "partition": c.partition,
             "setting": out["setting_source"],
             "neighbouring": "add/remove one member (changes one teacher's shard: one vote per coordinate query)",
             "rdp_per_query": "a / (2 sigma_thresh^2) + a / sigma^2 (threshold test and answer, always charged)"},
            f"{STUDENT_SELECTION}; fixed GAN settings, last iterate of the generator")
        return generator_release(ctx, out["generator"], c, privacy, generator_history=out["history"],
                                 gspec={"z_dim": s["z_dim"], "gf_dim": c.gf_dim, "gfc_dim": c.gfc_dim},
                                 info={"generator_seconds": t_gen, "shard_capacity": out["shard_capacity"],
                                       "setting_source": out["setting_source"]})
