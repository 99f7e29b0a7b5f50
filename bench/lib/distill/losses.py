"""Losses of the data-free distillation defenses: the DAFL generator losses (one-hot, information
entropy, activation; evaluated on the **student** only), and decoupled knowledge distillation
(DKD, Zhao et al. CVPR 2022) and plain KL distillation as per-sample losses, whose gradient
w.r.t. the student's logits (:func:`per_sample_logit_grad`) is what the data-sensitive mechanism
privatizes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


class BNStatisticsLoss:
    """DeepInversion's feature-statistics prior (Yin et al., CVPR 2020), used by DENSE's generator:
    a forward hook on every ``BatchNorm2d`` of the given (frozen, eval-mode) models records, for
    the batch passing through, ``||mu_batch - running_mean||_2 + ||var_batch - running_var||_2``
    of the layer's input (per-channel mean and biased variance over batch and space);
    :meth:`value` is the sum over all hooked layers of the last forward pass, and resets. Use as
    a context manager (the hooks are removed on exit)."""

    def __init__(self, models):
        from torch import nn

        self.layers = [m for model in models for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.terms: list[torch.Tensor] = []
        self.handles = []

    def _hook(self, module, inputs, _output):
        x = inputs[0]
        mean = x.mean((0, 2, 3))
        var = x.transpose(0, 1).reshape(x.shape[1], -1).var(1, unbiased=False)
        self.terms.append(torch.linalg.vector_norm(module.running_mean - mean)
                          + torch.linalg.vector_norm(module.running_var - var))

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def value(self) -> torch.Tensor:
        out = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return out
