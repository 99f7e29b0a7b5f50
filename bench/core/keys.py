"""Content keys: the canonical JSON form of a key payload and its SHA-256 (``digest``). Imports
neither numpy nor torch (numpy scalars are recognised through the ``numbers`` ABCs they register
with), so the CLI can compute keys before any heavy import."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from typing import Any


def canonical(obj: Any) -> Any:
    """JSON-able, order-independent form of a key payload."""
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float):
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return float(repr(obj)) if not obj.is_integer() else obj
    if isinstance(obj, numbers.Integral) and not isinstance(obj, int):  # numpy integers
        return int(obj)
    if isinstance(obj, numbers.Real) and not isinstance(obj, (int, float)):  # numpy floats (not float64)
        return canonical(float(obj))
    return obj


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(payload), sort_keys=True).encode()).hexdigest()
