"""Shared pieces of the data-free DP distillation defenses (``dpsd``, ``dpdfd``).

One implementation of every building block, used by both defenses:

* architectures (registered, so releases rebuild from their JSON spec):
  ``dafl-generator`` (DAFL generator, Chen et al. ICCV 2019, output mapped to [0, 1]) and
  ``student-cnn`` (the "three-layer CNN" student: conv-conv-linear);
* the DAFL generator losses (one-hot, information entropy, activation), evaluated on the
  **student** only;
* decoupled knowledge distillation (DKD, Zhao et al. CVPR 2022) and plain KL distillation, as
  per-sample losses whose gradient w.r.t. the student's logits is what gets privatized;
* the two private annotation mechanisms: :class:`GaussianAnnotator` (per-sample gradient w.r.t.
  the student's logits -> top-k from student-side information -> per-sample normalization to C
  -> Gaussian noise -> detached regression target) and :class:`RRAnnotator` (randomized response
  with the student's prediction as prior, RRWithPrior of Ghazi et al. NeurIPS 2021);
* the privacy ledgers on top of Google's ``dp_accounting`` (PLD / RDP accountants);
* :func:`transcribe`, the alternating generator / teacher / student loop.

The only place a teacher output is used is the ``annotate`` call of :func:`transcribe`: the
teacher's logits go into the mechanism and are dropped; nothing else of the teacher reaches the
student or the generator (``tests/test_dpsd.py`` checks this by swapping teachers).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.lib.audit.canaries import canary_answer, draw_query_canaries
from bench.lib.models import Classifier, _flat_dim, register_arch
from bench.lib.train import accuracy

# ---------------------------------------------------------------------------------------------
# architectures


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


#: the standard, published per-channel input normalization constants (mean, std) of the datasets
#: (torchvision / DAFL conventions), used as the generator's output statistics like DAFL's final
#: BatchNorm: part of the teacher's input interface, not computed from the private split here
INPUT_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def generator_spec_args(dataset: str, output: str) -> dict:
    """The ``dafl-generator`` output arguments for ``output``: ``dataset-stats`` (DAFL's BatchNorm
    output layer with the dataset's standard normalization constants; plain tanh for a dataset
    without published constants) or ``tanh`` ((tanh + 1) / 2)."""
    if output not in ("dataset-stats", "tanh"):
        raise ValueError(f"generator_output must be 'dataset-stats' or 'tanh', got {output!r}")
    if output == "dataset-stats" and dataset in INPUT_STATS:
        mean, std = INPUT_STATS[dataset]
        return {"out_mean": list(mean), "out_std": list(std)}
    return {}


@register_arch("student-cnn")
class StudentCNN(Classifier):
    """The "three-layer CNN" student: Conv(w, 3x3) ReLU MaxPool2 -> Conv(2w, 3x3) ReLU MaxPool2 ->
    Linear(K). No BatchNorm (the student is trained on synthetic batches and evaluated on real
    data; batch statistics of synthetic data would not transfer) and no dropout. ``penultimate``
    is the flattened conv feature map (the DAFL activation loss uses it)."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, width=32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
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


# ---------------------------------------------------------------------------------------------
# losses


def dafl_losses(logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """DAFL's generator losses on the discriminating network's (here: the student's) outputs:
    ``oh`` = CE(logits, argmax logits) (one-hot), ``ie`` = sum_c pbar_c log pbar_c with pbar the
    batch-mean softmax (minus the entropy: minimizing it balances the classes), ``a`` = -mean |f|
    (activation L1 norm of the penultimate features)."""
    oh = F.cross_entropy(logits, logits.argmax(1))
    pbar = F.softmax(logits, 1).mean(0)
    ie = (pbar * torch.log(pbar + 1e-12)).sum()
    a = -features.abs().mean()
    return {"oh": oh, "ie": ie, "a": a}


def kl_per_sample(s: torch.Tensor, t: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 for each row."""
    T = temperature
    pt = F.softmax(t / T, 1)
    return (pt * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1) * T * T


def dkd_per_sample(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, alpha: float = 1.0,
                   beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022), per row: alpha * TCKD + beta * NCKD, both scaled by
    T^2. TCKD is the KL between the binary (target / non-target) distributions, NCKD the KL
    between the distributions over the non-target classes. ``target`` is the class treated as
    ground truth (here the teacher's argmax, inside the private mechanism)."""
    T = temperature
    gt = F.one_hot(target, s.shape[1]).to(s.dtype)
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1).clamp_min(1e-12)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1).clamp_min(1e-12)
    tckd = (bt * (bt.log() - bs.log())).sum(1) * T * T
    log_ps_nt = F.log_softmax(s / T - 1000.0 * gt, 1)
    pt_nt = F.softmax(t / T - 1000.0 * gt, 1)
    nckd = (pt_nt * (torch.log(pt_nt + 1e-12) - log_ps_nt)).sum(1) * T * T
    return alpha * tckd + beta * nckd


