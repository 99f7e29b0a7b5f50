"""Kernel dependence measures between a batch of inputs, representations and labels, for the
model-inversion defenses that regularise them (BiDO, Peng et al. KDD 2022).

* :func:`kernel_matrix` -- Gaussian kernel exp(-||a - b||^2 / (2 sigma^2 d)) with the bandwidth
  scaled by the feature dimension d (the BiDO code's convention, sigma = 5), or linear (one-hot
  labels);
* :func:`hsic_normalized` -- the normalised HSIC of the HSIC-bottleneck family (Ma et al. 2020,
  used by BiDO-HSIC): sum(R_x * R_y^T) with R = K H (K H + eps m I)^-1, H = I - 11^T / m (the
  kernel centred on one side, as in the BiDO code's ``hsic_normalized_cca``);
* :func:`coco` -- BiDO-COCO's constrained-covariance surrogate: sqrt(||H K H H L H||_F) / m (the
  BiDO code's ``coco_normalized_cca``: a Frobenius norm where Gretton et al. 2005 take the largest
  singular value).

All are differentiable in both arguments (torch), O(m^2 d) for a batch of m rows, plus an m x m
inverse or eigen-decomposition.
"""

from __future__ import annotations

import torch


def kernel_matrix(x: torch.Tensor, sigma: float = 5.0, kind: str = "gaussian") -> torch.Tensor:
    """The m x m kernel of the rows of ``x`` (flattened to (m, d))."""
    x = x.reshape(len(x), -1).float()
    if kind == "linear":
        return x @ x.T
    if kind != "gaussian":
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kind!r}")
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    return torch.exp(-d2 / (2 * sigma ** 2 * x.shape[1]))


def _centring(m: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(m, dtype=like.dtype, device=like.device) - 1.0 / m


def hsic_normalized(x: torch.Tensor, y: torch.Tensor, sigma: float = 5.0, y_kernel: str = "gaussian",
                    eps: float = 1e-5) -> torch.Tensor:
    """Normalised HSIC between the rows of ``x`` (Gaussian kernel) and ``y`` (``y_kernel``):
    sum(R_x * R_y^T), R = K H (K H + eps m I)^-1; grows with the dependence, at most the batch
    size m."""
    m = len(x)
    eye = torch.eye(m, dtype=torch.float32, device=x.device)
    h = _centring(m, eye)
    kx, ky = kernel_matrix(x, sigma) @ h, kernel_matrix(y, sigma, y_kernel) @ h
    rx = kx @ torch.linalg.inv(kx + eps * m * eye)
    ry = ky @ torch.linalg.inv(ky + eps * m * eye)
    return (rx * ry.T).sum()


def coco(x: torch.Tensor, y: torch.Tensor, sigma: float = 5.0, y_kernel: str = "gaussian") -> torch.Tensor:
    """BiDO-COCO's dependence: sqrt(||(H K_x H)(H K_y H)||_F) / m."""
    m = len(x)
    h = _centring(m, x.float())
    kx, ky = h @ kernel_matrix(x, sigma) @ h, h @ kernel_matrix(y, sigma, y_kernel) @ h
    return torch.linalg.matrix_norm(kx @ ky).clamp_min(1e-12).sqrt() / m
