"""The two private annotation mechanisms of the data-free distillation defenses (the only place a
teacher output is used): :class:`GaussianAnnotator` (per-sample gradient w.r.t. the student's
logits -> top-k from student-side information -> per-sample normalization to C -> Gaussian
noise -> detached regression target) and :class:`RRAnnotator` (randomized response with the
student's prediction as prior, :func:`rr_with_prior`, RRWithPrior of Ghazi et al. NeurIPS 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from bench.lib.distill.losses import per_sample_logit_grad


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
