"""``fedavg``: Federated Averaging (McMahan, Moore, Ramage, Hampson, Agüera y Arcas,
"Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017).

The members are split over ``clients`` clients (``partition``: ``iid`` or ``dirichlet`` label
skew with concentration ``alpha``, :func:`bench.lib.federated.client_partition`); each round
``clients_per_round`` of them (C K in the paper's notation; all by default) train the global
model for ``local_epochs`` epochs of minibatch SGD (batch B, learning rate ``lr``) and the server
replaces it with their size-weighted average. Non-private (unit ``none``): it is the federated
reference row, as ``none`` is the centralised one. The release is the model after the last round
(no selection); the validation accuracy per round is a diagnostic.

Defaults (10 clients, full participation, E = 1, B = 50, SGD lr 0.05, 10 rounds) follow the
paper's MNIST CNN experiments in kind (E in {1, 5, 20}, B in {10, 50}); the round count is a CPU
scale-down (the paper runs hundreds of rounds to reach 99 %). Partition details (redraw until
every client has 10 examples, NIID-Bench's rule) are in docs/methods/fedavg.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from bench.api import LAST_ITERATE, BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.federated import run_fedavg, split_members
from bench.lib.models import build_model, spec_for
from bench.lib.train import seed_everything


@dataclass
class FedAvgConfig:
    arch: str = "cnn"
    clients: int = 10
    partition: Literal["iid", "dirichlet"] = "iid"
    #: Dirichlet concentration of the label skew (``partition: dirichlet``); smaller = more skewed
    alpha: float = 0.5
    #: clients per round (None = all)
    clients_per_round: Optional[int] = None
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 50
    lr: float = 0.05
    momentum: float = 0.0
    #: validation accuracy every this many rounds (diagnostic only)
    eval_every: int = 1

    def validate(self):
        if min(self.clients, self.rounds, self.local_epochs, self.batch_size, self.eval_every) < 1:
            raise BenchError("fedavg: clients, rounds, local_epochs, batch_size, eval_every must be >= 1")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.clients:
            raise BenchError("fedavg: clients_per_round must be in [1, clients]")
        if not self.alpha > 0 or not self.lr > 0:
            raise BenchError("fedavg: alpha and lr must be > 0")


@register_defense("fedavg")
class FedAvg(Defense):
    """Federated Averaging over simulated clients (non-private)."""

    Config = FedAvgConfig
    privacy_unit = "none"
    paper = ("McMahan, Moore, Ramage, Hampson, Agüera y Arcas, Communication-Efficient Learning of Deep "
             "Networks from Decentralized Data, AISTATS 2017")

    def fit(self, ctx) -> Release:
        c = self.config
        seed_everything(ctx.seed)
        try:
            clients, split = split_members(ctx.task.members, ctx.task.num_classes, c.clients, c.partition, c.alpha,
                                           ctx.seed)
        except ValueError as e:
            raise BenchError(f"fedavg: {e}") from None
        ctx.log(f"fedavg: {c.clients} clients ({c.partition}{f', alpha {c.alpha:g}' if c.partition == 'dirichlet' else ''}), "
                f"label skew (mean TV) {split['label_skew_tv']:.3f}, split {split['fingerprint']}")
        spec = spec_for(ctx.task, c.arch)
        model = build_model(spec)
        model, hist = run_fedavg(model, clients, rounds=c.rounds,
                                 local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                                 clients_per_round=c.clients_per_round, val=ctx.task.val, eval_every=c.eval_every,
                                 seed=ctx.seed, device=ctx.device, progress=ctx.progress)
        privacy = PrivacyReport.non_private()
        privacy.selection = LAST_ITERATE
        return Release({"model": model.cpu()}, {"model": spec}, privacy,
                       {"history": hist, "clients": split, "partition": c.partition,
                        "alpha": c.alpha if c.partition == "dirichlet" else None})
