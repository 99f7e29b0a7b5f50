"""``gen-reconstruction`` (white-box latent reconstruction, GAN-Leaks): the white-box view of each
released generator family reproduces its ``sample``; the attack finds a generator that can
reproduce its members (AUC near 1) and stays at chance on one built from other images of the same
distribution; releases it cannot attack are skipped, not failed; same seed, same scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attacks.gen_reconstruction import GenReconstruction
from bench.core.api import PrivacyReport, Release
from bench.core.config import make_config
from bench.lib.distill.nets import DAFLGenerator
from bench.lib.generators import latent_decoder
from bench.lib.synthetic.gan import CondDCGANGenerator
from bench.lib.tasks import build_task
from defenses.vae_metric import VAEDecoder

PROTOCOL = {"members": 150, "val": 100, "nonmembers": 150}


class Ctx:
    def __init__(self, task, seed=0, defense="fake"):
        self.task, self.seed, self.defense, self.defense_config = task, seed, defense, {}
        self.epsilon, self.delta, self.device = float("inf"), 1e-5, torch.device("cpu")
        self.logs: list[str] = []

    def log(self, m):
        self.logs.append(m)

    def progress(self, it, **kw):
        return it


class MixtureGenerator(nn.Module):
    """G(z) = softmax(4 z) @ images: any stored image is one latent away (a peaked z), any other
    image only as a convex mixture of the stored ones. Unconditional, z ~ N(0, I_n)."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.register_buffer("images", images.flatten(1).clone())
        self.shape = images.shape[1:]
        self.latent_dim = len(images)

    def forward(self, z):
        return (torch.softmax(4 * z, 1) @ self.images).view(-1, *self.shape)

    @torch.no_grad()
    def sample(self, n, generator=None, device="cpu"):
        return self(torch.randn(n, self.latent_dim, generator=generator))


@pytest.fixture(scope="module")
def task():
    return build_task("digits", PROTOCOL, 0)


def release(generator=None):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    mods = {"model": model} if generator is None else {"model": model, "generator": generator}
    return Release(mods, {}, PrivacyReport.non_private())


def attack(**cfg):
    base = {"restarts": 2, "steps": 150, "lr": 0.1, "latent_penalty": 0.0, "n_boot": 100}
    return GenReconstruction(make_config(GenReconstruction.Config, {**base, **cfg}, "GenReconstruction"))


@pytest.mark.parametrize("post", [{}, {"output_blur": 0.6}, {"output_contrast": "autocontrast"}])
def test_decoder_reproduces_sample_of_the_conditional_dcgan(post):
    torch.manual_seed(0)
    g = CondDCGANGenerator(1, 8, 10, z_dim=6, gf_dim=4, gfc_dim=16, **post).eval()
    x, y = g.sample(7, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # sample's draws: labels first, then z ~ U(-1, 1)
    labels = torch.randint(0, 10, (7,), generator=gen)
    z = torch.rand(7, 6, generator=gen) * 2 - 1
    dec = latent_decoder(g)
    assert (dec.prior, dec.conditional, dec.dim) == ("uniform", True, 6)
    assert torch.equal(labels, y)
    assert torch.allclose(dec.decode(z, labels), x, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: DAFLGenerator(1, 8, 10, latent_dim=5, width=8),
                                  lambda: VAEDecoder(1, 8, 10, latent_dim=5, hidden=16)])
def test_decoder_reproduces_sample_of_the_normal_prior_generators(make):
    torch.manual_seed(0)
    g = make().eval()
    x = g.sample(6, generator=torch.Generator().manual_seed(4))
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    dec = latent_decoder(g)
    assert (dec.prior, dec.conditional, dec.dim) == ("normal", False, 5)
    assert torch.allclose(dec.decode(z, None), x, atol=1e-6)


def test_generator_that_can_reproduce_its_members_leaks(task):
    res = attack().run(Ctx(task), release(MixtureGenerator(task.members.x)))
    m = res.metrics
    assert m["auc"] >= 0.9, m
    assert m["privacy_loss"] >= 0.6 and m["eps_lb"] > 0.5, m
    assert m["mean_error_members"] < m["mean_error_nonmembers"]
    assert res.arrays["scores"].shape == (300,) and res.arrays["labels"].sum() == 150
    assert np.array_equal(-res.arrays["scores"], res.arrays["reconstruction_error"])


def test_generator_of_other_images_is_at_chance(task):
    # the same construction on test-split digits (same distribution, no member among them)
    m = attack().run(Ctx(task), release(MixtureGenerator(task.test.x[:150]))).metrics
    assert abs(m["auc"] - 0.5) < 0.1, m
    assert abs(m["privacy_loss"]) < 0.25 and m["eps_lb"] < 0.5, m


def test_same_seed_same_scores_and_another_seed_other_starts(task):
    g = MixtureGenerator(task.test.x[:150])
    a = attack(steps=20).run(Ctx(task), release(g))
    b = attack(steps=20).run(Ctx(task), release(g))
    c = attack(steps=20, init_seed=1).run(Ctx(task), release(g))
    assert np.array_equal(a.arrays["scores"], b.arrays["scores"])
    assert not np.array_equal(a.arrays["scores"], c.arrays["scores"])


def test_releases_it_cannot_attack_are_skipped(task):
    ctx = Ctx(task, defense="none")
    res = attack().run(ctx, release())
    assert res.metrics == {} and "no generator" in res.info["skipped"]
    opaque = nn.Module()
    opaque.sample = lambda n, generator=None, device="cpu": torch.rand(n, 1, 8, 8, generator=generator)
    ctx2 = Ctx(task, defense="custom")
    res2 = attack().run(ctx2, release(opaque))
    assert res2.metrics == {} and "no known latent interface" in res2.info["skipped"]
    assert ctx2.logs and "skipped" in ctx2.logs[0]


def test_bad_config_is_one_clear_error():
    from bench.api import BenchError

    with pytest.raises(BenchError, match="restarts"):
        make_config(GenReconstruction.Config, {"restarts": 0}, "gen-reconstruction")
