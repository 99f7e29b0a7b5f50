"""``dense``: DENSE, data-free one-shot federated learning (Zhang, Chen, Li, Lyu, Wu, Ding, Shen,
Wu, "DENSE: Data-Free One-Shot Federated Learning", NeurIPS 2022; official code
github.com/zj-jayzhang/DENSE).

One communication round. The members are split over ``clients`` clients
(:func:`bench.lib.federated.client_partition`, IID or Dirichlet(alpha) label skew); every client
trains its own model from a common initialization on its own data (``local_epochs`` of SGD with
momentum) and uploads it once (:func:`bench.lib.federated.one_shot_clients`: a cached shared
artifact, the same models as FedDPSD's query-unit teacher on the same task and seed). The server
never sees data: it averages the clients' logits (the
ensemble), then alternates, for ``epochs`` epochs,

1. **data generation**: a generator is re-initialized and trained, jointly with its latent codes,
   for ``g_steps`` Adam steps on ``w_oh * CE(ensemble(x), y) + w_bn * L_BN + w_adv * L_adv`` for
   a batch x = G(z) (randomly shifted) with random target classes y: L_BN matches the batch
   statistics of every BatchNorm layer of every client model to its running statistics
   (DeepInversion's prior, :class:`bench.lib.distill.losses.BNStatisticsLoss`), L_adv =
   -mean(KL(ensemble || global) on the samples where the global model and the ensemble disagree)
   (the "boundary support" term: samples the global model has not learnt yet). The batch of
   lowest loss joins an image pool;
2. **model distillation**: one pass of the global model over the whole pool, KL(ensemble / T ||
   global / T) * T^2, SGD with momentum.

Non-private (unit ``none``): the clients' models are ordinary non-private models and the server
holds all of them; it is the data-free federated reference row beside FedAvg and FedDPSD. The
release is the global model; the distillation epoch is selected on the validation split
(``select_on_val``; the official code keeps the best *test* accuracy, which this harness never
does). The per-client, ensemble and one-shot parameter-average validation accuracies are kept
in the cell's info as diagnostics (the last is the "FedAvg" row of DENSE's one-shot tables).

Settings. The official code's CIFAR-10 command: 200 epochs, ``g_steps`` 30, synthesis batch 256,
generator Adam lr 1e-3 (betas 0.5, 0.999), latent 256, ``w_bn`` = ``w_oh`` = ``w_adv`` = 1, T =
20, distillation SGD lr 0.005 momentum 0.9 batch 256, local SGD lr 0.01 momentum 0.9 batch 128
"until convergence" (400 local epochs on CIFAR-10); for MNIST the client and global model is its
``CNNMnist``, our ``cnn-bn``. CPU scale-down (size, not substance;
docs/methods/dense.md): 40 epochs of 20 generator steps on batches of 128, 10 local epochs, and
a generator of half DENSE's width. The generator is the library's DAFL generator with a
(tanh + 1) / 2 output (= a sigmoid of twice the pre-activation), the same topology as DENSE's
up to its BatchNorm epsilon and conv biases; DENSE's ngf 64 is ``generator_width: 128``
(channels 128, 128, 64), the default here is 64 (channels 64, 64, 32): one generator step on
128 images costs 1.00 s at width 128 and 0.27 s at 64 on one CPU thread, against 0.42 s for the
ten client models together. DENSE's augmentation (random crop with padding
4 and horizontal flips, in generation and distillation) is kept as random shifts; flips are
off by default (a mirrored digit is not a digit) and on with ``flip: true``. Without flips the
ensemble's logits of a pool batch are computed once when it enters the pool (the same values:
the ensemble is frozen and in eval mode).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import (
    LAST_ITERATE,
    BenchError,
    Defense,
    PrivacyReport,
    Release,
    register_defense,
    val_selection,
)
from bench.lib import distill as D
from bench.lib.distill.losses import BNStatisticsLoss
from bench.lib.federated import LogitEnsemble, OneShotClients, average_state, one_shot_clients
from bench.lib.models import build_model, spec_for
from bench.lib.train import accuracy, seed_everything


@dataclass
class DENSEConfig:
    #: client and global architecture (needs BatchNorm layers for the L_BN term)
    arch: str = "cnn-bn"
    clients: int = 10
    partition: Literal["iid", "dirichlet"] = "dirichlet"
    #: Dirichlet concentration of the label skew (DENSE's beta)
    alpha: float = 0.5
    # --- local training (one shot)
    local_epochs: int = 10
    local_batch_size: int = 128
    local_lr: float = 0.01
    local_momentum: float = 0.9
    # --- server: data generation
    epochs: int = 40
    g_steps: int = 20
    synthesis_batch_size: int = 128
    lr_g: float = 1e-3
    latent_dim: int = 256
    #: DENSE's ngf 64 is 128 here; 64 is the CPU scale-down (a 4x cheaper generator step)
    generator_width: int = 64
    w_oh: float = 1.0
    w_bn: float = 1.0
    w_adv: float = 1.0
    #: random-shift padding of the generated images (DENSE's RandomCrop padding); 0 = none
    crop_padding: int = 4
    #: random horizontal flips in generation and distillation (DENSE's code; off for digits)
    flip: bool = False
    # --- server: distillation
    temperature: float = 20.0
    kd_lr: float = 0.005
    kd_momentum: float = 0.9
    kd_batch_size: int = 256
    #: validation accuracy every this many epochs; the best one is released with select_on_val
    eval_every: int = 1
    select_on_val: bool = True

    def client_settings(self) -> OneShotClients:
        """The one-shot client fields as the library's :class:`OneShotClients`."""
        return OneShotClients(self.clients, self.partition, self.alpha, self.arch, self.local_epochs,
                              self.local_batch_size, self.local_lr, self.local_momentum)

    def validate(self):
        ints = (self.clients, self.local_epochs, self.local_batch_size, self.epochs, self.g_steps,
                self.synthesis_batch_size, self.latent_dim, self.generator_width, self.kd_batch_size, self.eval_every)
        if min(ints) < 1:
            raise BenchError("dense: clients, local_epochs, local_batch_size, epochs, g_steps, synthesis_batch_size, "
                             "latent_dim, generator_width, kd_batch_size and eval_every must be >= 1")
        self.client_settings().validate("dense")
        if not (self.lr_g > 0 and self.kd_lr > 0 and self.temperature > 0):
            raise BenchError("dense: lr_g, kd_lr and temperature must be > 0")
        if min(self.w_oh, self.w_bn, self.w_adv) < 0 or self.crop_padding < 0:
            raise BenchError("dense: w_oh, w_bn, w_adv and crop_padding must be >= 0")
        if not 0 <= self.kd_momentum < 1:
            raise BenchError("dense: kd_momentum must be in [0, 1)")


