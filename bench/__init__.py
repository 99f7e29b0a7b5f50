"""privacy-bench: a registry-based privacy attack-and-audit benchmark harness.

Data flow (docs/architecture.md): suite (``bench/suites``, ``bench/harness/suite.py``) -> cells
(``bench/core/records.py``) -> defense (``defenses/``) -> released model -> attacks (``attacks/``)
-> metrics (``bench/lib/``) -> store (``bench/core/store.py``) -> reports (``reports/``). Layers:
``bench.core`` (API types, registry, config, cache, store) < ``bench.api`` (the public API) <
``bench.lib`` (the science library) < methods < ``bench.harness`` | ``reports`` < ``bench.cli``.
"""

__version__ = "0.1.0"
