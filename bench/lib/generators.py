"""Shared helpers of the attacks on released generators (``gen-distance``, ``gen-classifier``,
``gen-utility``, ``gen-reconstruction``).

A release carries a generator when ``release.modules`` has a ``"generator"`` entry (DPSD, DPDFD,
DataLens and the VAE-metric defense release one). Generators expose ``sample(n, generator=...)``
returning images in [0, 1] (DAFL generator of DPSD/DPDFD, the VAE decoder), or ``(images,
labels)`` for a conditional generator (DataLens). A release without a generator is not an
error: the attack returns an :class:`AttackResult` with no metrics and the reason in
``info["skipped"]`` (and in the cell log), so the cell still finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from bench.core.api import AttackResult, Release
from bench.lib.tasks import Split


def generator_of(release: Release) -> Optional[torch.nn.Module]:
    g = release.modules.get("generator")
    return g if g is not None and hasattr(g, "sample") else None


def skipped(ctx, attack: str, release: Release) -> AttackResult:
    """The result of a generator attack on a release without a (sampleable) generator."""
    have = sorted(release.modules)
    reason = (f"{attack}: the release of '{getattr(ctx, 'defense', '?')}' has no generator "
              f"(modules: {', '.join(have)}); attack skipped")
    ctx.log(reason)
    return AttackResult({}, {}, {"skipped": reason})


@torch.no_grad()
def sample_synthetic(generator: torch.nn.Module, n: int, seed: int, batch: int = 1000) -> Split:
    """``n`` synthetic images (float32 in [0, 1], on the CPU) and, for a conditional generator,
    its labels (else ``y`` = -1). Seeded: same seed, same samples."""
    generator.eval()
    gen = torch.Generator().manual_seed(int(seed))
    xs, ys = [], []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        out = generator.sample(b, generator=gen)
        if isinstance(out, tuple):
            x, y = out
            ys.append(torch.as_tensor(y).long().cpu())
        else:
            x = out
        xs.append(x.detach().float().cpu())
    x = torch.cat(xs).clamp(0, 1)
    y = torch.cat(ys) if ys else torch.full((len(x),), -1, dtype=torch.long)
    return Split(x, y, None)


def knn_distances(queries: torch.Tensor, synthetic: torch.Tensor, k: int = 1, chunk: int = 1024) -> np.ndarray:
    """(n, k) Euclidean pixel distances from every query image to its ``k`` closest synthetic
    images, ascending, in float64."""
    s = synthetic.flatten(1).double()
    k = min(int(k), len(s))
    out = []
    for i in range(0, len(queries), chunk):
        q = queries[i:i + chunk].flatten(1).double()
        d = torch.cdist(q, s)
        out.append(torch.topk(d, k, dim=1, largest=False).values)
    return torch.cat(out).numpy()


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random split of the evaluation set into two halves (index arrays): members
    and non-members are each split in half, so both halves stay balanced."""
    rng = np.random.default_rng([int(seed), 0x6A1F])
    a, b = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        h = len(idx) // 2
        a.append(idx[:h])
        b.append(idx[h:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """(TPR + TNR) / 2 of hard predictions (1 = member)."""
    pred = np.asarray(pred).astype(bool)
    labels = np.asarray(labels).astype(bool)
    return 0.5 * (float(pred[labels].mean()) + float((~pred[~labels]).mean()))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t of the rule "member iff score >= t" with the best balanced accuracy
    (TPR + 1 - FPR) / 2 on (scores, labels) (sklearn's ROC thresholds; the first best one, i.e.
    the highest threshold among ties)."""
    from sklearn.metrics import roc_curve  # imported here: keeps the CLI start-up torch-only

    fpr, tpr, thr = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64))
    i = int(np.argmax(tpr - fpr))
    return float(thr[i])


def synthetic_seed(cell_seed: int, sample_seed: int) -> int:
    return int(cell_seed) * 1_000_003 + 7919 * int(sample_seed) + 17


def privacy_loss_2fold(scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """P = mean held-out balanced accuracy of the threshold chosen on the other half (2-fold
    over :func:`halves`), and privacy_loss = (P - 0.5) / 0.5: no membership label of an example
    is used to pick the threshold applied to it."""
    a, b = halves(labels, seed)
    accs = []
    for fit, ev in ((a, b), (b, a)):
        t = best_threshold(scores[fit], labels[fit])
        accs.append(balanced_accuracy(scores[ev] >= t, labels[ev]))
    p = float(np.mean(accs))
    return {"heldout_balanced_acc": p, "privacy_loss": (p - 0.5) / 0.5}


# --------------------------------------------------------------------------------------------
# white-box access: the generator as a differentiable map from its latent space
# --------------------------------------------------------------------------------------------

@dataclass
class LatentDecoder:
    """A released generator seen as a differentiable map from its latent prior to images.

    ``prior`` is ``"uniform"`` (z in [-1, 1]^dim) or ``"normal"`` (z ~ N(0, I_dim));
    ``decode(z, y)`` returns images in [0, 1] with gradients (``y`` the integer labels of a
    conditional generator, ignored otherwise), exactly what ``sample`` returns for the same z
    and y (the generator in eval mode)."""

    dim: int
    prior: str
    conditional: bool
    decode: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
    kind: str


def latent_decoder(generator: torch.nn.Module) -> Optional[LatentDecoder]:
    """The white-box view of a released generator, or None for a generator whose latent
    interface is not known (an attack then skips it with the reason).

    Known: the family's conditional DCGAN generator (``bench.lib.synthetic.gan``: DataLens,
    DP-GAN, PATE-GAN, G-PATE, GS-WGAN, DP-FedAvg-GAN; z ~ U(-1, 1), ``forward(z, y)``, then the
    output blur / contrast its ``sample`` applies), and an unconditional generator with a
    ``latent_dim`` whose ``sample`` decodes z ~ N(0, I) with ``forward(z)`` (the DAFL generator of
    DPSD / DPDFD, the VAE-metric decoder). ``tests/test_generator_attacks.py`` checks that
    ``decode`` reproduces ``sample`` for each."""
    from bench.lib.synthetic.gan import CondDCGANGenerator  # imported here: keeps the CLI start-up torch-only

    g = generator
    if isinstance(g, CondDCGANGenerator):
        def decode(z, y):
            x = g(z, y)
            if g.output_blur > 0 or g.output_contrast == "autocontrast":
                from torchvision.transforms.v2.functional import autocontrast, gaussian_blur

                if g.output_blur > 0:
                    x = gaussian_blur(x, [3, 3], [g.output_blur, g.output_blur])
                if g.output_contrast == "autocontrast":
                    x = autocontrast(x)
            return x

        return LatentDecoder(int(g.z_dim), "uniform", True, decode, type(g).__name__)
    dim = getattr(g, "latent_dim", None)
    if isinstance(dim, int) and dim > 0 and hasattr(g, "sample"):
        return LatentDecoder(dim, "normal", False, lambda z, y=None: g(z), type(g).__name__)
    return None