def random_shift(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch back to its size (torchvision / kornia
    ``RandomCrop(padding=p)``), optionally a random horizontal flip; differentiable in x."""
    if padding == 0 and not flip:
        return x
    b, _, h, w = x.shape
    if padding:
        xp = F.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        m = (torch.rand(b, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(m, x.flip(-1), x)
    return x


def reset_generator(generator: nn.Module, rng: torch.Generator) -> None:
    """DENSE's ``reset_model``: conv / linear weights N(0, 0.02), biases 0, BatchNorm weights
    N(1, 0.02), biases 0 (seeded)."""
    with torch.no_grad():
        for m in generator.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=rng) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.copy_(1.0 + torch.randn(m.weight.shape, generator=rng) * 0.02)
                m.bias.zero_()


@register_defense("dense")
class DENSE(Defense):
    """Data-free one-shot federated learning: client ensemble -> generator -> global model (non-private)."""

    Config = DENSEConfig
    privacy_unit = "none"
    paper = ("Zhang, Chen, Li, Lyu, Wu, Ding, Shen, Wu, DENSE: Data-Free One-Shot Federated Learning, "
             "NeurIPS 2022")

    def fit(self, ctx) -> Release:
        c = self.config
        task, dev = ctx.task, ctx.device
        seed_everything(ctx.seed)
        spec = spec_for(task, c.arch)
        if c.w_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in build_model(spec).modules()):
            raise BenchError(f"dense: arch {spec['name']!r} has no BatchNorm2d layer for the L_BN term "
                             "(use arch: cnn-bn, or w_bn: 0)")
        models, init, split = one_shot_clients(ctx, c.client_settings(), lambda: build_model(spec))
        ctx.log(f"dense: {c.clients} clients ({c.partition}{f', alpha {c.alpha:g}' if c.partition == 'dirichlet' else ''}), "
                f"label skew (mean TV) {split['label_skew_tv']:.3f}, split {split['fingerprint']}")
        sizes = split["sizes"]
        # ---- from here on the private training set (task.members) is never read ----
        ensemble = LogitEnsemble(models).eval()
        diag = self._diagnostics(models, ensemble, sizes, init, task.val, dev)
        ctx.log(f"dense: validation accuracy of the ensemble {diag['ensemble_val_acc']:.4f}, one-shot average "
                f"{diag['oneshot_average_val_acc']:.4f}, clients {min(diag['client_val_acc']):.3f}…"
                f"{max(diag['client_val_acc']):.3f}")
        student, hist = self._server(ctx, ensemble, spec, models)
        privacy = PrivacyReport.non_private()
        privacy.selection = val_selection("the distillation epoch") if c.select_on_val else LAST_ITERATE
        return Release({"model": student.cpu()}, {"model": spec}, privacy,
                       {"history": hist, "selected_epoch": hist["selected_epoch"], "clients": split,
                        "partition": c.partition, "alpha": c.alpha if c.partition == "dirichlet" else None,
                        **diag})

    @staticmethod
    def _diagnostics(models, ensemble, sizes, init, val, dev) -> dict:
        if val is None or not len(val):
            return {"client_val_acc": [], "ensemble_val_acc": float("nan"), "oneshot_average_val_acc": float("nan")}
        avg = copy.deepcopy(init).to(dev)
        avg.load_state_dict(average_state(models, sizes))
        return {"client_val_acc": [accuracy(m, val, dev) for m in models],
                "ensemble_val_acc": accuracy(ensemble, val, dev),
                "oneshot_average_val_acc": accuracy(avg.eval(), val, dev)}

    def _server(self, ctx, ensemble, spec, models):
        c = self.config
        task, dev = ctx.task, ctx.device
        K = task.num_classes
        student = D.seeded_init(ctx.seed * 1000 + 41, lambda: build_model(spec)).to(dev)
        gspec = spec_for(task, {"name": "dafl-generator", "latent_dim": c.latent_dim, "width": c.generator_width})
        generator = D.seeded_init(ctx.seed * 1000 + 43, lambda: build_model(gspec)).to(dev)
        gen_rng = torch.Generator().manual_seed(ctx.seed * 1000 + 47)  # generator resets, codes, targets, shifts
        kd_rng = torch.Generator().manual_seed(ctx.seed * 1000 + 53)  # pool shuffles
        opt_s = torch.optim.SGD(student.parameters(), lr=c.kd_lr, momentum=c.kd_momentum)
        pool_x: list[torch.Tensor] = []
        pool_t: list[torch.Tensor] = []
        hist = {"val_acc": [], "val_epoch": [], "synthesis_loss": [], "kd_loss": [], "pool": []}
        best_acc, best_state, best_epoch = -1.0, None, None
        with BNStatisticsLoss(models) as bn_loss:
            for epoch in ctx.progress(range(c.epochs), desc="dense epochs"):
                x_best, cost = self._synthesize(ensemble, student, generator, bn_loss, gen_rng, K, dev)
                pool_x.append(x_best.cpu())
                if not c.flip:
                    with torch.no_grad():
                        pool_t.append(ensemble(x_best).cpu())
                    bn_loss.value()  # (drop the hooks' terms of this forward)
                kd = self._distill(student, ensemble, opt_s, pool_x, pool_t, kd_rng, bn_loss, dev)
                hist["synthesis_loss"].append(cost)
                hist["kd_loss"].append(kd)
                hist["pool"].append(sum(len(p) for p in pool_x))
                last = epoch == c.epochs - 1
                if task.val is not None and len(task.val) and ((epoch + 1) % c.eval_every == 0 or last):
                    acc = accuracy(student, task.val, dev)
                    hist["val_acc"].append(acc)
                    hist["val_epoch"].append(epoch + 1)
                    if c.select_on_val and acc > best_acc:
                        best_acc, best_epoch = acc, epoch + 1
                        best_state = copy.deepcopy(student.state_dict())
        if c.select_on_val and best_state is not None:
            student.load_state_dict(best_state)
        hist["selected_epoch"] = best_epoch if c.select_on_val and best_state is not None else c.epochs
        student.eval()
        return student, hist

    def _synthesize(self, ensemble, student, generator, bn_loss, rng, K, dev):
        """One data-generation stage: a fresh generator and codes, ``g_steps`` Adam steps; the
        batch of lowest loss (DENSE keeps ``best_inputs``)."""
        c = self.config
        reset_generator(generator, rng)
        generator.train()
        z = torch.randn(c.synthesis_batch_size, c.latent_dim, generator=rng).to(dev).requires_grad_(True)
        y = torch.randint(0, K, (c.synthesis_batch_size,), generator=rng).sort().values.to(dev)
        opt = torch.optim.Adam([{"params": generator.parameters()}, {"params": [z]}], lr=c.lr_g, betas=(0.5, 0.999))
        student.train()  # as the official code: the global model is in train mode during generation
        for p in student.parameters():
            p.requires_grad_(False)
        best_cost, best_x = float("inf"), None
        try:
            for _ in range(c.g_steps):
                opt.zero_grad(set_to_none=True)
                x = generator(z)
                xa = random_shift(x, c.crop_padding, c.flip, rng)
                bn_loss.value()
                t = ensemble(xa)
                l_bn = bn_loss.value()
                l_oh = F.cross_entropy(t, y)
                s = student(xa)
                disagree = (s.argmax(1) != t.argmax(1)).float()
                l_adv = -(D.kl_per_sample(s, t, 1.0) * disagree).mean()
                loss = c.w_bn * l_bn + c.w_oh * l_oh + c.w_adv * l_adv
                cost = float(loss.detach())
                if best_x is None or cost < best_cost:
                    best_cost, best_x = cost, x.detach().clone()
                loss.backward()
                opt.step()
        finally:
            for p in student.parameters():
                p.requires_grad_(True)
        return best_x, best_cost

    def _distill(self, student, ensemble, opt, pool_x, pool_t, rng, bn_loss, dev) -> float:
        """One pass of the global model over the whole pool (shuffled), KL at temperature T."""
        c = self.config
        x_all = torch.cat(pool_x)
        t_all = torch.cat(pool_t) if pool_t else None
        perm = torch.randperm(len(x_all), generator=rng)
        student.train()
        total, n = 0.0, 0
        for i in range(0, len(perm), c.kd_batch_size):
            b = perm[i:i + c.kd_batch_size]
            xb = x_all[b].to(dev)
            if t_all is None:
                xb = random_shift(xb, 0, True, rng)
                with torch.no_grad():
                    tb = ensemble(xb)
                bn_loss.value()
            else:
                tb = t_all[b].to(dev)
            opt.zero_grad(set_to_none=True)
            loss = D.kl_per_sample(student(xb), tb, c.temperature).mean()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            n += len(b)
        return total / max(n, 1)
