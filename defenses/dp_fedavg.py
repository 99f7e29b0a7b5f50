"""``dp-fedavg``: differentially private Federated Averaging at the client level (McMahan, Ramage,
Talwar, Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018, Algorithm 1
"DP-FedAvg" with the fixed-denominator estimator).

Each round every client joins independently with probability q = ``expected_clients_per_round`` /
``clients`` (Poisson sampling); a joining client trains the global model for ``local_epochs``
epochs of minibatch SGD on its own data and returns its model delta, clipped to L2 norm
``clip`` S (flat clipping over all parameters; a non-finite delta, from a local run that diverged,
counts as zero, which keeps the bound); the server adds N(0, (z S)^2) per coordinate to
the sum of clipped deltas, divides by the fixed expected count q N and applies it with
``server_lr``. Privacy unit ``client`` (user-level DP): neighbouring datasets add or remove one
client's whole data. Adding a client changes the sum by at most S whatever its data, so each round
is a Poisson-subsampled Gaussian mechanism with multiplier z; ``rounds`` rounds compose in
dp_accounting (RDP by default, PLD optional), and z is calibrated so that they spend the target
epsilon. q, the denominator, the clip and the round count are configuration values, never
functions of the data. The release is the last round's model (no selection on any split).

No example-level epsilon is claimed: one member's change alters its client's clipped delta by up
to 2 S (a replace-one-client relation), which is not accounted here; tables show the unit.

The partition (:func:`bench.lib.federated.client_partition`) is the simulation's: per-client
sizes and class histograms are noise-free statistics of the members, kept in the cell's info
under ``simulation`` for the experimenter (they are not part of the released model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from bench.api import LAST_ITERATE, BenchError, Defense, PrivacyReport, Release, register_defense
from bench.lib.accounting import calibrate_poisson_gaussian, poisson_gaussian_epsilon
from bench.lib.federated import ClientDP, run_fedavg, split_members
from bench.lib.models import build_model, spec_for
from bench.lib.train import seed_everything


@dataclass
class DPFedAvgConfig:
    arch: str = "cnn"
    clients: int = 100
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.5
    #: q N: the expected participants per round and the fixed denominator of the update
    expected_clients_per_round: float = 10.0
    rounds: int = 50
    local_epochs: int = 1
    batch_size: int = 50
    lr: float = 0.05
    momentum: float = 0.0
    #: S: L2 bound of one client's model delta (all parameters flattened)
    clip: float = 1.0
    server_lr: float = 1.0
    accountant: Literal["rdp", "pld"] = "rdp"
    eval_every: int = 5

    def validate(self):
        if min(self.clients, self.rounds, self.local_epochs, self.batch_size, self.eval_every) < 1:
            raise BenchError("dp-fedavg: clients, rounds, local_epochs, batch_size, eval_every must be >= 1")
        if not 0 < self.expected_clients_per_round <= self.clients:
            raise BenchError("dp-fedavg: expected_clients_per_round must be in (0, clients]")
        if not (self.clip > 0 and self.lr > 0 and self.server_lr > 0 and self.alpha > 0):
            raise BenchError("dp-fedavg: clip, lr, server_lr and alpha must be > 0")


@register_defense("dp-fedavg")
class DPFedAvg(Defense):
    """DP-FedAvg: Poisson client sampling, per-client delta clipping, Gaussian noise; client-level DP."""

    Config = DPFedAvgConfig
    privacy_unit = "client"
    paper = ("McMahan, Ramage, Talwar, Zhang, Learning Differentially Private Recurrent Language Models, "
             "ICLR 2018")

    def fit(self, ctx) -> Release:
        c = self.config
        seed_everything(ctx.seed)
        try:
            clients, split = split_members(ctx.task.members, ctx.task.num_classes, c.clients, c.partition, c.alpha,
                                           ctx.seed)
        except ValueError as e:
            raise BenchError(f"dp-fedavg: {e}") from None
        q = c.expected_clients_per_round / c.clients
        private = not math.isinf(ctx.epsilon)
        z = calibrate_poisson_gaussian(ctx.epsilon, ctx.delta, q, c.rounds, c.accountant) if private else 0.0
        ctx.log(f"dp-fedavg: {c.clients} clients, q = {q:.4g}, {c.rounds} rounds, clip {c.clip:g}, "
                f"noise multiplier {z:.4g} (std of the averaged update {z * c.clip / c.expected_clients_per_round:.4g})")
        spec = spec_for(ctx.task, c.arch)
        model = build_model(spec)
        dp = ClientDP(sample_rate=q, clip=c.clip, noise_multiplier=z, expected_clients=c.expected_clients_per_round,
                      server_lr=c.server_lr)
        model, hist = run_fedavg(model, clients, rounds=c.rounds,
                                 local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                                 dp=dp, val=ctx.task.val, eval_every=c.eval_every, seed=ctx.seed, device=ctx.device,
                                 progress=ctx.progress)
        if private:
            spent = poisson_gaussian_epsilon(z, q, c.rounds, ctx.delta, c.accountant)
            privacy = PrivacyReport(
                spent, ctx.delta, "client", f"{c.accountant.upper()} (dp_accounting)",
                "Poisson-subsampled Gaussian on the sum of clipped client deltas (DP-FedAvg)",
                {"noise_multiplier": z, "sample_rate": q, "rounds": c.rounds, "clip": c.clip,
                 "clients": c.clients, "expected_clients_per_round": c.expected_clients_per_round,
                 "target_epsilon": ctx.epsilon,
                 "neighbouring": "add/remove one client's whole data",
                 "example_level": "not accounted (one member's change moves its client's clipped delta by up to 2 S: "
                                  "replace-one-client)"})
        else:
            privacy = PrivacyReport.non_private()
        privacy.selection = LAST_ITERATE
        # participation per round is public given q (the sampling is the mechanism's own coin flips);
        # the clipped fraction is a noise-free statistic of the members: the experimenter's, not released
        released_hist = {k: v for k, v in hist.items() if k not in ("clipped_fraction", "nonfinite_clients")}
        return Release({"model": model.cpu()}, {"model": spec}, privacy,
                       {"history": released_hist, "partition": c.partition,
                        "alpha": c.alpha if c.partition == "dirichlet" else None,
                        "simulation": {"clients": split, "clipped_fraction": hist["clipped_fraction"],
                                       "nonfinite_clients": hist["nonfinite_clients"],
                                       "note": "noise-free statistics of the members for the experimenter; "
                                               "not part of the released model"}})
