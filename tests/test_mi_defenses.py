"""The model-inversion defenses MID (AAAI 2021) and BiDO (KDD 2022): each trains, its regulariser
moves the quantity it targets (MID: the KL bound on I(X; Z) falls; BiDO: HSIC(X, Z) falls with
lambda_x, HSIC(Z, Y) rises with lambda_y), the same seed gives the same model, the release is a
plain deterministic classifier."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.core.cache import Cache
from bench.core.config import make_config
from bench.harness.context import CellContext, Env
from bench.lib.dependence import coco, hsic_normalized, kernel_matrix
from bench.lib.models import build_model
from bench.lib.tasks import build_task
from defenses.bido import BiDO, BiDOConfig, hidden_layers
from defenses.mid import MID, MIDConfig, kl_to_standard_normal

TASK = build_task("digits", {"members": 600, "val": 200, "nonmembers": 200}, 0)


def _ctx(tmp_path, seed=0):
    env = Env(str(tmp_path / "run"), str(tmp_path / "cache"), "", "cpu", "test", progress=False)
    return CellContext(env, Cache(env.cache_dir), TASK, math.inf, 0.0, seed, [], {}, {})


def _mid(tmp_path, **cfg):
    c = make_config(MIDConfig, {"arch": "mlp", "epochs": 5, "batch_size": 32, **cfg}, "mid")
    return MID(c).fit(_ctx(tmp_path))


def _bido(tmp_path, **cfg):
    c = make_config(BiDOConfig, {"arch": "mlp", "epochs": 5, "batch_size": 32, **cfg}, "bido")
    return BiDO(c).fit(_ctx(tmp_path))


def _same(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the dependence measures --------------------------------------------------------------------

def test_dependence_measures_rank_dependent_above_independent_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    indep = torch.randn(64, 20, generator=g)
    dep = 2 * x + 0.01 * torch.randn(64, 20, generator=g)
    for measure in (hsic_normalized, coco):
        assert measure(x, dep) > measure(x, indep)
    y = F.one_hot(torch.randint(0, 5, (64,), generator=g), 5).float()
    z = y @ torch.randn(5, 20, generator=g) + 0.1 * torch.randn(64, 20, generator=g)
    for measure in (hsic_normalized, coco):
        assert measure(z, y, y_kernel="linear") > measure(indep, y, y_kernel="linear")
    # the Gaussian kernel's bandwidth is scaled by the dimension: exp(-||a-b||^2 / (2 sigma^2 d))
    k = kernel_matrix(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), sigma=1.0)
    assert torch.isclose(k[0, 1], torch.tensor(math.exp(-2 / 4)))


# -- MID ------------------------------------------------------------------------------------------

def test_mid_bottleneck_lowers_the_information_bound(tmp_path):
    free, mid = _mid(tmp_path / "free", beta=0.0), _mid(tmp_path / "mid", beta=0.1)

    def kl(rel):
        with torch.no_grad():
            mu, sigma = rel.model.eval().encode(TASK.val.x)
            return float(kl_to_standard_normal(mu, sigma))

    assert kl(mid) < 0.2 * kl(free)  # measured on digits: ~10 vs ~295 nats
    assert mid.info["history"]["val_acc"][mid.info["history"]["selected_epoch"]] > 0.5  # it still classifies
    assert mid.privacy.unit == "none" and math.isinf(mid.privacy.epsilon)
    assert "validation split" in mid.privacy.selection


def test_mid_release_is_deterministic_and_rebuilds_from_its_spec(tmp_path):
    rel = _mid(tmp_path)
    m = rel.model.eval()
    x = TASK.test.x[:16]
    assert torch.equal(m(x), m(x))  # z = mu at evaluation
    again = build_model(rel.archs["model"])
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.eval()(x), m(x))
    assert _same(rel, _mid(tmp_path / "again"))


# -- BiDO -----------------------------------------------------------------------------------------

def _dependence(model, measure=hsic_normalized):
    outs = []
    hooks = [layer.register_forward_hook(lambda _m, _i, o: outs.append(o)) for layer in hidden_layers(model)]
    x = TASK.val.x[:128]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    flat, y = x.reshape(128, -1), F.one_hot(TASK.val.y[:128], TASK.num_classes).float()
    return (sum(float(measure(o.reshape(128, -1), flat)) for o in outs),
            sum(float(measure(o.reshape(128, -1), y, y_kernel="linear")) for o in outs))


def test_bido_lambda_x_lowers_input_dependence_and_lambda_y_raises_label_dependence(tmp_path):
    plain = _dependence(_bido(tmp_path / "plain", lambda_x=0.0, lambda_y=0.0).model)
    less_x = _dependence(_bido(tmp_path / "x", lambda_x=2.0, lambda_y=0.0).model)
    more_y = _dependence(_bido(tmp_path / "y", lambda_x=0.0, lambda_y=20.0).model)
    assert less_x[0] < 0.5 * plain[0]  # measured: ~3.7 vs ~13.7 on held-out rows
    assert more_y[1] > plain[1]  # measured: ~5.3 vs ~4.8


def test_bido_defaults_are_the_papers_mnist_weights_and_the_release_has_no_hooks(tmp_path):
    assert make_config(BiDOConfig, {}, "bido").weights() == (2.0, 20.0)
    assert make_config(BiDOConfig, {"measure": "coco"}, "bido").weights() == (1.0, 50.0)
    rel = _bido(tmp_path, measure="coco")
    assert all(not m._forward_hooks for m in rel.model.modules())
    assert set(rel.info["history"]["terms"]) == {"ce", "d_xz", "d_yz"}
    assert rel.privacy.extra["lambda_x"] == 1.0 and "validation split" in rel.privacy.selection
    assert _same(rel, _bido(tmp_path / "again", measure="coco"))


def test_bido_and_mid_reject_bad_settings():
    from bench.api import BenchError

    for cls, bad in ((BiDOConfig, {"batch_size": 1}), (BiDOConfig, {"lambda_x": -1.0}),
                     (MIDConfig, {"beta": -0.1}), (MIDConfig, {"k": 0})):
        with pytest.raises(BenchError):
            make_config(cls, bad, "x")
