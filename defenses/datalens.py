"""``datalens``: DataLens (Wang, Wu, Long, Rimanic, Zhang, Li, "DataLens: Scalable Privacy Preserving
Training via Gradient Compression and Aggregation", CCS 2021; code ``AI-secure/DataLens``).

A PATE-style differentially private conditional GAN. The private members are split into
``teachers`` disjoint shards; every shard trains its own tiny conditional discriminator (all
teachers are one set of stacked parameter tensors, trained with batched matmuls, so thousands of
them cost a few tensor ops); the conditional generator is trained only through **TopAgg** on the
teachers' image-space gradients, one query per generated image:

1. teacher i computes g_i = -d L_G^(i) / d G(z, y) for the image (non-saturating GAN loss);
2. top-k coordinates of |g_i|, stochastic sign on them (P(+1) = 1/2 + g / 2b,
   b = min(max_j |g_ij|, ``max_grad``)): a vote vector in {-1, 0, +1}^d with exactly k non-zeros;
3. votes summed over teachers, N(0, sigma^2) added per coordinate;
4. threshold: +1 where the noisy sum > beta * teachers, -1 where < -beta * teachers, else 0;
5. the generator regresses onto ``G(z, y) + step_size * agg`` (squared error, Adam).

Privacy (unit ``example``, add/remove one member): one member is in one shard (``partition:
record`` assigns each member to a teacher by a seeded function of its own dataset row, so adding
or removing it changes exactly one teacher's shard), so it changes one vote vector, whose L2
change is at most 2 sqrt(k): each query is a Gaussian mechanism with noise multiplier
sigma / (2 sqrt(k)), i.e. RDP 2 k lambda / sigma^2 per query, data-independent. Queries compose
in dp_accounting's RDP accountant; training stops before the query that would exceed the target
epsilon. The teachers' own training, the generator and the synthetic data are post-processing.
The mechanism's structure is a function of public quantities only: the batch of queries per step
is the config's ``batch_size`` (not the code's min(30, n // teachers), which depends on the
private member count n), the step count follows from it and the budget, and the shards are padded
to the public slot capacity (:func:`bench.lib.synthetic.partition.shard_capacity`) rather than the
realised largest shard.

Release: the student classifier (``model``, trained on ``n_synthetic`` generated examples, epoch
selected on a **synthetic** validation split) and the conditional generator (``generator``).
``release.info["history"]`` holds the per-epoch synthetic-val accuracy and, as a diagnostic that
selects nothing, the per-epoch accuracy on the task's validation split; the paper's own protocol
(maximum test accuracy over student epochs) is computed outside ``fit`` by
:func:`paper_protocol_accuracy` (see docs/methods/datalens.md). The generator's history holds the
agreed dimensions of the noisy aggregate and the running epsilon; noise-free statistics of the
members (teacher losses, realised shard sizes) are neither released nor logged.

CPU scale-down (size, not substance; see docs/methods/datalens.md): teachers are class-conditional
maxout discriminators (``teacher_pieces`` linear pieces per class, one batched matmul for all
teachers) instead of DCGAN conv discriminators; the teacher count, top-k, sigma, beta, the
query-per-image accounting and the stopping rule are the paper's.

This file is the method (config, the DP training loop, the release and its privacy report); its
reusable machinery lives in the library: the stacked teacher discriminators
(:mod:`bench.lib.synthetic.teachers`), the conditional generator (:mod:`bench.lib.synthetic.gan`),
TopAgg (:mod:`bench.lib.synthetic.aggregation`), the shards (:mod:`bench.lib.synthetic.partition`)
and the RDP accountant (:mod:`bench.lib.accounting`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import calibrate_gaussian_scale, gaussian_rdp_epsilon, max_gaussian_compositions
from bench.lib.datasets.base import dataset_info
from bench.lib.models import Classifier, _flat_dim, register_arch
from bench.lib.synthetic import row_universe
from bench.lib.synthetic.aggregation import query_noise_multiplier, topagg
from bench.lib.synthetic.gan import CondDCGANGenerator
from bench.lib.synthetic.partition import padded_shards
from bench.lib.synthetic.release import (
    REAL_VAL_NOTE,
    STUDENT_SELECTION,
    generator_release,
    generator_student,
)
from bench.lib.synthetic.teachers import ConvTeacherEnsemble, LinearTeacherEnsemble, TeacherEnsemble
from bench.lib.tasks import Split
from bench.lib.train import seed_everything

#: the dataset whose DataLens table stands in for a dataset without one
FALLBACK_TABLE = "mnist"


def paper_table(dataset: str) -> tuple[dict, str]:
    """The dataset's DataLens table (``dataset_info(dataset).paper_settings["datalens"]``: the
    README settings of AI-secure/DataLens, epsilon -> (topk, sigma, thresh beta, z_dim)) and a note
    that is empty when the table is the dataset's own. A dataset without a DataLens table (the
    paper covers MNIST and Fashion-MNIST; e.g. ``digits``, ``cifar10``, or a hand-built task's
    unregistered name) gets **MNIST's table**, and the note says so: "MNIST's table (no DataLens
    setting for <dataset>)"; it is recorded in the setting's ``source``."""
    try:
        own = dataset_info(dataset).paper_settings.get("datalens")
    except BenchError:  # not a registered dataset (a task built by hand)
        own = None
    if own:
        return own, ""
    return (dataset_info(FALLBACK_TABLE).paper_settings["datalens"],
            f"MNIST's table (no DataLens setting for {dataset})")