def per_sample_logit_grad(s: torch.Tensor, t: torch.Tensor, loss: str, *, temperature: float,
                          alpha: float = 1.0, beta: float = 8.0) -> torch.Tensor:
    """Row i: the gradient of the distillation loss of sample i w.r.t. the student's logits s_i.
    Computed on a detached leaf copy of ``s``, so no gradient reaches any parameter."""
    s = s.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if loss == "dkd":
            per = dkd_per_sample(s, t.detach(), t.detach().argmax(1), alpha, beta, temperature)
        elif loss == "kl":
            per = kl_per_sample(s, t.detach(), temperature)
        else:
            raise ValueError(f"unknown distillation loss {loss!r}")
        (g,) = torch.autograd.grad(per.sum(), s)
    return g.detach()


# ---------------------------------------------------------------------------------------------
# private annotation mechanisms


def topk_mask(student_logits: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    """0/1 mask of the k largest **student** logits per row (k None or >= K: all ones). Uses only
    student-side information, so the selection itself costs no privacy."""
    K = student_logits.shape[1]
    if k is None or k <= 0 or k >= K:
        return torch.ones_like(student_logits)
    idx = student_logits.topk(k, dim=1).indices
    return torch.zeros_like(student_logits).scatter_(1, idx, 1.0)


def normalize_rows(g: torch.Tensor, bound: float, stability: float) -> torch.Tensor:
    """Per-sample normalization (Bu et al.'s automatic clipping): C * g_i / (||g_i||_2 + e);
    every row has norm < C."""
    return bound * g / (g.norm(dim=1, keepdim=True) + stability)


@dataclass
class GaussianAnnotator:
    """Data-sensitive annotation: the Gaussian mechanism on normalized per-sample logit gradients.

    For each synthetic sample i: g_i = d loss(s_i, t_i) / d s_i; keep the top-k coordinates of
    the **student's** logits; gbar_i = C g_i / (||g_i|| + e); release
    ``target_i = s_i - eta * (gbar_i + n_i)``, n_i ~ N(0, (sigma C)^2) on the k kept coordinates,
    detached. Only ``target`` leaves the mechanism."""

    noise_multiplier: float  # sigma: noise std in units of C
    bound: float = 1.0  # C
    stability: float = 1e-3  # e
    top_k: Optional[int] = None
    step: float = 1.0  # eta
    loss: str = "dkd"
    temperature: float = 4.0
    alpha: float = 1.0
    beta: float = 8.0
    generator: Optional[torch.Generator] = None
    last_norms: Optional[torch.Tensor] = field(default=None, repr=False)

    def clean(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The noise-free normalized answer gbar (what the noise is added to); draws no noise."""
        s = student_logits.detach()
        g = per_sample_logit_grad(s, teacher_logits, self.loss, temperature=self.temperature,
                                  alpha=self.alpha, beta=self.beta)
        return normalize_rows(g * topk_mask(s, self.top_k), self.bound, self.stability)

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        s = student_logits.detach()
        mask = topk_mask(s, self.top_k)
        gbar = self.clean(s, teacher_logits)
        self.last_norms = gbar.norm(dim=1)
        noise = torch.randn(s.shape, generator=self.generator, dtype=s.dtype).to(s.device)
        noise = noise * (self.noise_multiplier * self.bound) * mask
        return (s - self.step * (gbar + noise)).detach()


def rr_with_prior(labels: torch.Tensor, prior: torch.Tensor, epsilon: float,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """RRWithPrior (Ghazi et al., NeurIPS 2021, Alg. 2), vectorized. For each row: sort the
    prior, pick k* = argmax_k [e^eps / (e^eps + k - 1)] * (mass of the k most likely classes);
    if the true label is among those k*, output it with probability e^eps / (e^eps + k* - 1) and
    each other member with probability 1 / (e^eps + k* - 1); otherwise output a uniform member.
    epsilon-DP w.r.t. the label for any fixed prior."""
    n, K = prior.shape
    e = math.exp(epsilon)
    order = prior.argsort(dim=1, descending=True)
    cum = prior.gather(1, order).cumsum(1)
    ks = torch.arange(1, K + 1, dtype=prior.dtype, device=prior.device)
    kstar = (cum * (e / (e + ks - 1))).argmax(1) + 1  # (n,)
    rank = (order == labels[:, None]).float().argmax(1)  # position of the true label
    inset = rank < kstar
    u = torch.rand(n, generator=generator).to(prior.device)
    v = torch.rand(n, generator=generator).to(prior.device)
    p_keep = e / (e + kstar.to(prior.dtype) - 1)
    # in the set, not kept: uniform over the other k*-1 members (positions != rank)
    j = torch.clamp((v * (kstar - 1).to(prior.dtype)).floor().long(), max=K - 1)
    j = torch.minimum(j, (kstar - 2).clamp_min(0))
    other_pos = j + (j >= rank).long()
    # outside the set: uniform over the k* members
    any_pos = torch.minimum((v * kstar.to(prior.dtype)).floor().long(), kstar - 1)
    pos = torch.where(inset, torch.where(u < p_keep, rank, other_pos), any_pos)
    return order.gather(1, pos[:, None]).squeeze(1)


@dataclass
class RRAnnotator:
    """Label-sensitive annotation: the teacher's hard label argmax t_i through RRWithPrior with
    the student's softmax as prior. Only the noisy label leaves the mechanism."""

    epsilon: float
    generator: Optional[torch.Generator] = None
    #: softmax temperature of the prior; > 1 flattens an over-confident student prior (with a sharp
    #: prior RRWithPrior picks k* = 1 and returns the student's own top class, ignoring the teacher)
    prior_temperature: float = 1.0
    #: weight lambda of the uniform distribution mixed into the prior:
    #: prior = (1 - lambda) softmax(s / tau) + lambda / K (1 = plain K-ary randomized response)
    prior_mix: float = 0.0
    #: the first ``prior_warmup`` calls (query batches) use the uniform prior, i.e. plain K-ary
    #: randomized response; the student's prediction becomes the prior afterwards. This is the
    #: two-stage schedule of Ghazi et al. (LP-2ST: the prior comes from a model trained on
    #: earlier RR labels), instead of a prior from a randomly initialised student
    prior_warmup: int = 0
    #: query batches annotated so far (state, not a parameter)
    calls: int = field(default=0, init=False)

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        K = student_logits.shape[1]
        if self.calls <= self.prior_warmup:
            prior = torch.full_like(student_logits, 1.0 / K)
        else:
            prior = F.softmax(student_logits.detach() / self.prior_temperature, 1)
            if self.prior_mix:
                prior = (1 - self.prior_mix) * prior + self.prior_mix / K
        return rr_with_prior(teacher_logits.detach().argmax(1), prior, self.epsilon, self.generator)


# ---------------------------------------------------------------------------------------------
# accounting (library accountants only: Google dp_accounting)


#: dp_accounting's PLD discretization of the privacy loss (its default)
PLD_INTERVAL = 1e-4
#: a composed PLD larger than this many points (8 bytes each, several copies in the FFT) is refused
PLD_MAX_POINTS = 2e8


def pld_points(noise_multiplier: float, steps: int) -> float:
    """About how many points the PLD of ``steps`` composed Gaussians at ``noise_multiplier`` holds
    (loss support ~ steps * (1/(2z^2) + 10/z), over the 1e-4 grid)."""
    z = max(float(noise_multiplier), 1e-12)
    return max(int(steps), 1) * (0.5 / z**2 + 10.0 / z) / PLD_INTERVAL


def _check_pld(noise_multiplier: float, steps: int, what: str) -> None:
    """A near-noiseless budget (epsilon = 1e4: z ~ 0.05) would need a PLD of ~1e9 points: the
    process was killed for memory after the teacher had trained. Refuse it in one line instead;
    RDP (an upper bound as well, looser) handles any z."""
    from bench.core.errors import BenchError

    n = pld_points(noise_multiplier, steps)
    if n > PLD_MAX_POINTS:
        raise BenchError(f"{what}: noise multiplier {noise_multiplier:.3g} over {steps} compositions needs a PLD of "
                         f"~{n:.1e} points (more memory than a machine has); set accountant: rdp for such a budget")


def _accountant(name: str, relation: str = "add_remove"):
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
    from dp_accounting.privacy_accountant import NeighboringRelation
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    rel = {"add_remove": NeighboringRelation.ADD_OR_REMOVE_ONE, "replace": NeighboringRelation.REPLACE_ONE}[relation]
    if name == "pld":
        return PLDAccountant(neighboring_relation=rel)
    if name == "rdp":
        return RdpAccountant(neighboring_relation=rel)
    raise ValueError(f"accountant must be 'pld' or 'rdp', got {name!r}")


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float, accountant: str = "pld") -> float:
    """Epsilon of ``steps`` compositions of the Gaussian mechanism with std / L2-sensitivity =
    ``noise_multiplier`` (dp_accounting; sensitivity-1 ``GaussianDpEvent``)."""
    from dp_accounting import dp_event

    if steps <= 0:
        return 0.0
    if accountant == "pld":
        _check_pld(noise_multiplier, steps, "PLD accountant")
    acc = _accountant(accountant)
    acc.compose(dp_event.GaussianDpEvent(noise_multiplier), int(steps))
    return float(acc.get_epsilon(delta))


def calibrate_gaussian(target_epsilon: float, delta: float, steps: int, accountant: str = "pld") -> float:
    """The smallest noise multiplier z (std / sensitivity) whose ``steps``-fold composition spends
    at most ``target_epsilon`` at ``delta``, by dp_accounting's calibration (bisection on the
    accountant, on the composed event itself). The bracket comes from the RDP accountant (fast;
    RDP over-estimates epsilon, so its z is an upper end) and is refined with ``accountant``."""
    from dp_accounting import dp_event
    from dp_accounting import mechanism_calibration as mc

    def event(z):
        return dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(z), int(steps))

    z_rdp = mc.calibrate_dp_mechanism(lambda: _accountant("rdp"), event, target_epsilon, delta,
                                      mc.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4)
    if accountant == "rdp":
        return float(z_rdp)
    _check_pld(0.5 * z_rdp, steps, f"target epsilon {target_epsilon:g} (PLD accountant)")
    z = mc.calibrate_dp_mechanism(lambda: _accountant(accountant), event, target_epsilon, delta,
                                  mc.ExplicitBracketInterval(0.5 * z_rdp, z_rdp), tol=1e-3 * z_rdp)
    return float(z)


