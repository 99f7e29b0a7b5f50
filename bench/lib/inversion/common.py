"""Small helpers every part of the inversion library uses: content hashes of tensors and models
(parts of artifact keys), the key of the attacker's public split, state bundles (a module's
weights in an artifact and back), ``freeze``, nested-config resolution, endless shuffled
batches, batched prediction, resizing to a protocol's image size, and PLG-MI's max-margin loss
(shared by its prior and its attack)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.config import make_config
from bench.core.errors import BenchError

#: part of every inversion artifact key (judge and GAN priors): bump when the meaning of a shared
#: artifact changes without a change to the code the harness keys it on (its build's module and
#: that module's project imports)
ARTIFACT_VERSION = "inv-1"


def tensor_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's weights and buffers (identifies a target across cells)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def public_key(task) -> dict:
    """What a prior trained on the attacker's public split depends on."""
    if task.public is None or len(task.public) == 0:
        raise BenchError(f"{task.dataset}: inversion attacks need the inversion protocol's public split")
    return {"dataset": task.dataset, "image_shape": list(task.image_shape),
            "public_classes": task.info.get("public_classes"), "public": tensor_hash(task.public.x)}


def state_bundle(prefix: str, module: nn.Module) -> dict:
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_state(module: nn.Module, bundle: dict, prefix: str) -> nn.Module:
    p = prefix + "."
    module.load_state_dict({k[len(p):]: v for k, v in bundle.items() if isinstance(k, str) and k.startswith(p)
                            and isinstance(v, torch.Tensor)})
    return module.eval()


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve(cls: type, values: Any, where: str):
    """A nested config (e.g. ``gan: {dim: 16}``) as an instance of its dataclass ``cls``: a
    mapping (or None) is validated against it (also called from the attacks' ``validate`` so that
    a bad key fails at suite-parse time); an instance of ``cls`` is validated and returned as is."""
    if isinstance(values, cls):
        check = getattr(values, "validate", None)
        if callable(check):
            check()
        return values
    return make_config(cls, dict(values or {}), where)


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Endless shuffled index batches (full batches only when n allows)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        stop = n - batch_size + 1 if n >= batch_size else 1
        for i in range(0, stop, batch_size):
            yield perm[i:i + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device, batch_size: int = 512, features: bool = False):
    """Logits (or penultimate features) of ``model`` on ``x``, in batches, on the CPU."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        out.append((model.penultimate(xb) if features else model(xb)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def resize(x: torch.Tensor, shape) -> torch.Tensor:
    """Resize (N, C, H, W) images to ``shape`` = (C, H, W) as the task protocol does."""
    if tuple(x.shape[-2:]) == tuple(shape[-2:]):
        return x
    return F.interpolate(x, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)


def max_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PLG-MI's max-margin loss, per example: -logit_y + max_{j != y} logit_j."""
    real = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - real
