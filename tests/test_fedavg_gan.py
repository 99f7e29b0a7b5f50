"""DP-FedAvg-GAN (defenses/fedavg_gan.py): the members reach the model only through the client
splits made before training; the client-level epsilon against dp_accounting's Poisson-subsampled
Gaussian composed by hand; the generator is trained on the server only (the clients' data is read
only inside the local discriminator steps); the non-private reference is plain FedAvg; same seed,
same generator; one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
from test_dense import Ctx
from test_dp_gan import CountingSplit
from test_dpsd import synthetic_task

import bench.lib.federated as fed
from bench.core.config import make_config
from bench.core.errors import BenchError
from defenses.fedavg_gan import FedAvgGAN, FedAvgGANConfig, train_fedavg_gan

TINY = {"clients": 10, "expected_clients_per_round": 3.0, "rounds": 6, "local_steps": 2, "batch_size": 8,
        "z_dim": 4, "gf_dim": 8, "gfc_dim": 32, "df_dim": 8, "n_synthetic": 200, "student_epochs": 1,
        "student_batch_size": 32, "student_arch": "mlp"}


def ctx(task, seed=0, epsilon=math.inf):
    c = Ctx(task, seed)
    c.epsilon, c.delta = epsilon, 1e-5
    return c


def cfg(**kw):
    return make_config(FedAvgGANConfig, {**TINY, **kw}, "fedavg-gan")


def test_client_level_epsilon_is_dp_accountings_poisson_gaussian_composition():
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    rel = FedAvgGAN(cfg()).fit(ctx(synthetic_task(n=200), 0, 3.0))
    p = rel.privacy
    assert p.unit == "client" and p.delta == 1e-5 and p.extra["sample_rate"] == pytest.approx(0.3)
    acc = rdp.RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(0.3, dp_event.GaussianDpEvent(p.extra["noise_multiplier"])), 6)
    assert p.epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6) and 2.9 < p.epsilon <= 3.0 + 1e-6
    assert "not accounted" in p.extra["example_level"]


def test_members_are_split_once_before_training_whatever_the_rounds():
    task = synthetic_task(n=200)
    reads = []
    for rounds in (2, 7):
        members = CountingSplit(task.members._x, task.members._y)
        train_fedavg_gan(members, 4, cfg(rounds=rounds), epsilon=3.0, delta=1e-5, seed=0)
        reads.append(dict(members.reads))
    assert reads[0] == reads[1], reads


def test_client_data_is_read_only_inside_the_local_discriminator_steps(monkeypatch):
    """Every read of a client's images happens while a client's local step runs; the server's
    generator steps (after_round) read none."""
    state = {"in_local": False, "outside_reads": 0, "inside_reads": 0}
    real_run = fed.run_fedavg

    def spy_run(model, clients, **kw):
        local_fn, after_round = kw["local_fn"], kw["after_round"]

        class Watched:
            def __init__(self, s):
                self.s = s

            def __len__(self):
                return len(self.s)

            @property
            def x(self):
                state["inside_reads" if state["in_local"] else "outside_reads"] += 1
                return self.s.x

            @property
            def y(self):
                return self.s.y

        def wrapped_local(Dl, data, g, layout):
            state["in_local"] = True
            try:
                local_fn(Dl, data, g, layout)
            finally:
                state["in_local"] = False

        kw["local_fn"], kw["after_round"] = wrapped_local, after_round
        return real_run(model, [Watched(c) for c in clients], **kw)

    import defenses.fedavg_gan as fg

    monkeypatch.setattr(fg, "run_fedavg", spy_run)
    train_fedavg_gan(synthetic_task(n=200).members, 4, cfg(), epsilon=3.0, delta=1e-5, seed=0)
    assert state["inside_reads"] > 0 and state["outside_reads"] <= 1, state  # conv_layout peeks at one batch shape


def test_non_private_reference_is_plain_fedavg_and_same_seed_same_generator():
    task = synthetic_task(n=200)
    inf = FedAvgGAN(cfg()).fit(ctx(task, 0, math.inf))
    assert math.isinf(inf.privacy.epsilon) and inf.info["history"]["generator"]["participants"] == [3] * 6
    r1 = FedAvgGAN(cfg()).fit(ctx(task, 0, 3.0))
    r2 = FedAvgGAN(cfg()).fit(ctx(task, 0, 3.0))
    g1, g2 = r1.modules["generator"].state_dict(), r2.modules["generator"].state_dict()
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    r3 = FedAvgGAN(cfg()).fit(ctx(task, 1, 3.0))
    assert not torch.equal(r3.modules["generator"].state_dict()["fc0.weight"], g1["fc0.weight"])


def test_one_line_errors():
    with pytest.raises(BenchError, match="expected_clients_per_round"):
        make_config(FedAvgGANConfig, {"clients": 5, "expected_clients_per_round": 6.0}, "fedavg-gan")
    with pytest.raises(BenchError, match="clip"):
        make_config(FedAvgGANConfig, {"clip": 0.0}, "fedavg-gan")
    with pytest.raises(BenchError, match="fedavg-gan"):
        train_fedavg_gan(synthetic_task(n=200).members, 4, cfg(clients=10**4, expected_clients_per_round=1.0),
                         epsilon=1.0, delta=1e-5, seed=0)
