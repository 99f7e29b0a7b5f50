"""``tldmi``: Transfer-learning-based defense against model inversion (Ho, Koh, Chandrasegaran, Nguyen,
Cheung, "Model Inversion Robustness: Can Transfer Learning Help?", CVPR 2024; code
``hosytuyen/TL-DMI``).

1. **Pre-train** the classifier on public data (cached, shared across freezing settings).
2. **Freeze** the first ``freeze_blocks`` blocks: their parameters (``requires_grad = False``, not
   given to the optimizer) **and** their BatchNorm running statistics (the frozen blocks stay in
   eval mode while the rest trains; the original code only sets ``requires_grad``, which leaves
   BatchNorm statistics moving).
3. **Fine-tune** the remaining blocks and a new head on the private members; the epoch is
   selected on the validation split.

Public data (``public``):

* inversion protocol: the task's own ``public`` split (the public classes, e.g. MNIST digits 5-9
  when 0-4 are private): the paper's setting, public data of the same domain with disjoint
  identities/classes;
* classification protocol (all classes private, every training row is a member, validation or
  non-member row): another dataset of the same image format, ``public_dataset`` (``auto``:
  Fashion-MNIST for MNIST and MNIST for Fashion-MNIST), all of its training split. For datasets
  with no such partner (sklearn ``digits``) ``auto`` falls back to the inversion protocol's
  public split, which **overlaps the members** of the classification protocol; the release says
  so in ``info["public_overlaps_members"]``.

Not differentially private: epsilon = inf, unit ``none``. Architecture ``tl-cnn``: three
Conv-BN-ReLU-MaxPool blocks and a hidden FC block (the MCNN shape of the GMI MNIST setting,
narrowed for CPU), then the linear output layer, which is always trained.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from bench.api import BenchError, Defense, PrivacyReport, Release, register_defense, val_selection
from bench.lib import synthetic as S
from bench.lib.datasets.base import dataset_info
from bench.lib.models import Classifier, _flat_dim, build_model, register_arch, spec_for
from bench.lib.tasks import Split
from bench.lib.train import fit_classifier, seed_everything

#: bump when the pre-training procedure changes (part of the shared artifact's key)
PRETRAIN_VERSION = 1
@register_arch("tl-cnn")
class TLCNN(Classifier):
    """Conv(w)-BN-ReLU-MaxPool2 -> Conv(2w)-... -> Conv(4w)-... -> FC(hidden)-ReLU -> FC(K).

    ``blocks()`` = [conv block 1, 2, 3, FC hidden]; the first ``frozen_blocks`` of them keep
    their parameters and BatchNorm statistics: they never take gradients and stay in eval mode
    even when the model is put in training mode."""

    def __init__(self, in_channels=1, image_size=28, num_classes=10, width=32, hidden=128, frozen_blocks=0):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width))
        d = _flat_dim(self.features, in_channels, image_size)
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.frozen_blocks = 0
        self.freeze(frozen_blocks)

    def blocks(self) -> list[nn.Module]:
        return [self.features[0], self.features[1], self.features[2], self.head[0]]

    def freeze(self, k: int) -> None:
        if not 0 <= k <= len(self.blocks()):
            raise BenchError(f"tl-cnn: frozen_blocks must be in 0..{len(self.blocks())}, got {k}")
        self.frozen_blocks = k
        for i, b in enumerate(self.blocks()):
            for p in b.parameters():
                p.requires_grad_(i >= k)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for b in self.blocks()[:getattr(self, "frozen_blocks", 0)]:
            b.eval()
        return self


@dataclass
class TLDMIConfig:
    arch: str = "tl-cnn"
    width: int = 32
    hidden: int = 128
    #: number of leading blocks frozen after pre-training (0..4: conv1, conv2, conv3, FC hidden);
    #: 2 of 3 conv blocks ~ the paper's 8 of 13 VGG16 conv layers
    freeze_blocks: int = 2
    #: public data: auto | inversion-public | dataset (then ``public_dataset`` names it)
    public: Literal["auto", "inversion-public", "dataset"] = "auto"
    public_dataset: Optional[str] = None
    pretrain_epochs: int = 5
    pretrain_lr: float = 1e-3
    pretrain_batch_size: int = 128
    #: cap on public examples used for pre-training (None = all)
    pretrain_max: Optional[int] = None
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: Literal["adam", "sgd"] = "adam"

    def validate(self):
        if not 0 <= self.freeze_blocks <= 4:
            raise BenchError("tldmi: freeze_blocks must be in 0..4")
        if self.pretrain_epochs <= 0 or self.epochs <= 0:
            raise BenchError("tldmi: pretrain_epochs and epochs must be positive")
        if self.public == "dataset" and not self.public_dataset:
            raise BenchError("tldmi: public: dataset needs public_dataset")


def _rows_hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a), dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def public_data(ctx, c: TLDMIConfig) -> tuple[Split, dict]:
    """The public pre-training split (labels remapped to 0..P-1) and a JSON description of it."""
    task = ctx.task
    how = c.public
    name = c.public_dataset
    if how == "auto":
        if task.public is not None:
            how = "task-public"
        elif dataset_info(task.dataset).public_partner:
            how, name = "dataset", dataset_info(task.dataset).public_partner
        else:
            how = "inversion-public"
    if how == "task-public" or (how == "inversion-public" and task.public is not None):
        pub, src = task.public, f"{task.dataset}: the task's public split (classes {task.info.get('public_classes')})"
        overlaps = False
    elif how == "inversion-public":
        pub = ctx.task_for("inversion").public
        src = f"{task.dataset}: the inversion protocol's public classes (overlap the classification members)"
        overlaps = True
    else:
        from bench.lib.tasks import build_task

        root = getattr(ctx, "data_root", None)
        size = task.image_shape[-1]
        ptask = build_task(name, {"kind": "classification", "image_size": size}, 0, root)
        if tuple(ptask.image_shape) != tuple(task.image_shape):
            raise BenchError(f"tldmi: public dataset {name} has images {ptask.image_shape}, the task {task.image_shape}")
        pub = Split(torch.cat([ptask.members.x, ptask.val.x, ptask.nonmembers.x]),
                    torch.cat([ptask.members.y, ptask.val.y, ptask.nonmembers.y]),
                    np.concatenate([ptask.members.index, ptask.val.index, ptask.nonmembers.index]))
        src = f"{name}: its whole training split (another dataset)"
        overlaps = False
    classes = torch.unique(pub.y)
    remap = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    remap[classes] = torch.arange(len(classes))
    pub = Split(pub.x, remap[pub.y], pub.index)
    if c.pretrain_max is not None and len(pub) > c.pretrain_max:
        keep = np.sort(np.random.default_rng(0).choice(len(pub), c.pretrain_max, replace=False))
        pub = pub.subset(keep)
    desc = {"source": src, "dataset": name if how == "dataset" else task.dataset, "n": len(pub),
            "classes": len(classes), "rows": _rows_hash(pub.index if pub.index is not None else []),
            "overlaps_members": overlaps}
    return pub, desc


def pretrain(ctx, c: TLDMIConfig) -> tuple[dict, dict]:
    """The pre-trained state dict (a cached, shared artifact) and the public data's description."""
    pub, desc = public_data(ctx, c)
    spec = spec_for(ctx.task, {"name": c.arch, "width": c.width, "hidden": c.hidden, "num_classes": desc["classes"]})
    key = {"v": PRETRAIN_VERSION, "public": desc, "spec": spec, "epochs": c.pretrain_epochs, "lr": c.pretrain_lr,
           "batch_size": c.pretrain_batch_size, "seed": ctx.seed}

    def build():
        gen = seed_everything(ctx.seed * 101 + 1)
        tr, va = S.holdout(len(pub), 0.1, ctx.seed * 101 + 2)
        model = build_model(spec)
        model, hist = fit_classifier(model, pub.subset(tr), pub.subset(va), epochs=c.pretrain_epochs,
                                     lr=c.pretrain_lr, batch_size=c.pretrain_batch_size, device=ctx.device,
                                     generator=gen, progress=ctx.progress)
        out = {f"sd.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
        out["__meta__"] = {"public_val_acc": max(hist["val_acc"]), "history": hist}
        return out

    bundle = ctx.artifact("tldmi-pretrain", key, build)
    state = {k[3:]: v for k, v in bundle.items() if k.startswith("sd.")}
    return state, {**desc, **bundle.get("__meta__", {})}


def load_backbone(model: TLCNN, state: dict) -> list[str]:
    """Copy every pre-trained tensor whose name and shape match (all but the output layer)."""
    own = model.state_dict()
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return loaded


@register_defense("tldmi")
class TLDMI(Defense):
    """Public pre-training, first blocks frozen (parameters and BatchNorm statistics), fine-tuning."""

    Config = TLDMIConfig
    privacy_unit = "none"
    paper = "Ho, Koh, Chandrasegaran, Nguyen, Cheung, Model Inversion Robustness: Can Transfer Learning Help?, CVPR 2024"

    def fit(self, ctx) -> Release:
        c = self.config
        state, desc = pretrain(ctx, c)
        gen = seed_everything(ctx.seed)
        spec = spec_for(ctx.task, {"name": c.arch, "width": c.width, "hidden": c.hidden,
                                   "frozen_blocks": c.freeze_blocks})
        model = build_model(spec)
        loaded = load_backbone(model, state)
        model.freeze(c.freeze_blocks)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        model, hist = fit_classifier(model, ctx.task.members, ctx.task.val, epochs=c.epochs, lr=c.lr,
                                     batch_size=c.batch_size, optimizer=c.optimizer, device=ctx.device,
                                     generator=gen, progress=ctx.progress)
        privacy = PrivacyReport(math.inf, 0.0, "none", "none",
                                "transfer learning: public pre-training, frozen early blocks (no formal guarantee)",
                                {"freeze_blocks": c.freeze_blocks}, val_selection("the fine-tuning epoch"))
        info = {"history": hist, "selected_by": "val_acc", "freeze_blocks": c.freeze_blocks,
                "trainable_params": trainable, "total_params": total, "pretrained_tensors": len(loaded),
                "public": {k: v for k, v in desc.items() if k != "history"},
                "public_overlaps_members": desc["overlaps_members"]}
        return Release({"model": model.cpu().eval()}, {"model": spec}, privacy, info)


def frozen_snapshot(model: TLCNN) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm statistics) of the frozen blocks, cloned (tests)."""
    out = {}
    for i, b in enumerate(model.blocks()[:model.frozen_blocks]):
        for k, v in b.state_dict().items():
            out[f"{i}.{k}"] = v.detach().clone()
    return out

