"""TopAgg, DataLens' gradient compression and aggregation with noise (Wang et al., CCS 2021;
reusable by G-PATE-style aggregators): each teacher's image gradient is compressed to a sparse
vote vector (top-k coordinates, stochastic sign), the votes are summed over teachers, Gaussian
noise is added per coordinate and the noisy sum is thresholded to {-1, 0, +1}.

Privacy of one query (one image): one teacher's vote vector (k entries in {-1, +1}) changes, an
L2 change of at most 2 sqrt(k), so the query is a Gaussian mechanism with the multiplier
:func:`query_noise_multiplier`; its composition is accounted in :mod:`bench.lib.accounting`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def topk_stochastic_sign(grads: torch.Tensor, k: int, max_grad: float,
                         generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``grads`` (..., d): indices of the k largest |g| and their stochastic signs
    (+1 with probability 1/2 + g / 2b, b = min(max |g| of the row, max_grad) when max_grad > 0,
    else b = max |g|; probabilities clipped to [0, 1]). Returns (idx, sign), both (..., k)."""
    absg = grads.abs()
    idx = absg.topk(k, dim=-1, sorted=False).indices
    g = grads.gather(-1, idx)
    b = absg.amax(-1, keepdim=True)
    if max_grad > 0:
        b = b.clamp(max=max_grad)
    b = torch.where(b > 0, b, torch.ones_like(b))
    prob = (0.5 + g / (2 * b)).clamp(0.0, 1.0)
    r = torch.rand(prob.shape, generator=generator, dtype=prob.dtype).to(prob.device)
    sign = torch.where(r < prob, torch.ones_like(prob), -torch.ones_like(prob))
    return idx, sign


def vote_sum(idx: torch.Tensor, sign: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over teachers of the sparse vote vectors: idx, sign (N, B, k) -> (B, dim)."""
    N, B, k = idx.shape
    flat = (torch.arange(B, device=idx.device).view(1, B, 1) * dim + idx).reshape(-1)
    out = torch.zeros(B * dim, dtype=sign.dtype, device=sign.device)
    out.index_add_(0, flat, sign.reshape(-1))
    return out.view(B, dim)


def threshold_votes(votes: torch.Tensor, sigma: float, beta: float, n_teachers: int,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gaussian noise N(0, sigma^2) per coordinate, then the beta * N threshold -> {-1, 0, +1}."""
    noisy = votes + sigma * torch.randn(votes.shape, generator=generator, dtype=votes.dtype).to(votes.device)
    t = beta * n_teachers
    return (noisy > t).to(votes.dtype) - (noisy < -t).to(votes.dtype)


def query_noise_multiplier(sigma: float, k: int) -> float:
    """Noise multiplier of one TopAgg query: std sigma over L2 sensitivity 2 sqrt(k) (one teacher's
    vote vector, k entries in {-1, +1}, replaced by another such vector)."""
    return sigma / (2.0 * math.sqrt(k))



def topagg(teachers, images: torch.Tensor, labels: torch.Tensor, *, k: int, max_grad: float, sigma: float,
           beta: float, chunk: int = 1000, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One TopAgg round on B queries: ``images`` (B, d) with their ``labels`` (B,), scored by every
    teacher of the ensemble (``teachers.image_grads``, ``chunk`` teachers at a time), compressed
    (:func:`topk_stochastic_sign`), summed (:func:`vote_sum`), noised and thresholded
    (:func:`threshold_votes`). Returns the aggregate (B, d) in {-1, 0, +1}; ``generator`` draws
    the stochastic signs and the noise."""
    B, dim = images.shape
    votes = torch.zeros(B, dim, device=images.device)
    for a in range(0, teachers.n, chunk):
        sl = slice(a, a + chunk)
        grads = teachers.image_grads(images.detach(), labels, sl)
        idx, sign = topk_stochastic_sign(grads, k, max_grad, generator)
        votes += vote_sum(idx, sign, dim)
        del grads, idx, sign
    return threshold_votes(votes, sigma, beta, teachers.n, generator)
