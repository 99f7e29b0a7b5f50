"""Wall time of one cell of each federated entry of the ``fed-mnist`` suites (MNIST, seed 0): FedAvg
(10 clients, 10 rounds), DENSE (10 clients, one shot), DP-FedAvg (10 and 100 clients, client-level
epsilon = 1), FedDPSD at the client level (10 and 100 client teachers, client-level epsilon = 1) and
FedDPSD in DPSD's query unit (the 10 one-shot client models of DENSE as one teacher, epsilon = 1).

Run: ``BENCH_DATA=../shared/data pytest benchmarks/test_federated_cells.py`` (not part of the normal
test suite: ``testpaths`` is ``tests``). The timed part is the defense's ``fit``, as the runner runs
it on a cache miss; every entry's configuration is read from ``bench/suites/fed-mnist.yaml``, so the
benchmark times exactly the suite's cells. ``BENCH_THREADS`` sets torch's thread count (default 2).
Measured cell times (runner, one thread per cell, two cells at a time) are in docs/methods/fedavg.md
and docs/methods/dense.md.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import mnist_eps1_context

from bench.core import registry
from bench.core.config import make_config
from bench.harness.suite import load_suite

ENTRIES = ["fedavg-a0.5", "dense-a0.5", "dp-fedavg-n10-iid", "dp-fedavg-n100-iid", "feddpsd-n10-a0.5",
           "feddpsd-n100-iid", "feddpsd-query-a0.5"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_federated_cell_time(benchmark, entry):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    config = dict(load_suite("fed-mnist").defenses[entry])
    method = config.pop("method", entry)
    ctx = mnist_eps1_context(entry, f"fed-{entry}-bench", suite="fed-mnist")
    cls = registry.get_defense(method)
    defense = cls(make_config(cls.Config, config, f"defenses.{method}"))
    rel = benchmark.pedantic(defense.fit, args=(ctx,), rounds=1, iterations=1)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(seconds=seconds, unit=rel.privacy.unit, epsilon=rel.privacy.epsilon)
    print(f"\none {entry} cell: {seconds:.0f} s (unit {rel.privacy.unit}, epsilon {rel.privacy.epsilon})")
