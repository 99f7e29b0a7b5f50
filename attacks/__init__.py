"""Attacks: one file per method, each registered with ``@register_attack``."""
