"""DENSE (defenses/dense.py): the BatchNorm-statistics prior moves what it targets, the random
shift is a crop of the padded batch, the server never reads any client's data after the one-shot
local training, the same seed gives the same global model, and bad configurations are one-line
errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_dpsd import LockedSplit, synthetic_task

import bench.lib.federated as fed_mod
from bench.core.config import make_config
from bench.core.errors import BenchError
from bench.lib.distill.losses import BNStatisticsLoss
from bench.lib.federated import average_state
from bench.lib.models import build_model
from defenses.dense import DENSE, DENSEConfig, random_shift

TINY = {"clients": 4, "local_epochs": 3, "local_batch_size": 16, "epochs": 3, "g_steps": 3,
        "synthesis_batch_size": 16, "latent_dim": 8, "generator_width": 8, "crop_padding": 1}


class Ctx:
    def __init__(self, task, seed=0):
        self.task, self.seed = task, seed
        self.epsilon, self.delta = math.inf, 0.0
        self.device = torch.device("cpu")
        self.logs = []

    def progress(self, it, **kw):
        return it

    def log(self, m):
        self.logs.append(m)

    def artifact(self, kind, key, build):  # the runner caches; here every call builds
        self.artifacts = getattr(self, "artifacts", []) + [kind]
        return build()


def fit(config, ctx):
    return DENSE(make_config(DENSEConfig, {**TINY, **config}, "dense")).fit(ctx)


def _bn_net():
    net = build_model({"name": "cnn-bn", "in_channels": 1, "image_size": 8, "num_classes": 4, "width": 4})
    net.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(50):  # running statistics of N(0.5, 0.2^2) images
            net(0.5 + 0.2 * torch.randn(64, 1, 8, 8, generator=g))
    return net.eval()


def test_bn_prior_is_small_on_matching_batches_large_on_shifted_ones_and_unhooks():
    net = _bn_net()
    g = torch.Generator().manual_seed(1)
    with BNStatisticsLoss([net, _bn_net()]) as bn:
        assert len(bn.layers) == 4
        net(0.5 + 0.2 * torch.randn(512, 1, 8, 8, generator=g))
        close = float(bn.value().detach())
        net(2.0 + 1.0 * torch.randn(512, 1, 8, 8, generator=g))
        far = float(bn.value().detach())
        assert float(bn.value()) == 0.0  # value() resets
    assert far > 20 * close
    net(torch.rand(4, 1, 8, 8))
    assert bn.terms == []  # hooks removed on exit


def test_bn_prior_descends_and_its_gradient_reaches_the_input():
    net = _bn_net()
    x = (2.0 + torch.randn(64, 1, 8, 8)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    with BNStatisticsLoss([net]) as bn:
        values = []
        for _ in range(60):
            opt.zero_grad()
            net(x)
            loss = bn.value()
            values.append(float(loss.detach()))
            loss.backward()
            opt.step()
    assert values[-1] < 0.2 * values[0]


def test_random_shift_is_a_crop_of_the_padded_batch_and_differentiable():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 5, 5, requires_grad=True)
    assert random_shift(x, 0, False, g) is x
    out = random_shift(x, 2, False, g)
    padded = torch.nn.functional.pad(x.detach(), (2, 2, 2, 2))
    for i in range(6):
        assert any(torch.equal(out[i].detach(), padded[i, :, a:a + 5, b:b + 5]) for a in range(5) for b in range(5))
    out.sum().backward()
    assert x.grad is not None and float(x.grad.sum()) > 0
    flipped = random_shift(x.detach(), 0, True, torch.Generator().manual_seed(3))
    assert all(torch.equal(flipped[i], x[i].detach()) or torch.equal(flipped[i], x[i].detach().flip(-1))
               for i in range(6))


def test_one_shot_average_weights_parameters_and_bn_statistics_by_size():
    a = _bn_net()
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
        b.features[1].running_mean.add_(3.0)
    avg = average_state([a, b], [1.0, 3.0])
    k = "features.1.running_mean"
    assert torch.allclose(avg[k], a.state_dict()[k] + 2.25)
    assert torch.allclose(avg["head.0.bias"], a.state_dict()["head.0.bias"] + 0.75)
    assert avg["features.1.num_batches_tracked"].dtype == torch.int64


def test_server_never_reads_client_data_after_the_local_training(monkeypatch):
    task = synthetic_task(n=200)
    orig_split, orig_update = fed_mod.split_members, fed_mod.local_update
    state = {"clients": [], "updates": 0}

    def split_locked(members, *a, **k):
        clients, info = orig_split(members, *a, **k)
        object.__setattr__(task.members, "locked", True)  # nothing reads the pooled members again
        state["clients"] = [LockedSplit(c.x, c.y) for c in clients]
        return state["clients"], info

    def update_then_lock(model, data, **k):
        orig_update(model, data, **k)
        state["updates"] += 1
        if state["updates"] == len(state["clients"]):
            for c in state["clients"]:
                object.__setattr__(c, "locked", True)

    monkeypatch.setattr(fed_mod, "split_members", split_locked)
    monkeypatch.setattr(fed_mod, "local_update", update_then_lock)
    ctx = Ctx(task)
    rel = fit({}, ctx)
    assert ctx.artifacts == ["oneshot-clients"]  # the client models are a shared artifact
    assert state["updates"] == TINY["clients"] and all(c.locked for c in state["clients"])
    assert rel.privacy.unit == "none" and "validation" in rel.privacy.selection
    assert len(rel.info["client_val_acc"]) == TINY["clients"]
    assert rel.info["history"]["pool"] == [16, 32, 48]


def test_dense_learns_from_the_ensemble_and_is_reproducible():
    task = synthetic_task(n=400)
    cfg = {"local_epochs": 10, "epochs": 6, "g_steps": 20, "lr_g": 1e-2, "synthesis_batch_size": 32,
           "kd_batch_size": 32, "kd_lr": 0.01}
    r1 = fit(cfg, Ctx(task))
    assert r1.info["ensemble_val_acc"] > 0.9  # the synthetic task is easy for the clients
    assert max(r1.info["history"]["val_acc"]) > 0.6  # chance: 0.25
    r2 = fit(cfg, Ctx(task))
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    r3 = fit(cfg, Ctx(task, seed=1))
    assert not torch.equal(r3.model.state_dict()["head.0.weight"], s1["head.0.weight"])


def test_flip_computes_the_ensemble_on_the_fly_and_still_trains():
    rel = fit({"flip": True}, Ctx(synthetic_task()))
    assert len(rel.info["history"]["kd_loss"]) == TINY["epochs"]
    assert all(math.isfinite(v) for v in rel.info["history"]["kd_loss"])


def test_bad_dense_configs_are_one_line_errors():
    with pytest.raises(BenchError, match="at least 2 clients"):
        make_config(DENSEConfig, {"clients": 1}, "dense")
    with pytest.raises(BenchError, match="temperature"):
        make_config(DENSEConfig, {"temperature": 0}, "dense")
    with pytest.raises(BenchError, match="no BatchNorm2d"):
        fit({"arch": "mlp"}, Ctx(synthetic_task()))
    rel = fit({"arch": "mlp", "w_bn": 0.0}, Ctx(synthetic_task()))  # without the BN term any arch works
    assert rel.privacy.unit == "none"


# ---------------------------------------------------------------------------------------------
# FedDPSD in the query unit: dpsd / dpdfd with the one-shot client ensemble as their one teacher


class CachingCtx(Ctx):
    """A context whose shared artifacts are cached by (kind, key), as the runner's; DPSD's shared
    ``none`` teacher must not be asked for when the clients are the teacher."""

    def __init__(self, task, seed=0, epsilon=1.0):
        super().__init__(task, seed)
        self.epsilon, self.delta = epsilon, 1e-5
        self.cache, self.builds = {}, []

    def artifact(self, kind, key, build):
        k = (kind, repr(key))
        if k not in self.cache:
            self.builds.append(kind)
            self.cache[k] = build()
        return self.cache[k]

    def fit_defense(self, name, config=None, **kw):
        raise AssertionError("the shared 'none' teacher was asked for")


FED_TEACHER = {"clients": 4, "partition": "dirichlet", "alpha": 0.5, "local_epochs": 3, "local_batch_size": 16}
TRANSCRIPTION = {"iterations": 6, "batch_size": 16, "eval_every": 3, "latent_dim": 8, "generator_width": 8,
                 "noise_multiplier": 20.0, "teacher_clients": FED_TEACHER}


@pytest.mark.parametrize("method", ["dpsd", "dpdfd"])
def test_feddpsd_query_unit_uses_dense_clients_as_one_teacher(method, monkeypatch):
    from bench.core import registry
    from bench.lib.distill import teacher as teacher_mod

    task = synthetic_task(n=200)
    ctx = CachingCtx(task)
    dense = fit({k: v for k, v in FED_TEACHER.items()}, ctx)  # trains the clients once
    assert ctx.builds == ["oneshot-clients"]
    seen = []
    orig = teacher_mod.resolve_teacher

    def spy(ctx_, c, name):
        out = orig(ctx_, c, name)
        seen.append(out[0])
        object.__setattr__(task.members, "locked", True)  # the transcription never reads the members
        return out

    monkeypatch.setattr(teacher_mod, "resolve_teacher", spy)
    monkeypatch.setattr("bench.lib.distill.resolve_teacher", spy)
    cls = registry.get_defense(method)
    rel = cls(make_config(cls.Config, TRANSCRIPTION, method)).fit(ctx)
    assert ctx.builds == ["oneshot-clients"]  # the same client models, not trained again
    ens = seen[0]
    assert isinstance(ens, fed_mod.LogitEnsemble) and len(ens.models) == FED_TEACHER["clients"]
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ens(x), torch.stack([m(x) for m in ens.models]).mean(0))
    assert rel.privacy.unit == "query" and rel.privacy.epsilon < 1.0
    assert rel.privacy.extra["epsilon_example_level"] > rel.privacy.epsilon
    assert rel.info["teacher"].startswith("client ensemble (4 clients, dirichlet")
    assert rel.info["teacher_clients"]["split_fingerprint"] == dense.info["clients"]["fingerprint"]
    assert "class_histograms" not in rel.info["teacher_clients"]  # no member statistics in the release
    # ... only the split's recipe, from which the per-client view recomputes DENSE's very split
    assert set(rel.info["teacher_clients"]["client_split"]) == {"spec", "fingerprint"}
    found = fed_mod.find_partition(rel.info)
    assert found["spec"] == dense.info["clients"]["spec"]
    object.__setattr__(task.members, "locked", False)  # the attack's side may read the members
    assert (fed_mod.client_of_members(task.members, found)
            == fed_mod.client_of_members(task.members, dense.info["clients"])).all()


def test_feddpsd_teacher_clients_bad_configs_are_one_line_errors():
    from defenses.dpsd import DPSDConfig

    with pytest.raises(BenchError, match="unknown teacher_clients key 'client'"):
        make_config(DPSDConfig, {"teacher_clients": {"client": 3}}, "dpsd")
    with pytest.raises(BenchError, match="excludes teachers > 1"):
        make_config(DPSDConfig, {"teacher_clients": {"clients": 3}, "teachers": 10}, "dpsd")
    with pytest.raises(BenchError, match="at least 2 clients"):
        make_config(DPSDConfig, {"teacher_clients": {"clients": 1}}, "dpsd")


def test_feddpsd_release_does_not_depend_on_whether_the_clients_came_from_the_cache():
    """Same seed and config -> the same student, whether the one-shot clients are built inside the
    transcription's fit (a cold cache) or were built earlier by DENSE and the global torch RNG has
    moved on since (a warm cache): every random stream of the loop has its own seeded generator."""
    from bench.core import registry

    cls = registry.get_defense("dpsd")

    def transcribe(warm: bool):
        ctx = CachingCtx(synthetic_task(n=200))
        if warm:
            fit(dict(FED_TEACHER), ctx)
            torch.rand(1000)  # the global stream is elsewhere now
        rel = cls(make_config(cls.Config, TRANSCRIPTION, "dpsd")).fit(ctx)
        assert ctx.builds == ["oneshot-clients"]
        return rel.model.state_dict(), rel.info["history"]["val_acc"]

    (cold, hist_cold), (warm, hist_warm) = transcribe(False), transcribe(True)
    assert hist_cold == hist_warm
    assert all(torch.equal(cold[k], warm[k]) for k in cold)
