"""privacy-bench: a registry-based privacy attack-and-audit benchmark harness.

Data flow (one folder per stage): suite (``bench/suites``) -> cells (``bench/suite.py``) ->
defense (``defenses/``) -> released model (``bench/release.py``) -> attacks (``attacks/``) ->
metrics (``bench/metrics.py``) -> store (``bench/store.py``) -> reports (``reports/``).
"""

__version__ = "0.1.0"
