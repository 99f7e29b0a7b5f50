"""The public API a method is written against: everything a defense, an attack or a dataset plugin
imports from the harness. Methods import this module and the science library (``bench.lib``),
never the harness internals, never each other (the contract in ``.importlinter``)."""

from bench.core.api import (
    ATTACK_KINDS,
    LAST_ITERATE,
    PRIVACY_UNITS,
    Attack,
    AttackResult,
    Context,
    Defense,
    FitRequest,
    PrivacyReport,
    Release,
    val_selection,
)
from bench.core.config import EmptyConfig, make_config
from bench.core.errors import BenchError, suggest
from bench.core.registry import register_attack, register_dataset, register_defense

__all__ = [
    "ATTACK_KINDS", "PRIVACY_UNITS", "Attack", "AttackResult", "BenchError", "Context", "Defense", "EmptyConfig", "FitRequest",
    "LAST_ITERATE", "PrivacyReport", "Release", "make_config", "register_attack", "register_dataset", "register_defense",
    "suggest", "val_selection",
]