def pure_dp_composition_epsilon(epsilon0: float, count: int, delta: float) -> float:
    """Epsilon of ``count`` compositions of an epsilon0-DP mechanism (replace-one relation),
    through the event that dominates every epsilon0-DP mechanism: binary randomized response with
    keep probability e^eps0 / (e^eps0 + 1) (Kairouz, Oh & Viswanath 2015). dp_accounting RDP
    accountant (PLD cannot hold hundreds of thousands of self-compositions in memory)."""
    from dp_accounting import dp_event

    if count <= 0:
        return 0.0
    acc = _accountant("rdp", "replace")
    p = 2.0 / (math.exp(epsilon0) + 1.0)  # dp_accounting's noise parameter: prob. of a uniform draw
    acc.compose(dp_event.RandomizedResponseDpEvent(p, 2), int(count))
    return float(acc.get_epsilon(delta))


#: the two readings of the ``query`` unit for the Gaussian (data-sensitive) mechanism
QUERY_UNITS = {
    "parallel": "neighbouring runs differ in the teacher's answer to one synthetic query; every query is "
                "answered (and noised) exactly once, so the per-query Gaussian mechanisms compose in parallel",
    "per-iteration": "neighbouring runs differ in the teacher's answer to at most one synthetic query in every "
                     "iteration; the iterations compose sequentially",
}


