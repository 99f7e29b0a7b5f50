"""Wall time of one DPSD cell (MNIST, epsilon = 1, delta = 1e-5, seed 0, the ``dpsd`` defaults, and the
ensemble entry ``dpsd-ensemble`` of ``mnist-eps1``).

Run: ``BENCH_DATA=../shared/data BENCH_CACHE=<cache> pytest benchmarks/test_dpsd_cell.py`` (not part of
the normal test suite: ``testpaths`` is ``tests``). The goal is <= 10 min on 2 CPU cores. The
shared ``none`` teacher is fitted (or loaded from ``BENCH_CACHE``) before the timed part; the timed
part is ``DPSD.fit`` itself (transcription + accounting), as the runner runs it on a cache miss.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import mnist_eps1_context

from bench.core.config import make_config
from defenses.dpsd import DPSD

GOAL_SECONDS = 600.0


@pytest.fixture(scope="module")
def mnist_ctx():
    ctx = mnist_eps1_context("dpsd", "dpsd-bench")
    ctx.fit_defense("none", {})  # the teacher: fitted or loaded before the timed part
    return ctx


@pytest.mark.parametrize("mode", ["data"])
def test_dpsd_cell_time(benchmark, mnist_ctx, mode):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    defense = DPSD(make_config(DPSD.Config, {"mode": mode}, "defenses.dpsd"))
    rel = benchmark.pedantic(defense.fit, args=(mnist_ctx,), rounds=1, iterations=1)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info["seconds"] = seconds
    benchmark.extra_info["iterations"] = rel.privacy.extra.get("iterations")
    benchmark.extra_info["selected_val_acc"] = rel.info["history"]["selected_val_acc"]
    print(f"\none DPSD cell ({mode}): {seconds:.0f} s (goal <= {GOAL_SECONDS:.0f} s on 2 CPU cores)")


#: the ``dpsd-ensemble`` entry of ``mnist-eps1`` (and ``ens-n8000`` of ``mnist-dpsd-ensemble``)
ENSEMBLE = {"mode": "label", "teachers": 8000, "iterations": 1200, "query_every": 7, "batch_size": 16, "eval_every": 40}


def test_dpsd_ensemble_cell_time(benchmark, mnist_ctx):
    """One ensemble-DPSD cell: 8 000 teachers trained on the members, then the transcription."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    defense = DPSD(make_config(DPSD.Config, ENSEMBLE, "defenses.dpsd"))
    rel = benchmark.pedantic(defense.fit, args=(mnist_ctx,), rounds=1, iterations=1)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info["seconds"] = seconds
    benchmark.extra_info["queries"] = rel.privacy.extra.get("queries")
    benchmark.extra_info["selected_val_acc"] = rel.info["history"]["selected_val_acc"]
    print(f"\none ensemble DPSD cell: {seconds:.0f} s (goal <= {GOAL_SECONDS:.0f} s on 2 CPU cores)")
