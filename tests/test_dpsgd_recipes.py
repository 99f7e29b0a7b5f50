"""DP-SGD's ScatterNet recipe (Tramer & Boneh 2021) and DP hyperparameter selection (Papernot &
Steinke 2022): the fixed front end costs nothing and is not trained, the tuned epsilon covers the
whole selection (checked against Theorem 2 by hand on the library's single-run RDP curve), the
number of runs follows its law, same seed -> same model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.core.cache import Cache
from bench.core.config import make_config
from bench.harness.context import CellContext, Env
from bench.lib import accounting as A
from bench.lib.models import build_model
from bench.lib.tasks import build_task
from defenses.dpsgd import DPSGD, DPSGDConfig, _draw_runs


def _ctx(tmp_path, eps, seed=0, members=300):
    task = build_task("digits", {"members": members, "val": 100, "nonmembers": 100}, seed)
    env = Env(str(tmp_path / "run"), str(tmp_path / "cache"), "", "cpu", "test", progress=False)
    return CellContext(env, Cache(env.cache_dir), task, eps, 1e-5, seed, [], {}, {})


def _fit(tmp_path, eps, seed=0, **cfg):
    c = make_config(DPSGDConfig, {"epochs": 2, "batch_size": 50, "lr": 0.5, **cfg}, "dpsgd")
    return DPSGD(c).fit(_ctx(tmp_path, eps, seed))


# -- the ScatterNet front end -------------------------------------------------------------------

def test_scatternet_frontend_is_fixed_differentiable_and_not_stored():
    m = build_model({"name": "scatter-cnn", "in_channels": 1, "image_size": 28, "num_classes": 10})
    assert not list(m.frontend.parameters())  # nothing to train, nothing DP-SGD could touch
    assert not any(k.startswith("features.0") for k in m.state_dict())  # filters rebuilt, not saved
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    assert m.frontend(x).shape == (3, 81, 7, 7)  # 1 + J L + L^2 J (J - 1) / 2 channels at 28 / 2^J
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # inversion attacks can back-propagate
    # the trainable part on the front end's output is the same function as the whole model
    with torch.no_grad():
        assert torch.allclose(m(x), m.trainable()(m.frontend(x)), atol=1e-6)
    # the same spec rebuilds the same front end (released models are rebuilt from their spec)
    m2 = build_model({"name": "scatter-cnn", "in_channels": 1, "image_size": 28, "num_classes": 10})
    with torch.no_grad():
        assert torch.equal(m.frontend(x), m2.frontend(x))


def test_scatter_cnn_rejects_an_image_size_the_transform_cannot_take():
    from bench.api import BenchError

    with pytest.raises(BenchError, match="divisible by 4"):
        build_model({"name": "scatter-cnn", "in_channels": 1, "image_size": 30, "num_classes": 10})


def test_scatter_recipe_trains_only_the_body_and_releases_a_plain_model(tmp_path):
    rel = _fit(tmp_path, 1.0, arch="scatter-cnn")
    p = rel.privacy
    assert p.unit == "example" and p.epsilon <= 1.0 + 0.01 and "PRV" in p.accountant
    assert "last iterate" in p.selection and "not accounted" in p.selection
    init = build_model(rel.archs["model"])
    trained = rel.model.state_dict()
    assert set(trained) == set(init.state_dict()) and not any("_module" in k for k in trained)
    # DP-SGD moved the body's weights (the front end has none)
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in trained.items())
    assert rel.model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert len(rel.info["history"]["val_acc"]) == 2


def test_scatter_recipe_same_seed_same_model(tmp_path):
    a, b = _fit(tmp_path / "a", 1.0, arch="scatter-cnn"), _fit(tmp_path / "b", 1.0, arch="scatter-cnn")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# -- DP hyperparameter selection ----------------------------------------------------------------

def _hand_geometric_epsilon(sigma, q, steps, delta, mean):
    """Papernot & Steinke (ICLR 2022), Theorem 2 with eta = 1 (geometric K, gamma = 1 / E[K]):
    eps'(lam) = eps(lam) + log(E[K]) / (lam - 1) + 2 min_lamhat [(1 - 1/lamhat) eps(lamhat) - log(gamma) / lamhat],
    then monotonicity in lam, on the single-run RDP curve dp_accounting computes."""
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as R

    acc = R.RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    orders, rdp = np.asarray(acc._orders, float), np.asarray(acc._rdp, float)
    gamma = 1.0 / mean
    const = 2 * min((1 - 1 / lh) * eh - math.log(gamma) / lh for lh, eh in zip(orders, rdp))
    out = np.array([r + math.log(mean) / (o - 1) + const if o > 1 else math.inf for o, r in zip(orders, rdp)])
    out = np.array([out[orders >= o].min() for o in orders])
    return float(R.compute_epsilon(orders, out, delta)[0])


def test_tuned_epsilon_matches_theorem_2_by_hand():
    sigma, q, steps, delta = 2.0, 0.02, 500, 1e-5
    for mean in (2.0, 5.0):
        ours = A.tuned_dpsgd_epsilon(sigma, q, steps, delta, mean, 1.0)
        assert math.isclose(ours, _hand_geometric_epsilon(sigma, q, steps, delta, mean), rel_tol=1e-9)
    # selection is never free: above one run's RDP epsilon, and more runs on average cost more
    one = A.dpsgd_epsilon(sigma, q, steps, delta, "rdp")
    assert one < A.tuned_dpsgd_epsilon(sigma, q, steps, delta, 2.0, 1.0) < A.tuned_dpsgd_epsilon(sigma, q, steps, delta, 5.0, 1.0)
    # calibration inverts it
    z = A.calibrate_tuned_dpsgd(1.0, delta, q, steps, 3.0, math.inf)
    assert 0.99 <= A.tuned_dpsgd_epsilon(z, q, steps, delta, 3.0, math.inf) <= 1.0


@pytest.mark.parametrize("shape", [1.0, 0.5, math.inf])
def test_number_of_runs_follows_its_law(shape):
    rng = np.random.default_rng(0)
    ks = np.array([_draw_runs(rng, 3.0, shape) for _ in range(4000)])
    assert abs(ks.mean() - 3.0) < 0.12  # ~4 standard errors
    if math.isinf(shape):
        assert abs((ks == 0).mean() - math.exp(-3.0)) < 0.015  # Poisson: K = 0 happens
    else:
        assert ks.min() >= 1  # truncated: at least one run
    if shape == 1.0:  # geometric: P(K = 1) = gamma = 1 / E[K]
        assert abs((ks == 1).mean() - 1 / 3) < 0.03


def test_tuned_dpsgd_spends_the_target_over_the_whole_selection(tmp_path):
    tuning = {"mean_runs": 2.0, "shape": 1.0, "lr": [0.1, 1.0]}
    rel = _fit(tmp_path, 2.0, arch="mlp", max_grad_norm=1.0, tuning=tuning)
    p, info = rel.privacy, rel.info
    k = p.extra["tuning_runs"]
    assert k >= 1 and len(info["history"]["runs"]) == k
    assert 2.0 - 0.05 <= p.epsilon <= 2.0 + 1e-6 and "RepeatAndSelect" in p.accountant
    # both numbers: the whole procedure's and what one run alone would claim
    assert p.extra["epsilon_one_run"] < p.epsilon
    assert "accounted in epsilon" in p.selection
    # tuning costs noise: sigma above the untuned calibration for the same target
    plain = _fit(tmp_path / "plain", 2.0, arch="mlp", max_grad_norm=1.0)
    assert p.extra["noise_multiplier"] > plain.privacy.extra["noise_multiplier"]
    # the released run is the one with the best validation accuracy
    accs = [r["final_val_acc"] for r in info["history"]["runs"]]
    assert info["selected_run"] == int(np.argmax(accs))
    again = _fit(tmp_path / "again", 2.0, arch="mlp", max_grad_norm=1.0, tuning=tuning)
    for va, vb in zip(rel.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(va, vb)


def test_poisson_tuning_with_no_run_releases_the_data_independent_initialisation(tmp_path):
    tuning = {"mean_runs": 1.0, "shape": math.inf, "lr": [0.5]}
    seed = next(s for s in range(50) if _draw_runs(np.random.default_rng([s, 2022]), 1.0, math.inf) == 0)
    rel = _fit(tmp_path, 2.0, seed=seed, arch="mlp", max_grad_norm=1.0, tuning=tuning)
    assert rel.privacy.extra["tuning_runs"] == 0 and rel.info["history"]["runs"] == []
    assert rel.info["selected_run"] is None
    assert math.isfinite(rel.privacy.epsilon)


def test_tuning_config_is_checked():
    from bench.api import BenchError

    for bad in ({"mean_runs": 0.5}, {"mean_runs": 2.0, "lr": []}, {"mean_runs": 2.0, "shape": 0.0}):
        with pytest.raises(BenchError):
            make_config(DPSGDConfig, {"tuning": bad}, "dpsgd")
