"""The evaluation every inversion attack shares: :func:`evaluate_inversion` scores the
reconstructions with the judge (top-k accuracy, the attacker's own pick, KNN distance, FID and
LPIPS against the target's private members) and :func:`common_eval_kwargs` reads the evaluation
options every attack config carries."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.lib.inversion.common import predict
from bench.lib.inversion.judge import get_evaluator
from bench.lib.inversion.metrics import (
    fid_from_features,
    knn_distance,
    lpips_distance,
    lpips_model,
    topk_correct,
)

#: the metrics :func:`evaluate_inversion` reports for every inversion attack; attacks declare
#: ``metrics = (*EVALUATION_METRICS, <their own>)``
EVALUATION_METRICS = ("top1", "top1_std", "top2", "top1_all", "top5_all", "top1_selected", "knn_dist", "fid",
                      "lpips", "target_acc", "eval_test_acc", "n_reconstructions")


def evaluate_inversion(ctx, images: torch.Tensor, target: nn.Module, *, evaluator: Any = None,
                       lpips: bool = True, max_private: int = 0, select_scores: Optional[torch.Tensor] = None,
                       lpips_random_backbone: bool = False) -> tuple[dict, dict, dict]:
    """Score reconstructions ``images`` of shape (K, N, C, H, W) (N per target class: restarts
    or samples) with the judge. Returns ``(metrics, arrays, info)``.

    Metrics: ``top1`` / ``top1_std`` (mean and sample std over the N columns of the judge's
    accuracy over the K classes, the judge restricted to the private classes: chance 1/K),
    ``top2``; ``top1_all`` / ``top5_all`` (argmax over all the judge's classes: a
    reconstruction that looks like a public class counts as a miss); ``top1_selected`` (the
    reconstruction per class the attacker picks by the target's own confidence, GMI's rule);
    ``target_acc``; ``knn_dist`` (squared L2 to the nearest same-class private member in judge
    features); ``fid`` (judge features, all reconstructions vs the private members); ``lpips``
    (to that nearest member; NaN when unavailable, the reason in ``info``). ``evaluator``: the
    judge's config (an :class:`~bench.lib.inversion.judge.EvaluatorConfig`, a mapping of
    overrides of its defaults, or None)."""
    task = ctx.task
    K, N = images.shape[:2]
    if K != task.num_classes:
        raise ValueError(f"expected images for {task.num_classes} classes, got {K}")
    flat = images.reshape(K * N, *images.shape[2:]).float().clamp(0, 1)
    labels = torch.arange(K).repeat_interleave(N)
    E, einfo = get_evaluator(ctx, evaluator)
    private = task.info.get("private_classes") or list(range(K))
    priv_cls = torch.as_tensor(private, dtype=torch.long)
    e_logits = predict(E, flat, ctx.device)
    e_feats = predict(E, flat, ctx.device, features=True)
    restricted = e_logits[:, priv_cls]
    c1 = topk_correct(restricted, labels, 1).reshape(K, N)
    c2 = topk_correct(restricted, labels, 2).reshape(K, N)
    glob = priv_cls[labels]
    c1a = topk_correct(e_logits, glob, 1).reshape(K, N)
    c5a = topk_correct(e_logits, glob, 5).reshape(K, N)
    per_col = c1.mean(0)  # accuracy over the classes, per restart / sample
    t_logits = predict(target, flat, ctx.device)
    t_conf = F.softmax(t_logits, 1).gather(1, labels[:, None]).view(K, N)
    scores = t_conf if select_scores is None else select_scores.view(K, N).float().cpu()
    sel = scores.argmax(1)
    metrics = {
        "top1": float(per_col.mean()), "top1_std": float(per_col.std(ddof=1)) if N > 1 else 0.0,
        "top2": float(c2.mean()), "top1_all": float(c1a.mean()), "top5_all": float(c5a.mean()),
        "top1_selected": float(c1[np.arange(K), sel.numpy()].mean()),
        "target_acc": float((t_logits.argmax(1) == labels).float().mean()),
        "n_reconstructions": float(K * N), "eval_test_acc": einfo["eval_test_acc"],
    }
    # private reference: the target's own training members (what inversion tries to recover)
    mem = task.members
    if max_private and len(mem) > max_private:
        g = torch.Generator().manual_seed(ctx.seed)
        mem = mem.subset(np.sort(torch.randperm(len(mem), generator=g)[:max_private].numpy()))
    p_feats = predict(E, mem.x, ctx.device, features=True)
    dist, nn_idx = knn_distance(e_feats, labels, p_feats, mem.y)
    metrics["knn_dist"] = float(np.nanmean(dist))
    metrics["fid"] = fid_from_features(e_feats.numpy(), p_feats.numpy())
    info = {"evaluator": einfo, "private_classes": list(private), "lpips": ""}
    if lpips:
        model, reason = lpips_model(random_backbone=lpips_random_backbone)
        info["lpips"] = reason
        if model is not None:
            ok = nn_idx >= 0
            d = lpips_distance(model, flat[ok], mem.x[nn_idx[ok]])
            metrics["lpips"] = float(d.mean()) if len(d) else float("nan")
        else:
            metrics["lpips"] = float("nan")
    else:
        info["lpips"] = "LPIPS not computed (lpips: false)"
        metrics["lpips"] = float("nan")
    arrays = {"images": images.detach().cpu().float().numpy().astype(np.float32),
              "eval_pred": restricted.argmax(1).view(K, N).numpy().astype(np.int16),
              "eval_pred_all": e_logits.argmax(1).view(K, N).numpy().astype(np.int16),
              "target_conf": t_conf.numpy().astype(np.float32),
              "selected": sel.numpy().astype(np.int16),
              "classes": np.asarray(private, dtype=np.int16)}
    return metrics, arrays, info


def common_eval_kwargs(cfg) -> dict:
    """The evaluation options every attack config carries (``evaluator``, ``lpips``,
    ``max_private``)."""
    return {"evaluator": getattr(cfg, "evaluator", None), "lpips": getattr(cfg, "lpips", True),
            "max_private": getattr(cfg, "max_private", 0)}
