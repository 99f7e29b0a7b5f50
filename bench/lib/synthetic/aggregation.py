"""Private aggregation of teacher discriminators' image gradients.

* **TopAgg**, DataLens' gradient compression and aggregation with noise (Wang et al., CCS 2021):
  each teacher's image gradient is compressed to a sparse vote vector (top-k coordinates,
  stochastic sign), the votes are summed over teachers, Gaussian noise is added per coordinate
  and the noisy sum is thresholded to {-1, 0, +1}. One query (one image): one teacher's vote
  vector (k entries in {-1, +1}) changes, an L2 change of at most 2 sqrt(k), so the query is a
  Gaussian mechanism with the multiplier :func:`query_noise_multiplier`.
* **Projected gradient voting**, G-PATE's aggregation (Long et al., NeurIPS 2021): each teacher's
  image gradient is projected onto a random Gaussian basis of a few dimensions, every projected
  coordinate clipped and discretised into bins, one vote per teacher and coordinate
  (:func:`projected_bin_votes`); each coordinate's histogram goes through PATE's Confident-GNMax
  (:func:`confident_gnmax`); answered coordinates become bin centres and are projected back
  (:func:`back_project`). One coordinate query: one teacher moves its vote from one bin to
  another (L2 change sqrt 2 of the histogram, 1 of its maximum), see
  :func:`confident_gnmax_noise_multiplier`.

Both are accounted in :mod:`bench.lib.accounting` (Gaussian compositions).
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


def projected_bin_votes(teachers, images: torch.Tensor, labels: torch.Tensor, proj: torch.Tensor, *,
                        clip: float, nbins: int, chunk: int = 1000) -> torch.Tensor:
    """G-PATE's discretised votes: every teacher's image gradient g_i (``teachers.image_grads``,
    ``chunk`` teachers at a time) projected onto ``proj`` (d, P), each coordinate clipped to
    [-clip, clip] and put in one of ``nbins`` equal bins (the right edge in the last bin, as
    numpy's histogram). Returns the vote histograms (B, P, nbins): one vote per teacher and
    coordinate, so every histogram sums to the number of teachers."""
    B = images.shape[0]
    P = proj.shape[1]
    counts = torch.zeros(B, P, nbins, device=images.device)
    for a in range(0, teachers.n, chunk):
        g = teachers.image_grads(images.detach(), labels, slice(a, a + chunk))  # (n, B, d)
        v = torch.matmul(g, proj).clamp(-clip, clip)  # (n, B, P)
        idx = ((v + clip) * (nbins / (2 * clip))).floor().long().clamp(0, nbins - 1)
        counts += torch.nn.functional.one_hot(idx, nbins).sum(0).to(counts.dtype)
        del g, v, idx
    return counts


def confident_gnmax(counts: torch.Tensor, n_teachers: int, *, thresh: float, sigma: float, sigma_thresh: float,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PATE's Confident-GNMax (Papernot et al., ICLR 2018, Algorithm 1) on each histogram (last
    dimension of ``counts``): answered where max count + N(0, sigma_thresh^2) >= thresh * N, then
    the answer is argmax(counts + N(0, sigma^2)); -1 where not answered. sigma = 0 (and
    sigma_thresh = 0) give the noise-free rule."""
    mx = counts.amax(-1)
    if sigma_thresh > 0:
        mx = mx + sigma_thresh * torch.randn(mx.shape, generator=generator, dtype=mx.dtype).to(mx.device)
    noisy = counts
    if sigma > 0:
        noisy = counts + sigma * torch.randn(counts.shape, generator=generator, dtype=counts.dtype).to(counts.device)
    ans = noisy.argmax(-1)
    return torch.where(mx >= thresh * n_teachers, ans, torch.full_like(ans, -1))


def back_project(answers: torch.Tensor, proj: torch.Tensor, *, clip: float, nbins: int) -> torch.Tensor:
    """Answered bins (B, P; -1 = not answered, contributes 0) -> bin centres -> image space (B, d)
    through the transposed projection."""
    width = 2 * clip / nbins
    centres = -clip + (answers.clamp_min(0).to(proj.dtype) + 0.5) * width
    centres = torch.where(answers >= 0, centres, torch.zeros_like(centres))
    return centres @ proj.T


def confident_gnmax_noise_multiplier(sigma: float, sigma_thresh: float) -> float:
    """One Confident-GNMax query as one Gaussian mechanism, data-independently: the threshold test
    adds N(0, sigma_thresh^2) to the maximum count (L2 sensitivity 1), the answer N(0, sigma^2) to
    each count (L2 sensitivity sqrt 2); their RDP adds, a / (2 sigma_thresh^2) + a / sigma^2, which
    is the RDP a / (2 z^2) of a sensitivity-1 Gaussian with z = (1 / sigma_thresh^2 + 2 / sigma^2)^-1/2.
    Both parts are charged for every query, answered or not (the number answered is not fixed in
    advance; charging it only when answered needs a privacy filter)."""
    if sigma <= 0 or sigma_thresh <= 0:
        raise ValueError("confident_gnmax_noise_multiplier: sigma and sigma_thresh must be > 0")
    return 1.0 / math.sqrt(1.0 / sigma_thresh ** 2 + 2.0 / sigma ** 2)