def own_unit_compositions(composition: str, iterations: int) -> int:
    """How many Gaussian mechanisms one neighbouring change touches under the ``query`` unit."""
    if composition not in QUERY_UNITS:
        raise ValueError(f"query_composition must be one of {list(QUERY_UNITS)}, got {composition!r}")
    return min(1, iterations) if composition == "parallel" else iterations


#: how the calibrated noise is applied to each per-sample normalized gradient (data mode)
NOISE_SCALES = {
    "per-sample": "every released per-sample target carries N(0, (sigma C)^2): the std its own "
                  "sensitivity needs (sound)",
    "batch-mean": "the DPDFD authors' snippet: the noise std is divided by the batch size, N(0, (sigma C / B)^2), "
                  "the scale of a Gaussian mechanism on the batch MEAN (one answer moves the mean by at most "
                  "2C/B), while every per-sample target is released with its full per-sample signal",
}


@dataclass
class GaussianPlan:
    """Noise of the data-sensitive mechanism and the three figures it is accounted with.

    ``z`` is calibrated to the target epsilon exactly as for the sound mechanism (std /
    sensitivity on one answer); ``sigma = z * sens`` (std in units of C). ``applied`` is the std
    actually added to each per-sample gradient: ``sigma`` (``per-sample``) or ``sigma / B``
    (``batch-mean``). Claimed: the accountant on ``z`` (for ``batch-mean`` this is the reading of
    the release as a mechanism on the batch mean). Released: the accountant on the per-sample
    multiplier ``applied / sens``, same ``query`` unit. Example level: all B answers of a round
    may change, joint sensitivity ``sens C sqrt(B)``, multiplier ``applied / (sens sqrt(B))``."""

    z: float
    sigma: float
    applied: float
    sens: float
    batch_size: int
    noise_scale: str

    @property
    def z_released(self) -> float:
        return self.applied / self.sens

    @property
    def z_example(self) -> float:
        return self.applied / (self.sens * math.sqrt(self.batch_size))


