"""``gen-reconstruction``: white-box membership inference against a released generator by latent
reconstruction (Chen, Yu, Zhang & Fritz, "GAN-Leaks: A Taxonomy of Membership Inference Attacks
against Generative Models", CCS 2020, the white-box / partial black-box attack; Hilprecht et al.,
PETS 2019, reconstruction attack).

Where ``gen-distance`` asks how close the nearest of N random samples comes to an image, this
attack searches the generator's latent space for the sample closest to each image: for every
candidate x (with its label y for a conditional generator -- the attacker knows the record, as in
every membership attack here) it minimises

    L(z) = mean_pixels (G(z, y) - x)^2 + lambda * (||z||^2 / d - 1)^2     (normal prior only)

over z from ``restarts`` random starts drawn from the prior, with Adam for ``steps`` steps, and
scores x by ``-min_restarts ||G(z*, y) - x||_2``: a generator that memorised a member can
reproduce it more closely than a non-member. A uniform prior (the family's conditional DCGAN,
z in [-1, 1]) is kept in its box by the reparametrisation z = tanh(w); a normal prior (the DAFL
generator, the VAE decoder) by GAN-Leaks' norm regulariser with weight ``latent_penalty``.

Differences from GAN-Leaks, stated: Adam on all candidates in batches instead of L-BFGS per
image; pixel L2 only (GAN-Leaks adds an LPIPS term, whose ImageNet weights are not available
offline); no calibration by a reference generator trained on population data (GAN-Leaks'
calibrated attack; it would need a second generator fit per cell). The generator is used in eval
mode (BatchNorm statistics frozen), so the candidates of a batch do not interact.

Evaluation set, 2-fold privacy loss and the membership summary are those of ``gen-distance``
(``balanced_eval_sets``; ``P`` = mean held-out balanced accuracy, ``privacy_loss`` = (P - 0.5) /
0.5). A release without a generator, or with a generator whose latent interface is unknown
(``bench.lib.generators.latent_decoder``), is skipped with the reason in ``info["skipped"]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.generators import generator_of, latent_decoder, privacy_loss_2fold, skipped
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.references import SUMMARY_METRICS, balanced_eval_sets, eval_split, summarize


@dataclass
class GenReconstructionConfig:
    #: random starts per candidate (the best reconstruction counts)
    restarts: int = 2
    #: Adam steps per start
    steps: int = 200
    lr: float = 0.1
    #: weight of GAN-Leaks' latent-norm regulariser (normal priors only)
    latent_penalty: float = 0.01
    #: candidates optimised together
    batch_size: int = 500
    #: members and non-members evaluated (each)
    n_eval: int = 1000
    n_boot: int = 1000
    #: seed offset of the random starts
    init_seed: int = 0

    def validate(self):
        if min(self.restarts, self.steps, self.batch_size) < 1:
            raise BenchError("gen-reconstruction: restarts, steps and batch_size must be >= 1")
        if not self.lr > 0 or not self.latent_penalty >= 0:
            raise BenchError("gen-reconstruction: lr must be > 0 and latent_penalty >= 0")
        if self.n_eval < 2:
            raise BenchError("gen-reconstruction: n_eval must be >= 2")


def reconstruct(dec, x: torch.Tensor, y: torch.Tensor, *, restarts: int, steps: int, lr: float,
                latent_penalty: float, batch_size: int, seed: int, device, progress=lambda it, **k: it) -> np.ndarray:
    """The smallest pixel L2 distance ``min_r ||decode(z_r*, y) - x||_2`` per image (float64),
    z_r* the latent reached by Adam from the r-th random start (see the module docstring)."""
    gen = torch.Generator().manual_seed(int(seed))
    best = np.full(len(x), np.inf)
    d = dec.dim
    for _ in progress(range(restarts), desc="reconstruction restarts"):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            yb = y[i:i + batch_size].to(device)
            n = len(xb)
            if dec.prior == "uniform":
                z0 = (torch.rand(n, d, generator=gen) * 2 - 1).clamp(-0.999, 0.999)
                w = torch.atanh(z0).to(device).requires_grad_(True)
            else:
                w = torch.randn(n, d, generator=gen).to(device).requires_grad_(True)
            opt = torch.optim.Adam([w], lr=lr)
            for _ in range(steps):
                z = torch.tanh(w) if dec.prior == "uniform" else w
                err = (dec.decode(z, yb) - xb).flatten(1).pow(2).mean(1)
                loss = err
                if dec.prior == "normal" and latent_penalty > 0:
                    loss = loss + latent_penalty * (z.pow(2).sum(1) / d - 1).pow(2)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
            with torch.no_grad():
                z = torch.tanh(w) if dec.prior == "uniform" else w
                dist = (dec.decode(z, yb) - xb).flatten(1).double().norm(dim=1).cpu().numpy()
            best[i:i + n] = np.minimum(best[i:i + n], dist)
    return best


@register_attack("gen-reconstruction")
class GenReconstruction(Attack):
    """White-box membership inference on a released generator: latent reconstruction (GAN-Leaks)."""

    Config = GenReconstructionConfig
    kind = "generator"
    metrics = (*SUMMARY_METRICS,
               "heldout_balanced_acc", "privacy_loss", "mean_error_members", "mean_error_nonmembers", *CLIENT_VIEW_METRICS)
    summary = ()
    paper = ("Chen, Yu, Zhang, Fritz (GAN-Leaks), CCS 2020: white-box latent reconstruction; "
             "Hilprecht, Härterich, Bernau, PETS 2019")

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        g = generator_of(release)
        if g is None:
            return skipped(ctx, "gen-reconstruction", release)
        dec = latent_decoder(g)
        if dec is None:
            reason = (f"gen-reconstruction: the generator of '{getattr(ctx, 'defense', '?')}' "
                      f"({type(g).__name__}) has no known latent interface; attack skipped")
            ctx.log(reason)
            return AttackResult({}, {}, {"skipped": reason})
        members, nonmembers = balanced_eval_sets(ctx.task, c.n_eval, ctx.seed)
        ev, labels = eval_split(members, nonmembers)
        g.eval()
        flags = [p.requires_grad for p in g.parameters()]
        for p in g.parameters():  # gradients w.r.t. the latent only; the release is left as it was
            p.requires_grad_(False)
        try:
            err = reconstruct(dec, ev.x, ev.y, restarts=c.restarts, steps=c.steps, lr=c.lr,
                              latent_penalty=c.latent_penalty, batch_size=c.batch_size,
                              seed=int(ctx.seed) * 7_919 + 101 * int(c.init_seed) + 3, device=ctx.device,
                              progress=ctx.progress)
        finally:
            for p, f in zip(g.parameters(), flags):
                p.requires_grad_(f)
        scores = -err
        extra = privacy_loss_2fold(scores, labels, ctx.seed)
        extra["mean_error_members"] = float(err[labels == 1].mean())
        extra["mean_error_nonmembers"] = float(err[labels == 0].mean())
        info = {"score": "-min over restarts of ||G(z*, y) - x||_2 (pixels in [0, 1])",
                "generator": dec.kind, "prior": dec.prior, "conditional": dec.conditional,
                "P": "mean held-out balanced accuracy, 2-fold over stratified halves"}
        return summarize(ctx, release, scores, labels, n_boot=c.n_boot, evaluated=ev, refs=None, started=t0,
                         extra_metrics=extra,
                         extra_arrays={"eval_rows": ev.index.astype(np.int64), "reconstruction_error": err},
                         info=info)
