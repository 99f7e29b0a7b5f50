"""Teacher queries per second of the transcription loop (``bench.lib.distill.transcribe``, the loop
of ``dpsd`` and ``dpdfd``), this tree against a baseline tree, in one run.

Run: ``BENCH_BASELINE_TREE=/path/to/old/checkout pytest benchmarks/test_dpsd_loop.py -s``. The
baseline is any checkout of the project (e.g. ``git archive <commit> | tar -x -C /tmp/base``);
without it only this tree is timed. Each variant runs in its own fresh process (one torch thread,
the per-job setting of ``bench run --jobs 2`` on 2 cores), rounds alternate between the trees so
machine load hits both alike, and the reported figure is the ratio of the medians. The workload is
the ``dpsd`` data-mode default on MNIST's shape: the ``cnn`` teacher (random weights: speed does
not depend on them), the ``student-cnn`` student, the width-32 DAFL generator, batch 256, the
Gaussian annotator with DKD and the adversarial generator term, no validation pass (evaluation
is the runner's, not the loop's), ``ITERS`` iterations after 3 warm-up iterations.

``test_fit_classifier_examples_per_second`` does the same for ``bench.lib.train.fit_classifier``
(the training loop of ``none``, the teachers, the inversion targets and the reference models):
the ``cnn`` at the ``none`` defaults (Adam, batch 128) on 8 192 MNIST-shaped random images, one
epoch after a warm-up epoch, no validation pass.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ITERS = int(os.environ.get("BENCH_LOOP_ITERS", "20"))
ROUNDS = int(os.environ.get("BENCH_LOOP_ROUNDS", "3"))
HERE = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
tree, iters = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, tree)
import torch
torch.set_num_threads(1)
from bench.lib.models import CNN
from bench.lib.distill import GaussianAnnotator, LoopConfig, transcribe
from bench.lib.distill.nets import DAFLGenerator, StudentCNN

def run(n):
    torch.manual_seed(0)
    teacher, student, gen = CNN(1, 28, 10), StudentCNN(1, 28, 10, 32), DAFLGenerator(1, 28, 10, 100, 32)
    ann = GaussianAnnotator(7.46, 1.0, 1e-3, 10, 1.0, "dkd", 1.0, 1.0, 8.0, torch.Generator().manual_seed(1))
    cfg = LoopConfig(n, 256, 3e-3, 1e-2, 1.0, 5.0, 0.1, 1.0, eval_every=10 ** 9, select_on_val=False)
    t = time.perf_counter()
    transcribe(teacher=teacher, student=student, generator=gen, annotate=ann, mode="data", cfg=cfg,
               rng=torch.Generator().manual_seed(2), device="cpu", val=None)
    return time.perf_counter() - t

run(3)
seconds = run(iters)
print(json.dumps({"queries_per_second": iters * 256 / seconds, "seconds_per_iteration": seconds / iters}))
"""


FIT_WORKER = r"""
import json, sys, time
tree = sys.argv[1]
sys.path.insert(0, tree)
import numpy as np, torch
torch.set_num_threads(1)
from bench.lib.models import CNN
from bench.lib.tasks import Split
from bench.lib.train import fit_classifier
g = torch.Generator().manual_seed(0)
n = 8192
split = Split(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), np.arange(n))
torch.manual_seed(0)
model = CNN(1, 28, 10)
fit_classifier(model, split, None, epochs=1, lr=1e-3, batch_size=128, generator=torch.Generator().manual_seed(1))
t = time.perf_counter()
fit_classifier(model, split, None, epochs=1, lr=1e-3, batch_size=128, generator=torch.Generator().manual_seed(1))
print(json.dumps({"examples_per_second": n / (time.perf_counter() - t)}))
"""


def _measure(tree: Path, worker: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", worker, str(tree), *args], capture_output=True, text=True,
                         env=env, check=True, cwd=str(tree))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _trees() -> dict[str, Path]:
    base = os.environ.get("BENCH_BASELINE_TREE")
    trees = {"this": HERE}
    if base:
        if not (Path(base) / "bench" / "lib" / "distill").is_dir():
            pytest.fail(f"BENCH_BASELINE_TREE={base} is not a checkout of this project")
        trees["baseline"] = Path(base)
    return trees


def _compare(benchmark, what: str, unit: str, worker: str, *args: str, goal: str = "") -> None:
    trees = _trees()
    rates: dict[str, list[float]] = {k: [] for k in trees}

    def one_round():
        for name, tree in trees.items():
            rates[name].append(_measure(tree, worker, *args)[unit])

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    med = {k: statistics.median(v) for k, v in rates.items()}
    benchmark.extra_info.update({f"{unit}_{k}": v for k, v in med.items()})
    benchmark.extra_info["rounds"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
    line = f"\n{what}: this tree {med['this']:.0f} {unit.replace('_', ' ')}"
    if "baseline" in med:
        ratio = med["this"] / med["baseline"]
        benchmark.extra_info["ratio_vs_baseline"] = ratio
        line += f", baseline {med['baseline']:.0f}, ratio {ratio:.2f}x{goal}"
    print(line + f" (medians of {ROUNDS} rounds, 1 thread; per round: {benchmark.extra_info['rounds']})")


def test_transcription_queries_per_second(benchmark):
    _compare(benchmark, "transcription loop", "queries_per_second", WORKER, str(ITERS), goal=" (goal >= 3x)")


def test_fit_classifier_examples_per_second(benchmark):
    _compare(benchmark, "fit_classifier (cnn, batch 128)", "examples_per_second", FIT_WORKER)