def plan_gaussian(target_epsilon: float, delta: float, *, iterations: int, batch_size: int, sens: float,
                  query_composition: str, accountant: str, noise_multiplier: Optional[float],
                  noise_scale: str) -> GaussianPlan:
    """Calibrate (or take) the noise multiplier and apply the ``noise_scale`` (:data:`NOISE_SCALES`)."""
    if noise_scale not in NOISE_SCALES:
        raise ValueError(f"noise_scale must be one of {list(NOISE_SCALES)}, got {noise_scale!r}")
    if noise_multiplier is None:
        z = calibrate_gaussian(target_epsilon, delta, own_unit_compositions(query_composition, iterations), accountant)
    else:
        z = noise_multiplier / sens
    sigma = z * sens
    applied = sigma if noise_scale == "per-sample" else sigma / batch_size
    return GaussianPlan(float(z), float(sigma), float(applied), float(sens), int(batch_size), noise_scale)


def gaussian_privacy_extra(plan: GaussianPlan, ledger: GaussianLedger) -> dict:
    """The figures every data-mode report carries (claimed, released, example level), each with
    its unit and accountant."""
    released = ledger.epsilon_released()
    return {
        "noise_scale": plan.noise_scale, "noise_scale_definition": NOISE_SCALES[plan.noise_scale],
        "epsilon_claimed": ledger.epsilon(), "epsilon_claimed_unit": "query",
        "epsilon_released": released, "epsilon_released_unit": "query",
        "epsilon_released_accountant": ledger.released_accountant(),
        "epsilon_example_level": ledger.epsilon_example_level(), "epsilon_example_level_unit": "example",
        "epsilon_example_level_accountant": "RDP (dp_accounting)",
        "noise_multiplier": plan.sigma, "noise_std_applied": plan.applied, "accountant_multiplier": plan.z,
        "released_multiplier": plan.z_released, "example_level_multiplier": plan.z_example,
    }


