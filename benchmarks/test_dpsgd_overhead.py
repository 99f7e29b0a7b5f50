"""DP-SGD epoch time over non-private epoch time, same model, batch size and data.

Run: ``BENCH_DATA=../shared/data tox -e bench`` (or ``pytest benchmarks``). The ratio is in
``extra_info`` of the DP benchmarks and printed at the end; the goal is <= 1.6x.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.lib.models import build_model, spec_for
from defenses.dpsgd import make_private_training, train_epoch

N = 16384  # a third of an MNIST epoch keeps each round short; times are scaled per example
BATCH = 1024
_times: dict[str, float] = {}


def _setup(task, mode: str):
    torch.manual_seed(0)
    model = build_model(spec_for(task, "tanh-cnn"))
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    loader = DataLoader(TensorDataset(task.members.x[:N], task.members.y[:N]), batch_size=BATCH, shuffle=True)
    if mode == "plain":
        return model, opt, torch.nn.CrossEntropyLoss(), loader
    model, opt, crit, loader, _ = make_private_training(model, opt, loader, 1.0, 0.1, "prv", mode, 0, "cpu")
    return model, opt, crit, loader


@pytest.mark.parametrize("mode", ["plain", "ghost", "hooks", "functorch", "ew"])
def test_epoch_time(benchmark, mnist_task, mode):
    model, opt, crit, loader = _setup(mnist_task, mode)
    train_epoch(model, opt, crit, loader, "cpu")  # warm-up (allocator, hooks, thread pool)
    benchmark.pedantic(train_epoch, args=(model, opt, crit, loader, "cpu"), rounds=3, iterations=1)
    _times[mode] = benchmark.stats.stats.mean
    benchmark.extra_info["seconds_per_48k_epoch"] = _times[mode] * 48000 / N
    if mode != "plain" and "plain" in _times:
        ratio = _times[mode] / _times["plain"]
        benchmark.extra_info["ratio_vs_non_private"] = ratio
        print(f"\nDP-SGD ({mode}) epoch / non-private epoch = {ratio:.2f}x (goal <= 1.6x)")


# -- the ScatterNet recipe (issue 20): front end once per example, then DP epochs on its output ----

def test_scatternet_frontend_throughput(benchmark, mnist_task):
    """Seconds to compute the fixed ScatterNet features of 48 000 MNIST members (once per cell)."""
    from defenses.dpsgd import _inputs

    model = build_model(spec_for(mnist_task, "scatter-cnn"))
    x = mnist_task.members.x[:4096]
    benchmark.pedantic(_inputs, args=(model, x, "cpu"), rounds=3, iterations=1)
    benchmark.extra_info["seconds_per_48k_members"] = benchmark.stats.stats.mean * 48000 / len(x)


@pytest.mark.parametrize("arch,batch", [("tanh-cnn", 1024), ("scatter-cnn", 512)])
def test_dp_epoch_of_each_recipe(benchmark, mnist_task, arch, batch):
    """One ghost-clipping DP-SGD epoch of each recipe at its default batch size (the ScatterNet
    body trains on precomputed features), scaled to 48 000 members."""
    from defenses.dpsgd import _inputs

    torch.manual_seed(0)
    model = build_model(spec_for(mnist_task, arch))
    net = model.trainable() if hasattr(model, "trainable") else model
    x = _inputs(model, mnist_task.members.x[:N], "cpu")
    loader = DataLoader(TensorDataset(x, mnist_task.members.y[:N]), batch_size=batch, shuffle=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    net, opt, crit, loader, _ = make_private_training(net, opt, loader, 1.0, 0.1, "prv", "ghost", 0, "cpu")
    train_epoch(net, opt, crit, loader, "cpu")  # warm-up
    benchmark.pedantic(train_epoch, args=(net, opt, crit, loader, "cpu"), rounds=3, iterations=1)
    benchmark.extra_info["seconds_per_48k_epoch"] = benchmark.stats.stats.mean * 48000 / N
