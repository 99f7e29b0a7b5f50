import os

import pytest

from bench.core.errors import BenchError
from bench.lib.tasks import build_task


@pytest.fixture(scope="session")
def mnist_task():
    """Real MNIST when the data root has it (BENCH_DATA), else skip."""
    try:
        return build_task("mnist", {}, 0, os.environ.get("BENCH_DATA"))
    except BenchError as e:
        pytest.skip(f"MNIST not available: {e}")


def mnist_eps1_context(defense: str, prefix: str, suite: str = "mnist-eps1"):
    """The runner's context for one MNIST, epsilon = 1, seed-0 cell of the ``mnist-eps1`` suite (or
    of ``suite``: its MNIST protocol; cache: ``BENCH_CACHE`` or a fresh temporary folder); skips
    when ``BENCH_DATA`` is not set."""
    import tempfile

    from bench.core.cache import Cache
    from bench.harness.context import CellContext, Env, get_task
    from bench.harness.suite import load_suite

    root = os.environ.get("BENCH_DATA")
    if not root:
        pytest.skip("BENCH_DATA not set")
    cache_dir = os.environ.get("BENCH_CACHE") or tempfile.mkdtemp(prefix=f"{prefix}-")
    ds = load_suite(suite).datasets["mnist"]
    env = Env(run_dir=tempfile.mkdtemp(prefix=f"{prefix}-run-"), cache_dir=cache_dir, data_root=root,
              device="cpu", run_id="bench", progress=False)
    tasks: dict = {}
    task = get_task("mnist", ds["protocol"], 0, root, tasks)
    return CellContext(env, Cache(cache_dir), task, 1.0, 1e-5, 0, [], {"protocol": ds["protocol"],
                       "inversion": ds["inversion"]}, tasks, defense, {})