class GaussianLedger:
    """Counts the Gaussian annotation rounds (one per teacher query batch, recorded right after
    the query) and converts them into epsilon with the accountant on demand: the own-unit epsilon
    (``query``, see :data:`QUERY_UNITS`) and the example-level one (all B answers of every round
    may change: multiplier z_ex per round, composed over the rounds; RDP accountant)."""

    def __init__(self, noise_multiplier: float, example_multiplier: float, delta: float, accountant: str,
                 composition: str, released_multiplier: Optional[float] = None):
        self.z, self.z_ex, self.delta, self.accountant = noise_multiplier, example_multiplier, delta, accountant
        self.composition = composition
        #: the per-sample multiplier of what is actually released (differs from ``z`` only under the
        #: authors' ``batch-mean`` noise scale)
        self.z_rel = noise_multiplier if released_multiplier is None else released_multiplier
        self.steps = 0

    def step(self, n: int = 1):
        self.steps += n

    def epsilon(self) -> float:
        return gaussian_epsilon(self.z, own_unit_compositions(self.composition, self.steps), self.delta,
                                self.accountant)

    def released_accountant(self) -> str:
        """The claim's accountant when the released multiplier is the claimed one; RDP otherwise (a
        PLD of a Gaussian with multiplier ~0.01 takes ~90 s for one composition; RDP is an upper
        bound, so the figure is conservative: 2 701 vs PLD 2 647 at z = 3.73 / 256)."""
        same = self.z_rel == self.z
        return (self.accountant if same else "rdp").upper() + " (dp_accounting)"

    def epsilon_released(self) -> float:
        """Own-unit epsilon of what the mechanism actually releases (per-sample multiplier)."""
        if self.z_rel == self.z:
            return self.epsilon()
        return gaussian_epsilon(self.z_rel, own_unit_compositions(self.composition, self.steps), self.delta, "rdp")

    def epsilon_example_level(self) -> float:
        """Always with the RDP accountant: the example-level multiplier is small (sigma / (2 sqrt B)),
        and a PLD of a low-noise Gaussian composed T times needs gigabytes (it was OOM-killed on
        MNIST); RDP is an upper bound, so the reported figure is conservative."""
        return gaussian_epsilon(self.z_ex, self.steps, self.delta, "rdp")


# ---------------------------------------------------------------------------------------------
# the alternating loop


@dataclass
class QueryCanaries:
    """Canary queries for an audit in the mechanism's own unit (``attacks/own_unit_audit.py``).

    ``m`` fixed inputs (seeded uniform-noise images, drawn before the run and independent of the
    teacher) are queried once, together with the batch of iteration ``iteration``. For each, an
    independent fair coin (``included``) decides whether the teacher's answer t is replaced by the
    canary answer t' = t with its classes rolled by one (another class's logits; in label mode the
    argmax moves to the next class). That is exactly the neighbouring relation of the ``query``
    (``label``) unit: two runs that differ in the answer to one query. Each canary is answered
    once (parallel composition, no extra epsilon in the own unit); its released annotation goes
    into that iteration's student update like any other. Recorded for the auditor, who in the DP
    game knows both candidate answers: the released annotation, the two noise-free candidates
    (data mode: the normalized gradients for t and t'; label mode: the two labels) and the student's
    logits at query time."""

    x: torch.Tensor
    included: torch.Tensor  # bool (m,)
    iteration: int
    record: dict = field(default_factory=dict)

    @classmethod
    def draw(cls, m: int, image_shape: tuple, cell_seed: int, seed: int, iteration: int) -> QueryCanaries:
        x, included = draw_query_canaries(m, image_shape, cell_seed, seed)
        return cls(x, included, int(iteration))


CANARY_KEYS = {"m", "seed", "iteration"}


def make_canaries(spec: dict, image_shape: tuple, iterations: int, cell_seed: int, name: str) -> Optional[QueryCanaries]:
    """``spec`` = the defense's ``own_unit_canaries`` config ({} = none): ``m`` canaries (>= 2),
    ``seed`` (default 0), ``iteration`` (1..iterations; default the last)."""
    from bench.core.errors import BenchError

    if not spec:
        return None
    unknown = set(spec) - CANARY_KEYS
    if unknown:
        raise BenchError(f"{name}: own_unit_canaries has unknown keys {sorted(unknown)} (known: {sorted(CANARY_KEYS)})")
    m = int(spec.get("m", 0))
    it = int(spec.get("iteration", iterations) or iterations)
    if m < 2 or not 1 <= it <= iterations:
        raise BenchError(f"{name}: own_unit_canaries needs m >= 2 and 1 <= iteration <= {iterations}")
    return QueryCanaries.draw(m, image_shape, cell_seed, int(spec.get("seed", 0)), it)


