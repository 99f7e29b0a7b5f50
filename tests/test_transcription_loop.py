"""The speed measures of the transcription loop (bench/lib/distill/loop.py) and of the ``cnn`` /
``student-cnn`` architectures change nothing but speed: pooling before ReLU is the same function
and gradient bit for bit; the loop runs the generator once per iteration and hands every network
back in the standard memory layout with the teacher's weights untouched; channels_last gives the
same training trajectory up to float rounding. Tiny configs, one CPU thread."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.lib import distill as D
from bench.lib.models import CNN


def _conv_relu_pool(model: nn.Module) -> nn.Module:
    """The textbook order Conv -> ReLU -> MaxPool of ``model.features`` (same parameters)."""
    ref = copy.deepcopy(model)
    mods = list(ref.features)
    pools = [i for i, m in enumerate(mods) if isinstance(m, nn.MaxPool2d)]
    for i in pools:
        assert isinstance(mods[i + 1], nn.ReLU), "pooling is followed by its ReLU"
        mods[i], mods[i + 1] = mods[i + 1], mods[i]
    ref.features = nn.Sequential(*mods)
    return ref


@pytest.mark.parametrize("build", [lambda: CNN(1, 28, 10).eval(), lambda: D.StudentCNN(1, 28, 10, 8)])
def test_pool_before_relu_is_conv_relu_pool_bit_for_bit(build):
    torch.manual_seed(0)
    model = build()
    ref = _conv_relu_pool(model)
    assert list(model.state_dict()) == list(ref.state_dict())  # releases load either way
    x = torch.randn(16, 1, 28, 28)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = model(x1), ref(x2)
    assert torch.equal(y1, y2)
    (y1.square().sum()).backward()
    (y2.square().sum()).backward()
    assert torch.equal(x1.grad, x2.grad)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)


def _nets(seed=0):
    torch.manual_seed(seed)
    teacher = CNN(1, 12, 4, width=4, hidden=8)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval(), D.StudentCNN(1, 12, 4, 4), D.DAFLGenerator(1, 12, 4, 8, 8)


def _run(channels_last: bool, iterations=6, nets=None):
    teacher, student, gen = nets or _nets()
    ann = D.GaussianAnnotator(0.5, 1.0, 1e-3, 4, 1.0, "dkd", 1.0, 1.0, 8.0, torch.Generator().manual_seed(1))
    cfg = D.LoopConfig(iterations, 16, 3e-3, 1e-2, 1.0, 5.0, 0.1, 1.0, eval_every=10 ** 6, select_on_val=False,
                       channels_last=channels_last)
    D.transcribe(teacher=teacher, student=student, generator=gen, annotate=ann, mode="data", cfg=cfg,
                 rng=torch.Generator().manual_seed(2), device="cpu", val=None)
    return teacher, student, gen


def test_generator_runs_once_per_iteration_and_networks_come_back_in_standard_layout():
    teacher, student, gen = _nets()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    calls = []
    gen.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    _run(True, iterations=5, nets=(teacher, student, gen))
    assert len(calls) == 5  # one forward per iteration, the generator step reuses it
    assert all(calls)  # every iteration has a generator step here, so every batch keeps its graph
    for net in (teacher, student, gen):
        for t in list(net.parameters()) + list(net.buffers()):
            assert t.is_contiguous(), "a network was left in channels_last"
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_channels_last_follows_the_standard_layout_trajectory():
    """Same trajectory up to rounding: the two layouts' parameters differ by under 1 % of how far
    training moved them (L1 over every parameter; measured: 0.02 % after 6 iterations). Adam
    turns a rounding-level gradient on a near-zero coordinate into up to a full step, so an
    element-wise tolerance would test Adam, not the layout."""
    _, s1, g1 = _run(True)
    _, s2, g2 = _run(False)
    _, s0, g0 = _nets()
    p1, p2, p0 = ([p.detach() for p in (*s.parameters(), *g.parameters())] for s, g in ((s1, g1), (s2, g2), (s0, g0)))
    apart = sum(float((a - b).abs().sum()) for a, b in zip(p1, p2))
    moved = sum(float((a - b).abs().sum()) for a, b in zip(p1, p0))
    assert moved > 0
    assert apart < 0.01 * moved


def test_fit_classifier_trains_convnets_channels_last_and_returns_the_standard_layout():
    import numpy as np

    from bench.lib.models import MLP
    from bench.lib.tasks import Split
    from bench.lib.train import conv_layout, fit_classifier

    x = torch.rand(64, 1, 12, 12)
    assert conv_layout(CNN(1, 12, 4, width=4, hidden=8), x) == torch.channels_last
    assert conv_layout(MLP(1, 12, 4), x) == torch.contiguous_format
    assert conv_layout(CNN(1, 12, 4, width=4, hidden=8), x.flatten(1)) == torch.contiguous_format
    y = torch.arange(64) % 4
    split = Split(x, y, np.arange(64))
    torch.manual_seed(0)
    model = CNN(1, 12, 4, width=4, hidden=8)
    seen = []
    conv2 = model.features[3]  # 4 -> 8 channels: the layouts differ (a 1-channel tensor is both)
    assert isinstance(conv2, nn.Conv2d)

    def layout_hook(m, inputs):
        cl = torch.channels_last
        seen.append(inputs[0].is_contiguous(memory_format=cl) and m.weight.is_contiguous(memory_format=cl)
                    and not m.weight.is_contiguous())

    conv2.register_forward_pre_hook(layout_hook)
    model, hist = fit_classifier(model, split, split, epochs=2, lr=1e-2, batch_size=16,
                                 generator=torch.Generator().manual_seed(1))
    assert seen and all(seen[:8])  # the training steps ran channels_last
    assert all(p.is_contiguous() for p in model.parameters())
    assert len(hist["val_acc"]) == 2
