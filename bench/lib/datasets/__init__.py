"""Datasets: ``@register_dataset`` classes that load the full train/test arrays.

The protocols that cut them into member / validation / non-member / test (and private / public
classes for inversion) live in :mod:`bench.lib.tasks`.
"""