def canary_info(canaries: Optional[QueryCanaries]) -> dict:
    """The canary record as JSON lists (for ``release.info["own_unit_canaries"]``)."""
    if canaries is None:
        return {}
    if not canaries.record:
        raise RuntimeError("the canary iteration was never reached")
    return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in canaries.record.items()}


@dataclass
class LoopConfig:
    iterations: int
    batch_size: int
    lr_student: float
    lr_generator: float
    w_oh: float
    w_ie: float
    w_act: float
    w_adv: float
    eval_every: int
    select_on_val: bool
    student_optimizer: str = "adam"
    #: one generator step every ``generator_every`` iterations (the generator step costs more than
    #: the rest of an iteration on a CPU; the student sees a fresh batch every iteration anyway)
    generator_every: int = 1
    #: decay of an exponential moving average of the student's weights (0 = off); the average is
    #: what gets evaluated, selected and released -- it averages the zero-mean DP noise of the
    #: updates (post-processing of DP outputs)
    ema: float = 0.0
    #: iterations before the first generator step (the student first learns on the initial
    #: generator's samples; the generator's only guide is the student)
    generator_warmup: int = 0


def student_loss_fn(mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """data mode: MSE regression of the logits onto the detached DP target (sum over classes,
    mean over the batch); label mode: cross-entropy on the RR labels."""
    if mode == "data":
        return lambda s, target: ((s - target) ** 2).sum(1).mean() / 2
    return lambda s, labels: F.cross_entropy(s, labels)


def adversarial_loss_fn(mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The generator's adversarial (competitive) term, built from DP quantities only: the generator
    maximizes the student's disagreement with the private annotation of the same latent codes.
    In data mode the gradient of -1/2 ||s - target||^2 w.r.t. the images is linear in the DP
    noise, i.e. an unbiased noisy version of "move to where the normalized distillation gradient
    is large"."""
    base = student_loss_fn(mode)
    return lambda s, target: -base(s, target)


def transcribe(*, teacher: nn.Module, student: nn.Module, generator: nn.Module,
               annotate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mode: str, cfg: LoopConfig,
               rng: torch.Generator, device, val=None, on_query: Callable[[int], None] = lambda it: None,
               on_eval: Callable[[int], dict] = lambda it: {}, progress=lambda it, **k: it,
               log: Callable[[str], None] = lambda m: None, canaries: Optional[QueryCanaries] = None) -> dict:
    """Alternate, ``cfg.iterations`` times: (1) a generator batch from N(0, I); (2) teacher and
    student logits; (3) private annotation (the only use of the teacher's output); (4) a student
    step towards the annotation; (5) a generator step with the (frozen) student as discriminator.
    Returns the history; ``student``/``generator`` hold the selected checkpoint on return."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.to(device).train()
    generator.to(device).train()
    if cfg.student_optimizer == "adam":
        opt_s = torch.optim.Adam(student.parameters(), lr=cfg.lr_student)
    else:
        opt_s = torch.optim.SGD(student.parameters(), lr=cfg.lr_student, momentum=0.9)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_generator)
    s_loss, adv_loss = student_loss_fn(mode), adversarial_loss_fn(mode)
    latent = generator.latent_dim
    averaged = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
    released = averaged.module if averaged is not None else student
    hist: dict = {"iteration": [], "val_acc": [], "student_loss": [], "epsilon": [], "seconds": []}
    best = (-1.0, None, None, -1)
    t0 = time.time()
    run_loss = 0.0
    use_generator = any(w != 0 for w in (cfg.w_oh, cfg.w_ie, cfg.w_act, cfg.w_adv))
    for it in progress(range(1, cfg.iterations + 1), desc="transcription"):
        z = torch.randn(cfg.batch_size, latent, generator=rng).to(device)
        # (1)-(2): synthetic batch, teacher and student logits
        with torch.no_grad():
            x = generator(z)
            t_logits = teacher(x)
        s_logits = student(x)
        n_batch = len(x)
        if canaries is not None and it == canaries.iteration:
            # audit refit only: the canary queries join this batch (answered once, like every query)
            xc = canaries.x.to(device)
            with torch.no_grad():
                tc = teacher(xc)
            inc = canaries.included.to(device)[:, None]
            answer = torch.where(inc, canary_answer(tc), tc)
            t_logits = torch.cat([t_logits, answer])
            s_logits = torch.cat([s_logits, student(xc)])
        # (3): private annotation -- the only use of the teacher's output
        target = annotate(s_logits.detach(), t_logits)
        if canaries is not None and it == canaries.iteration:
            sc, tgt = s_logits[n_batch:].detach(), target[n_batch:].detach()
            rec = {"iteration": it, "included": canaries.included.cpu(), "student_logits": sc.cpu(),
                   "released": tgt.cpu(), "label_out": tc.argmax(1).cpu(),
                   "label_in": canary_answer(tc).argmax(1).cpu()}
            if mode == "data":
                rec["clean_out"] = annotate.clean(sc, tc).cpu()
                rec["clean_in"] = annotate.clean(sc, canary_answer(tc)).cpu()
                rec["noise_std"] = float(annotate.noise_multiplier * annotate.bound)
                rec["target_step"] = float(annotate.step)
            canaries.record = rec
            del tc, answer
        del t_logits
        on_query(it)
        # (4): student update on the DP annotation
        loss = s_loss(s_logits, target)
        target = target[:n_batch]  # the generator's adversarial term pairs with its own batch only
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()
        if averaged is not None:
            averaged.update_parameters(student)
        run_loss += float(loss.detach())
        # (5): generator update, student frozen as discriminator
        if use_generator and it > cfg.generator_warmup and (it - cfg.generator_warmup) % cfg.generator_every == 0:
            for p in student.parameters():
                p.requires_grad_(False)
            xg = generator(z)
            logits, feats = logits_and_features(student, xg)
            parts = dafl_losses(logits, feats)
            g_loss = cfg.w_oh * parts["oh"] + cfg.w_ie * parts["ie"] + cfg.w_act * parts["a"]
            if cfg.w_adv:
                g_loss = g_loss + cfg.w_adv * adv_loss(logits, target)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            for p in student.parameters():
                p.requires_grad_(True)
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            va = accuracy(released, val, device) if val is not None else float("nan")
            student.train()
            extra = on_eval(it)
            hist["iteration"].append(it)
            hist["val_acc"].append(va)
            hist["student_loss"].append(run_loss / (cfg.eval_every if it % cfg.eval_every == 0 else max(1, it % cfg.eval_every)))
            hist["epsilon"].append(extra.get("epsilon"))
            hist["seconds"].append(time.time() - t0)
            run_loss = 0.0
            log(f"iter {it}: val_acc={va:.4f} eps={extra.get('epsilon')}")
            if not cfg.select_on_val or va > best[0]:
                best = (va, copy.deepcopy(released.state_dict()), copy.deepcopy(generator.state_dict()), it)
    student.load_state_dict(best[1])
    generator.load_state_dict(best[2])
    student.eval()
    generator.eval()
    hist["selected_iteration"] = best[3]
    hist["selected_val_acc"] = best[0]
    hist["selected_by"] = "val_acc on ctx.task.val (private validation split)" if cfg.select_on_val else "last_iterate"
    return hist


def get_teacher(ctx, teacher_config: dict) -> nn.Module:
    """The cached non-private ``none`` release of the same task and seed (the shared teacher)."""
    rel = ctx.fit_defense("none", dict(teacher_config or {}))
    teacher = rel.model.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module under a fixed torch seed (independent of whatever ran before, e.g. a teacher
    trained on a cache miss), restoring the global RNG afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def np_float(x) -> float:
    return float(np.asarray(x))


def sensitivity_factor(neighbouring: str) -> float:
    """L2 sensitivity of one normalized answer, in units of C."""
    return 2.0 if neighbouring == "replace" else 1.0
