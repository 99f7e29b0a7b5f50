import os

import pytest

from bench.errors import BenchError
from bench.tasks import build_task


@pytest.fixture(scope="session")
def mnist_task():
    """Real MNIST when the data root has it (BENCH_DATA), else skip."""
    try:
        return build_task("mnist", {}, 0, os.environ.get("BENCH_DATA"))
    except BenchError as e:
        pytest.skip(f"MNIST not available: {e}")
