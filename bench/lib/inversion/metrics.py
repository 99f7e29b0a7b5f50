"""The inversion metrics, pure functions on reconstructions and private examples: top-k attack
accuracy, KNN distance in (judge) feature space, FID from feature sets, and LPIPS (``lpips``
package, AlexNet v0.1): loading torchvision's ImageNet AlexNet weights from the torch hub cache
into its trunk (hash-checked, tensors only, nothing downloaded; unavailable with a reason when the
weights are missing) and per-pair distances."""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError


def topk_correct(logits: torch.Tensor | np.ndarray, labels, k: int = 1) -> np.ndarray:
    """Per example: is ``labels`` among the ``k`` largest logits? (bool array)."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(1).numpy()


def knn_distance(rec_feats, rec_labels, priv_feats, priv_labels) -> tuple[np.ndarray, np.ndarray]:
    """Per reconstruction: the squared L2 distance to the nearest private example of the same
    class, in (evaluator) feature space; also returns the index of that neighbour.
    Returns ``(dist, index)``; a class with no private example gives NaN / -1."""
    rf = torch.as_tensor(np.asarray(rec_feats), dtype=torch.float64)
    pf = torch.as_tensor(np.asarray(priv_feats), dtype=torch.float64)
    rl, pl = np.asarray(rec_labels), np.asarray(priv_labels)
    dist = np.full(len(rf), np.nan)
    index = np.full(len(rf), -1, dtype=np.int64)
    for c in np.unique(rl):
        ri, pi = np.flatnonzero(rl == c), np.flatnonzero(pl == c)
        if len(pi) == 0:
            continue
        d = torch.cdist(rf[ri], pf[pi]).pow(2)
        m, j = d.min(1)
        dist[ri] = m.numpy()
        index[ri] = pi[j.numpy()]
    return dist, index


def fid_from_features(f1, f2, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017), with
    ``scipy.linalg.sqrtm``; an ``eps`` ridge is added when the product is singular (as in
    pytorch-fid). Needs at least two rows per set."""
    from scipy import linalg

    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if len(f1) < 2 or len(f2) < 2:
        return float("nan")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))


def alexnet_weights_path() -> Optional[str]:
    """Where torchvision keeps the ImageNet AlexNet weights LPIPS needs (None if absent)."""
    try:
        from torchvision.models import AlexNet_Weights

        name = os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    except Exception:  # pragma: no cover - old torchvision
        name = "alexnet-owt-7be5be79.pth"
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    return path if os.path.exists(path) else None


_LPIPS: dict = {}


def load_alexnet_trunk(net: nn.Module, path: str) -> None:
    """Load torchvision's ImageNet AlexNet ``features`` from ``path`` into an lpips AlexNet trunk
    (``slice1..5``, children named by their index in ``features``). The file's SHA-256 must start
    with the hex digits in its name (torch.hub's convention, ``alexnet-owt-7be5be79.pth``) and it
    is read with ``weights_only=True``: tensors only, no code."""
    m = torch.hub.HASH_REGEX.search(os.path.basename(path))
    if m is None or len(m.group(1)) < 6:
        raise BenchError(f"{path}: no hash prefix in the file name, refusing to load it")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(m.group(1)):
        raise BenchError(f"{path}: SHA-256 {h.hexdigest()[:12]}... does not match the {m.group(1)} in its name "
                         "(a corrupt or replaced file), refusing to load it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = {}
    for sname in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for idx, layer in getattr(net, sname).named_children():
            for pname in dict(layer.named_parameters()):
                own[f"{sname}.{idx}.{pname}"] = state[f"features.{idx}.{pname}"]
    net.load_state_dict(own, strict=True)


def lpips_model(random_backbone: bool = False):
    """``(model, reason)``: LPIPS (AlexNet, v0.1) with the pretrained backbone when its weights
    are in the torch hub cache; ``(None, reason)`` otherwise (nothing is downloaded).
    ``random_backbone=True`` builds it with a randomly initialised backbone (tests only: the
    numbers mean nothing)."""
    key = "rand" if random_backbone else "pretrained"
    if key in _LPIPS:
        return _LPIPS[key]
    try:
        import lpips
    except ImportError as e:
        out = (None, f"LPIPS unavailable: the lpips package is not installed ({e})")
        _LPIPS[key] = out
        return out
    if not random_backbone and alexnet_weights_path() is None:
        out = (None, "LPIPS unavailable: the ImageNet AlexNet backbone weights are not in the torch hub cache "
                     f"({os.path.join(torch.hub.get_dir(), 'checkpoints')}) and nothing is downloaded")
        _LPIPS[key] = out
        return out
    try:
        # the trunk is always built random here and the ImageNet weights are loaded below: lpips
        # itself would load them through torchvision with weights_only=False (a planted pickle in
        # the hub cache would run)
        m = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
        if not random_backbone:
            load_alexnet_trunk(m.net, alexnet_weights_path())
    except Exception as e:  # a failed backbone load is reported, never fatal
        out = (None, f"LPIPS unavailable: {type(e).__name__}: {' '.join(str(e).split())}")
        _LPIPS[key] = out
        return out
    for p in m.parameters():
        p.requires_grad_(False)
    out = (m, "LPIPS (AlexNet, v0.1): " + ("RANDOM backbone (test only)" if random_backbone else "pretrained backbone"))
    _LPIPS[key] = out
    return out


@torch.no_grad()
def lpips_distance(model, x: torch.Tensor, y: torch.Tensor, size: int = 64, batch_size: int = 256) -> np.ndarray:
    """Per pair LPIPS between images ``x`` and ``y`` in [0, 1] (grey images are repeated to three
    channels and upsampled to ``size`` px, since AlexNet's 11x11/stride-4 stem needs >= ~32 px)."""
    out = []
    for i in range(0, len(x), batch_size):
        a, b = x[i:i + batch_size].float(), y[i:i + batch_size].float()
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        if a.shape[-1] < size:
            a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False)
        dev = next(model.parameters()).device
        out.append(model(a.to(dev) * 2 - 1, b.to(dev) * 2 - 1).view(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