def paper_setting(dataset: str, epsilon: float, delta: float = 1e-5) -> dict:
    """The TopAgg setting for ``epsilon`` from the dataset's table (:func:`paper_table`; a dataset
    without one explicitly falls back to MNIST's table, and ``source`` starts with "MNIST's table
    (no DataLens setting for <dataset>)"): the paper's README setting when ``epsilon`` is
    tabulated; otherwise top-k, beta and z_dim of the tabulated epsilon nearest in log scale, with
    sigma re-calibrated (library accountant) so that the same number of queries as in that
    tabulated setting spends exactly ``epsilon`` (same run length, noise matched to the budget).
    epsilon = inf: the largest tabulated epsilon's k and beta, no noise, its query count. ``table``
    names the dataset whose table was used."""
    table, note = paper_table(dataset)
    if math.isinf(epsilon):
        key = max(table)
    else:
        key = min(table, key=lambda e: abs(math.log(e) - math.log(epsilon)))
    k, sigma, beta, z_dim = table[key]
    ref_queries = max_gaussian_compositions(query_noise_multiplier(sigma, k), key, delta)
    out = {"topk": k, "sigma": sigma, "thresh": beta, "z_dim": z_dim, "source": f"paper setting for eps={key:g}",
           "reference_queries": ref_queries, "table": FALLBACK_TABLE if note else dataset}
    if math.isinf(epsilon):
        out.update(sigma=0.0, source=f"paper setting for eps={key:g} without noise")
    elif abs(epsilon - key) > 1e-9:
        out["sigma"] = calibrate_gaussian_scale(
            lambda sg: [(query_noise_multiplier(sg, k), ref_queries)], epsilon, delta, lo=1.0, hi=1e7)
        out["source"] = (f"k, beta, z_dim of the paper setting for eps={key:g}; sigma calibrated so that its "
                         f"{ref_queries} queries spend eps={epsilon:g}")
    if note:
        out["source"] = f"{note}: {out['source']}"
    return out


# ---------------------------------------------------------------------------------------------
# the student


