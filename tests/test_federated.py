"""Federated machinery (bench/lib/federated.py) and the FedAvg / DP-FedAvg defenses: the client
split is seeded, covers every member once and its Dirichlet skew is measurable; FedAvg's round is
the size-weighted average (one full-batch step per client = one centralised gradient step);
DP-FedAvg's clipping bounds one client's influence on the sum by S, its noise is calibrated by the
library accountant to the target in the client unit, and without noise or clipping it is FedAvg."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.core.cache import Cache
from bench.core.config import make_config
from bench.harness.context import CellContext, Env
from bench.lib.accounting import poisson_gaussian_epsilon
from bench.lib.federated import ClientDP, client_partition, partition_summary, run_fedavg
from bench.lib.models import build_model
from bench.lib.tasks import Split, build_task
from defenses.dp_fedavg import DPFedAvg, DPFedAvgConfig
from defenses.fedavg import FedAvg, FedAvgConfig

TASK = build_task("digits", {"members": 600, "val": 200, "nonmembers": 200}, 0)


def _rows_labels(n=2000, k=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(10 * n)[:n], rng.integers(0, k, n)


# -- the partition ------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_is_seeded_order_free_and_covers_every_member_once(scheme):
    rows, labels = _rows_labels()
    a = client_partition(rows, labels, 10, scheme, 0.3, seed=1)
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(len(rows)))
    b = client_partition(rows, labels, 10, scheme, 0.3, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = client_partition(rows, labels, 10, scheme, 0.3, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # the same members listed in another order: the same clients (as sets of dataset rows)
    perm = np.random.default_rng(5).permutation(len(rows))
    d = client_partition(rows[perm], labels[perm], 10, scheme, 0.3, seed=1)
    assert [set(rows[p]) for p in a] == [set(rows[perm][p]) for p in d]
    s1, s2 = partition_summary(a, rows, labels, 10), partition_summary(d, rows[perm], labels[perm], 10)
    assert s1["fingerprint"] == s2["fingerprint"] and sum(s1["sizes"]) == len(rows)
    assert np.array_equal(np.array(s1["class_histograms"]).sum(0), np.bincount(labels, minlength=10))


def test_dirichlet_skew_grows_as_alpha_falls_and_iid_is_balanced():
    rows, labels = _rows_labels(5000)
    skew = {}
    for name, scheme, alpha in [("iid", "iid", 1.0), ("a10", "dirichlet", 10.0), ("a0.5", "dirichlet", 0.5),
                                ("a0.1", "dirichlet", 0.1)]:
        vals = [partition_summary(p, rows, labels, 10)["label_skew_tv"]
                for p in (client_partition(rows, labels, 10, scheme, alpha, seed=s) for s in range(3))]
        skew[name] = float(np.mean(vals))
    assert skew["iid"] < 0.06 < skew["a10"] < skew["a0.5"] < skew["a0.1"], skew
    assert skew["a0.1"] > 0.5
    iid = client_partition(rows, labels, 10, "iid", seed=0)
    assert max(map(len, iid)) - min(map(len, iid)) <= 1
    assert min(map(len, client_partition(rows, labels, 10, "dirichlet", 0.1, seed=0))) >= 10


def test_impossible_partitions_say_so():
    rows, labels = _rows_labels(50)
    with pytest.raises(ValueError, match="clients"):
        client_partition(rows, labels, 51)
    with pytest.raises(ValueError, match="alpha"):
        client_partition(rows, labels, 5, "dirichlet", 0.0)


# -- the FedAvg round ---------------------------------------------------------------------------

def _clients(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Split(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in sizes]


def _net(seed=0):
    torch.manual_seed(seed)
    return build_model({"name": "mlp", "in_channels": 1, "image_size": 8, "num_classes": 10})


def _flat(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_one_full_batch_round_is_one_centralised_gradient_step():
    """Full participation, one local epoch with the batch as large as the client: each client does
    one GD step, the size-weighted mean is the GD step on the pooled data's mean loss."""
    clients = _clients([30, 50, 20])
    lr = 0.1
    fed, _ = run_fedavg(_net(), clients, rounds=1, local_epochs=1, batch_size=100, lr=lr)
    central = _net()
    x = torch.cat([c.x for c in clients])
    y = torch.cat([c.y for c in clients])
    F.cross_entropy(central(x), y).backward()
    with torch.no_grad():
        for p in central.parameters():
            p -= lr * p.grad
    assert torch.allclose(_flat(fed), _flat(central), atol=1e-6)
    assert not torch.allclose(_flat(fed), _flat(_net()))  # it moved


