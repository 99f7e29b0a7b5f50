"""Converting releases and attack results to and from cache bundles."""

from __future__ import annotations

import numpy as np
import torch

from bench.core.api import AttackResult, PrivacyReport, Release
from bench.lib.models import build_model


def release_to_bundle(rel: Release, utility: dict) -> dict:
    bundle: dict = {}
    for mname, module in rel.modules.items():
        for k, v in module.state_dict().items():
            bundle[f"{mname}.{k}"] = v.detach().cpu().clone()
    bundle["__archs__"] = rel.archs
    bundle["__privacy__"] = rel.privacy.to_dict()
    bundle["__info__"] = rel.info
    bundle["__utility__"] = utility
    return bundle


def bundle_to_release(bundle: dict, device="cpu") -> tuple[Release, dict]:
    archs = bundle["__archs__"]
    modules = {}
    for mname, spec in archs.items():
        m = build_model(spec)
        prefix = f"{mname}."
        state = {k[len(prefix):]: v for k, v in bundle.items() if isinstance(k, str) and k.startswith(prefix)
                 and isinstance(v, torch.Tensor)}
        m.load_state_dict(state)
        m.eval()
        modules[mname] = m.to(device)
    rel = Release(modules, archs, PrivacyReport.from_dict(bundle["__privacy__"]), bundle.get("__info__", {}))
    return rel, bundle.get("__utility__", {})


def result_to_bundle(res: AttackResult) -> dict:
    bundle = {f"array.{k}": np.asarray(v) for k, v in res.arrays.items()}
    bundle["__metrics__"] = {k: float(v) for k, v in res.metrics.items()}
    bundle["__info__"] = res.info
    return bundle


def bundle_to_result(bundle: dict) -> AttackResult:
    arrays = {k[len("array."):]: v for k, v in bundle.items() if k.startswith("array.")}
    return AttackResult(bundle["__metrics__"], arrays, bundle.get("__info__", {}))