@register_arch("datalens-student")
class DataLensStudent(Classifier):
    """The student of DataLens' ``evaluation/train-classifier-mnist.py`` (Keras): Conv(32, 3x3)
    ReLU -> MaxPool2 -> Dropout 0.2 -> Conv(64, 3x3) ReLU -> Dropout 0.25 -> Dense 64 ReLU -> Dense K
    (valid padding)."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, width=32, hidden=64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
            nn.Conv2d(width, 2 * width, 3), nn.ReLU(), nn.Dropout(0.25),
        )
        d = _flat_dim(self.features, in_channels, image_size)
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


# ---------------------------------------------------------------------------------------------
# the defense


@dataclass
class DataLensConfig:
    #: number of teachers (disjoint shards); the paper's 80 x 50 = 4000
    teachers: int = 4000
    #: TopAgg parameters and latent size; None = the paper's README setting for the dataset's
    #: tabulated epsilon (MNIST eps 1: k 200, sigma 5000, beta 0.7; eps 10: 300, 800, 0.2), see
    #: :func:`paper_setting` for other epsilons
    topk: Optional[int] = None
    sigma: Optional[float] = None
    thresh: Optional[float] = None
    z_dim: Optional[int] = None
    partition: Literal["record", "balanced"] = "record"
    #: queries (generated images) per generator step. DataLens' code uses min(30, n // teachers),
    #: which depends on the private member count n; here it is a fixed config value (12 = that
    #: rule at MNIST's 48 000 members and 4000 teachers, so the MNIST default is unchanged) and
    #: the mechanism's structure (batch, steps, queries) is independent of n
    batch_size: int = 12
    d_step: int = 2
    pretrain_teacher: int = 10
    max_grad: float = 1e-5
    #: alpha: the aggregated sign vector's step in image space
    step_size: float = 1e-3
    lr: float = 1e-3
    beta1: float = 0.5
    #: tiny teacher discriminator: "linear" (class-conditional maxout / logistic regression), "mlp",
    #: or "conv" (one 5x5 stride-2 convolution with ``teacher_filters`` maps, a per-class filter bias
    #: and a per-class linear head: the measurement of the conv-teacher scale-down, see docs)
    teacher: Literal["linear", "mlp", "conv"] = "linear"
    teacher_filters: int = 4
    teacher_hidden: int = 16
    #: maxout pieces per class of the "linear" teacher, D(x, y) = max_r V[:, y, r] . x + c[y, r]
    #: (1 = logistic regression, whose input gradient is the same direction for every image of a
    #: class; see docs/methods/datalens.md)
    teacher_pieces: int = 4
    #: per-image standardisation of the teachers' input (see docs: keeps the teachers from
    #: voting on global brightness, which drives the generator into saturation)
    teacher_input_norm: bool = False
    #: decoupled weight decay of the teachers (AdamW): forgets weights on pixels where real and
    #: fake no longer differ (a linear teacher's weight there gets no gradient and stays stale)
    teacher_weight_decay: float = 20.0
    #: projection term e_y . h in the teachers' score (class-specific gradients; the label enters
    #: the input and hidden layer as in DCGAN either way)
    teacher_projection: bool = True
    #: batch normalisation of the teachers' hidden layer (off: per-unit BN over a dozen rows
    #: removes most of the signal)
    teacher_bn: bool = False
    gf_dim: int = 64
    gfc_dim: int = 1024
    #: generator steps when epsilon = inf (no noise; None = as many as the largest tabulated
    #: epsilon's budget allows); with a finite epsilon the budget decides
    steps_at_inf: Optional[int] = None
    #: optional cap on generator steps (tests); None = run until the budget is spent
    max_steps: Optional[int] = None
    teacher_chunk: int = 1000
    #: synthetic set: size, share held out for student selection
    n_synthetic: int = 100000
    #: post-processing of the released generator's samples (the synthetic set, and what the
    #: generator attacks sample), no privacy cost: a 3x3 Gaussian blur of this sigma (pixels; 0 =
    #: off) against the transposed convolutions' checkerboard artifacts, then "autocontrast"
    #: (each image rescaled to the full [0, 1] range) or "none". At MNIST eps=1 the 159-step
    #: generator's images are faint (mean intensity 0.01-0.03, peak 0.2-0.3; real digits 0.13 and
    #: 1.0) and a student trained on them misreads real digits. Set on the real validation split
    #: over 3 seeds with student_epochs (docs/methods/datalens.md)
    synthetic_blur: float = 0.8
    synthetic_contrast: Literal["autocontrast", "none"] = "autocontrast"
    synthetic_val_frac: float = 0.1
    student_arch: str = "datalens-student"
    #: student length and learning rate, set on the real validation split (docs): the student's
    #: real accuracy falls as it fits the generator's artifacts, which the synthetic split cannot
    #: see (lr on seed 0; epochs with the synthetic post-processing, over seeds 0-2)
    student_epochs: int = 1
    student_lr: float = 1e-4
    student_batch_size: int = 256
    student_optimizer: Literal["adam", "sgd"] = "adam"

    def validate(self):
        if self.teachers <= 0 or self.batch_size <= 0 or self.n_synthetic < 10 or self.student_epochs <= 0:
            raise BenchError("datalens: teachers, batch_size, student_epochs must be positive, n_synthetic >= 10")
        if self.topk is not None and self.topk <= 0:
            raise BenchError("datalens: topk must be positive")
        if self.teacher_pieces < 1 or self.teacher_filters < 1:
            raise BenchError("datalens: teacher_pieces and teacher_filters must be >= 1")
        if not self.synthetic_blur >= 0:
            raise BenchError("datalens: synthetic_blur must be >= 0")
        if not 0 <= self.synthetic_val_frac < 1:
            raise BenchError("datalens: synthetic_val_frac must be in [0, 1)")


def train_generator(members: Split, num_classes: int, c: DataLensConfig, *, epsilon: float, delta: float,
                    dataset: str, seed: int, device="cpu", log=print, progress=lambda it, **k: it,
                    universe: Optional[int] = None, monitor=None) -> dict:
    """The DP part of DataLens: teachers + TopAgg + generator. Returns the generator, its spec
    pieces and the accounting record."""
    ps = paper_setting(dataset, epsilon, delta)
    k = c.topk or ps["topk"]
    sigma = ps["sigma"] if c.sigma is None else c.sigma
    beta = ps["thresh"] if c.thresh is None else c.thresh
    z_dim = c.z_dim or ps["z_dim"]
    private = not math.isinf(epsilon)
    if not private:
        sigma = 0.0
    N = c.teachers
    x = members.x.reshape(len(members), -1).float()
    dim = x.shape[1]
    if k > dim:
        raise BenchError(f"datalens: topk {k} exceeds the image dimension {dim}")
    rows = members.index if members.index is not None else np.arange(len(members))
    # shards padded to the public slot capacity, not the realised largest shard: the teachers'
    # fakes (one latent per slot) and everything drawn after them must not depend on other members
    pos, mask, M = padded_shards(np.asarray(rows), members.y.numpy(), N, c.partition, seed, universe)
    pos_t, mask_t = torch.from_numpy(pos), torch.from_numpy(mask).to(device)
    yr = members.y[pos_t].to(device)
    xall = torch.empty(N, 2 * M, dim, device=device)  # real rows, then the step's fakes
    xall[:, :M] = x[pos_t].to(device)
    B = int(c.batch_size)  # public: never a function of the member count

    g_rng = torch.Generator().manual_seed(seed * 7919 + 1)  # model init
    z_rng = torch.Generator().manual_seed(seed * 7919 + 2)  # latents and labels
    n_rng = torch.Generator().manual_seed(seed * 7919 + 3)  # DP noise and stochastic signs
    torch.manual_seed(seed * 7919 + 4)
    gspec_extra = {"z_dim": z_dim, "gf_dim": c.gf_dim, "gfc_dim": c.gfc_dim, "output_contrast": c.synthetic_contrast,
                   "output_blur": c.synthetic_blur}
    G = CondDCGANGenerator(members.x.shape[1], members.x.shape[-1], num_classes, **gspec_extra).to(device)
    g_opt = torch.optim.Adam(G.parameters(), lr=c.lr, betas=(c.beta1, 0.999))
    if c.teacher == "linear":
        T = LinearTeacherEnsemble(N, dim, num_classes, g_rng, c.lr, c.beta1, device, c.teacher_input_norm,
                                  c.teacher_weight_decay, c.teacher_pieces)
    elif c.teacher == "conv":
        T = ConvTeacherEnsemble(N, tuple(members.x.shape[1:]), num_classes, g_rng, c.lr, c.beta1, device,
                                c.teacher_filters, c.teacher_weight_decay)
    else:
        T = TeacherEnsemble(N, dim, num_classes, c.teacher_hidden, g_rng, c.lr, c.beta1, device, c.teacher_bn,
                            c.teacher_input_norm, c.teacher_projection, c.teacher_weight_decay)

    z_mult = query_noise_multiplier(sigma, k) if private else math.inf
    if private:
        budget_queries = max_gaussian_compositions(z_mult, epsilon, delta)
        steps = budget_queries // B
    else:
        budget_queries, steps = None, (c.steps_at_inf if c.steps_at_inf is not None else ps["reference_queries"] // B)
    if c.max_steps is not None:
        steps = min(steps, c.max_steps)
    if steps <= 0:
        raise BenchError(f"datalens: epsilon {epsilon} does not pay for a single generator step of {B} queries "
                         f"(noise multiplier {z_mult:.3g})")
    # the log is stored with the cell: public quantities only (no realised shard sizes or losses)
    log(f"datalens: {N} teachers (slot capacity {M}), k={k}, sigma={sigma}, beta={beta}, "
        f"batch {B}, {steps} generator steps = {steps * B} queries (budget {budget_queries})")
    hist = {"agreed": [], "epsilon": []}
    t0 = time.time()
    for step in progress(range(steps), desc="datalens steps"):
        z = G.sample_latent(max(M, B), z_rng).to(device)
        # teachers: fakes G(z_j, y_ij) with the teacher's own real labels (shared z, as in the code)
        with torch.no_grad():
            G.train()
            allc = G(z[:M].repeat_interleave(num_classes, 0),
                     torch.arange(num_classes, device=device).repeat(M)).reshape(M, num_classes, dim)
        xall[:, M:] = allc[torch.arange(M, device=device).view(1, M).expand(N, M), yr]
        n_d = c.pretrain_teacher if (step == 0 and c.pretrain_teacher > 0) else c.d_step
        for _ in range(n_d):  # the teachers' loss is a noise-free statistic of the members: not kept
            T.train_step(xall, yr, mask_t)
        # generator: B queries, one per generated image (random labels, same z as the teachers)
        yq = torch.randint(0, num_classes, (B,), generator=z_rng).to(device)
        G.train()
        img = G(z[:B], yq).reshape(B, dim)
        agg = topagg(T, img, yq, k=k, max_grad=c.max_grad, sigma=sigma, beta=beta, chunk=c.teacher_chunk,
                     generator=n_rng)
        hist["agreed"].append(float(agg.abs().sum(1).mean()))
        target = img.detach() + c.step_size * agg
        g_loss = ((target - img) ** 2).sum()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        if private and (step % 10 == 9 or step == steps - 1):
            hist["epsilon"].append((step + 1, gaussian_rdp_epsilon([(z_mult, (step + 1) * B)], delta)))
        if monitor is not None:
            monitor(step, G, agg)
        if step % 20 == 19:
            log(f"datalens: step {step + 1}/{steps}, {time.time() - t0:.0f}s, agreed dims "
                f"{hist['agreed'][-1]:.0f}")
    queries = steps * B
    spent = gaussian_rdp_epsilon([(z_mult, queries)], delta) if private else math.inf
    log(f"datalens: {steps} steps in {time.time() - t0:.0f}s, epsilon {spent}")
    return {"generator": G.cpu().eval(), "gspec": gspec_extra, "k": k, "sigma": sigma, "beta": beta, "z_dim": z_dim,
            "setting_source": ps["source"] if (c.topk, c.sigma, c.thresh) == (None, None, None) else "config",
            "paper_setting_source": ps["source"],
            "steps": steps, "queries": queries, "budget_queries": budget_queries, "batch": B,
            "noise_multiplier": z_mult, "epsilon": spent, "history": hist, "shard_capacity": M}


@register_defense("datalens")
class DataLens(Defense):
    """DataLens: 4000 teacher discriminators, TopAgg (top-k, stochastic sign, Gaussian noise,
    threshold), DP conditional generator, student trained on synthetic data."""

    Config = DataLensConfig
    privacy_unit = "example"
    paper = ("Wang, Wu, Long, Rimanic, Zhang, Li, DataLens: Scalable Privacy Preserving Training via "
             "Gradient Compression and Aggregation, CCS 2021")

    def fit(self, ctx) -> Release:
        c = self.config
        task = ctx.task
        seed_everything(ctx.seed)
        t0 = time.time()
        out = train_generator(task.members, task.num_classes, c, epsilon=ctx.epsilon, delta=ctx.delta,
                              dataset=task.dataset, seed=ctx.seed, device=ctx.device, log=ctx.log,
                              progress=ctx.progress, universe=row_universe(task))
        t_gen = time.time() - t0
        private = not math.isinf(ctx.epsilon)
        privacy = PrivacyReport(
            out["epsilon"], ctx.delta, "example",
            "RDP (dp_accounting), data-independent" if private else "none (sigma = 0)",
            "TopAgg: per-query Gaussian mechanism on summed top-k stochastic-sign votes of disjoint teachers",
            {"noise_multiplier": out["noise_multiplier"], "l2_sensitivity": 2 * math.sqrt(out["k"]),
             "sigma": out["sigma"], "topk": out["k"], "thresh": out["beta"], "teachers": c.teachers,
             "queries": out["queries"], "generator_steps": out["steps"], "queries_per_step": out["batch"],
             "budget_queries": out["budget_queries"], "target_epsilon": ctx.epsilon, "partition": c.partition,
             "neighbouring": "add/remove one member (changes one teacher's shard)",
             "rdp_per_query": "2 k lambda / sigma^2", "setting": out["setting_source"]},
            f"{STUDENT_SELECTION}; the real validation curve is a diagnostic, never used")
        return generator_release(ctx, out["generator"], c, privacy, generator_history=out["history"],
                                 gspec=out["gspec"],
                                 info={"shard_capacity": out["shard_capacity"], "generator_seconds": t_gen,
                                       "paper_setting_source": out["paper_setting_source"]},
                                 real_val_note=f"{REAL_VAL_NOTE} (the paper selects the max over epochs on test)")


def paper_protocol_accuracy(release: Release, task, config: Optional[dict] = None, seed: int = 0,
                            device="cpu", epochs: int = 4) -> dict:
    """DataLens' own evaluation protocol, **outside** ``fit`` (it reads the test split): regenerate
    the synthetic set from the released generator, train the student for ``epochs`` epochs (the
    paper: 600 of SGD; here the config's optimizer for at least ``epochs``) and report the maximum
    test accuracy over epochs ("paper protocol, test-selected": optimistic, not a private or fair
    selection) next to the synthetic-val-selected one."""
    from bench.api import make_config

    c = make_config(DataLensConfig, config or {}, "defenses.datalens")
    c.student_epochs = max(c.student_epochs, int(epochs))
    _, _, hist = generator_student(task, release.modules["generator"].cpu(), c, seed=seed, device=device,
                                   curves={"test": task.test})
    return {"test_acc_max_over_epochs": float(max(hist["test_acc"])),
            "test_acc_synthetic_val_selected": float(hist["test_acc"][hist["selected_epoch"]]),
            "test_acc_per_epoch": hist["test_acc"]}