def test_conv_nets_train_channels_last_and_come_back_standard():
    """The cnn (2-d convolutions) runs channels_last inside the loop: the full-batch identity still
    holds to float rounding, and the model comes back in the standard layout (dropout off so that
    both paths compute the same function)."""
    g = torch.Generator().manual_seed(3)
    clients = [Split(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (6, 10)]
    spec = {"name": "cnn", "in_channels": 1, "image_size": 28, "num_classes": 10, "dropout": 0.0}
    torch.manual_seed(0)
    fed, _ = run_fedavg(build_model(spec), clients, rounds=1, local_epochs=1, batch_size=100, lr=0.1)
    assert all(p.is_contiguous() for p in fed.parameters())
    torch.manual_seed(0)
    central = build_model(spec)
    init = _flat(central)
    x = torch.cat([c.x for c in clients])
    y = torch.cat([c.y for c in clients])
    F.cross_entropy(central(x), y).backward()
    with torch.no_grad():
        for p in central.parameters():
            p -= 0.1 * p.grad
    assert torch.allclose(_flat(fed), _flat(central), atol=1e-5)
    assert not torch.allclose(_flat(fed), init)


def test_dp_round_without_noise_or_clipping_is_the_unweighted_fedavg_round():
    clients = _clients([40, 40, 40, 40])
    fed, _ = run_fedavg(_net(), clients, rounds=2, local_epochs=1, batch_size=100, lr=0.1)
    dp = ClientDP(sample_rate=1.0, clip=1e9, noise_multiplier=0.0, expected_clients=4)
    dpf, hist = run_fedavg(_net(), clients, rounds=2, local_epochs=1, batch_size=100, lr=0.1, dp=dp)
    assert torch.allclose(_flat(fed), _flat(dpf), atol=1e-6) and hist["participants"] == [4, 4]


def test_clipping_bounds_one_clients_influence_on_the_sum():
    """With q = 1 and no noise, q N times the update is the sum of clipped deltas: adding one
    client (with any data, here scaled-up inputs that make a large delta) moves it by <= S."""
    S = 0.05
    base = _clients([40, 40, 40])
    extra = _clients([40], seed=9)[0]
    extra = Split(extra.x * 50, extra.y)
    start = _flat(_net())

    def summed(clients):
        dp = ClientDP(sample_rate=1.0, clip=S, noise_multiplier=0.0, expected_clients=1.0)
        m, h = run_fedavg(_net(), clients, rounds=1, local_epochs=1, batch_size=100, lr=0.5, dp=dp)
        return _flat(m) - start, h

    without, _ = summed(base)
    with_extra, h = summed(base + [extra])
    assert float((with_extra - without).norm()) <= S * (1 + 1e-4)
    assert h["clipped_fraction"][0] > 0  # the clip was active
    # unclipped, the same client moves the sum by far more than S
    dp = ClientDP(sample_rate=1.0, clip=1e9, noise_multiplier=0.0, expected_clients=1.0)
    a, _ = run_fedavg(_net(), base, rounds=1, local_epochs=1, batch_size=100, lr=0.5, dp=dp)
    b, _ = run_fedavg(_net(), base + [extra], rounds=1, local_epochs=1, batch_size=100, lr=0.5, dp=dp)
    assert float((_flat(b) - _flat(a)).norm()) > 10 * S


def test_a_diverged_client_contributes_nothing_and_the_model_stays_finite():
    """A client whose local run gives non-finite weights (here: infinite inputs) adds zero, not NaN:
    the sum keeps its bound S and the global model stays finite."""
    good = _clients([30, 30])
    bad = Split(torch.full((30, 1, 8, 8), float("inf")), torch.zeros(30, dtype=torch.long))
    dp = ClientDP(sample_rate=1.0, clip=0.1, noise_multiplier=0.0, expected_clients=1.0)
    with_bad, h = run_fedavg(_net(), good + [bad], rounds=1, local_epochs=1, batch_size=100, lr=0.5, dp=dp)
    without, _ = run_fedavg(_net(), good, rounds=1, local_epochs=1, batch_size=100, lr=0.5, dp=dp)
    assert torch.isfinite(_flat(with_bad)).all() and h["nonfinite_clients"] == [1]
    assert torch.allclose(_flat(with_bad), _flat(without), atol=1e-6)


def test_noise_is_added_even_in_a_round_without_participants():
    dp = ClientDP(sample_rate=1e-9, clip=1.0, noise_multiplier=1.0, expected_clients=1.0)
    m, h = run_fedavg(_net(), _clients([20, 20]), rounds=1, local_epochs=1, batch_size=10, lr=0.1, dp=dp)
    assert h["participants"] == [0] and not torch.allclose(_flat(m), _flat(_net()))


# -- the defenses -------------------------------------------------------------------------------

def _ctx(tmp_path, epsilon=math.inf, delta=0.0, seed=0):
    env = Env(str(tmp_path / "run"), str(tmp_path / "cache"), "", "cpu", "test", progress=False)
    return CellContext(env, Cache(env.cache_dir), TASK, epsilon, delta, seed, [], {}, {})


def _same(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fedavg_trains_records_its_split_and_is_reproducible(tmp_path):
    cfg = {"arch": "mlp", "clients": 5, "partition": "dirichlet", "alpha": 0.5, "rounds": 5, "batch_size": 20,
           "lr": 0.1}
    r1 = FedAvg(make_config(FedAvgConfig, cfg, "fedavg")).fit(_ctx(tmp_path))
    r2 = FedAvg(make_config(FedAvgConfig, cfg, "fedavg")).fit(_ctx(tmp_path))
    assert _same(r1, r2) and r1.privacy.unit == "none"
    split = r1.info["clients"]
    assert len(split["sizes"]) == 5 and sum(split["sizes"]) == len(TASK.members) and split["label_skew_tv"] > 0.1
    assert r1.info["history"]["val_acc"][-1] > 0.5  # digits, 5 rounds: well above chance (0.1)


def test_dp_fedavg_spends_the_target_in_the_client_unit(tmp_path):
    cfg = {"arch": "mlp", "clients": 20, "expected_clients_per_round": 5, "rounds": 4, "batch_size": 20,
           "eval_every": 2}
    r = DPFedAvg(make_config(DPFedAvgConfig, cfg, "dp-fedavg")).fit(_ctx(tmp_path, 2.0, 1e-5))
    p = r.privacy
    assert p.unit == "client" and p.extra["sample_rate"] == 0.25
    assert p.epsilon <= 2.0 + 1e-6 and p.epsilon > 1.98
    assert p.epsilon == pytest.approx(poisson_gaussian_epsilon(p.extra["noise_multiplier"], 0.25, 4, 1e-5))
    assert "clipped_fraction" not in r.info["history"] and "clients" in r.info["simulation"]
    r2 = DPFedAvg(make_config(DPFedAvgConfig, cfg, "dp-fedavg")).fit(_ctx(tmp_path, 2.0, 1e-5))
    assert _same(r, r2)
    # more budget, less noise
    r10 = DPFedAvg(make_config(DPFedAvgConfig, cfg, "dp-fedavg")).fit(_ctx(tmp_path, 10.0, 1e-5))
    assert r10.privacy.extra["noise_multiplier"] < p.extra["noise_multiplier"]


def test_bad_federated_configs_are_one_line_errors():
    from bench.core.errors import BenchError

    with pytest.raises(BenchError, match="clients_per_round"):
        make_config(FedAvgConfig, {"clients": 5, "clients_per_round": 6}, "fedavg")
    with pytest.raises(BenchError, match="expected_clients_per_round"):
        make_config(DPFedAvgConfig, {"clients": 5, "expected_clients_per_round": 6}, "dp-fedavg")
