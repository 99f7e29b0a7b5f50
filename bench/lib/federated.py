"""Federated learning machinery shared by the federated defenses (FedAvg, DP-FedAvg; later the
ensemble transcriptions): client partitions of the member set and the FedAvg round loop.

* :func:`client_partition` — N clients over the members, ``iid`` (a seeded shuffle cut into N
  near-equal parts) or ``dirichlet`` label skew (Hsu, Qi & Brown 2019, "Measuring the effects of
  non-identical data distribution for federated visual classification"; the split of NIID-Bench,
  Li et al. ICDE 2022): for every class, client shares p ~ Dirichlet(alpha 1_N), the class's
  examples cut by p; redrawn until every client holds at least ``min_size`` examples. Smaller
  alpha, stronger skew. Deterministic in (the members' dataset rows, their labels, the seed).
* :func:`split_members` — a task's members as client splits, with their summary;
  :func:`partition_spec` — the split's public recipe (what a release records so that the
  per-client membership view can recompute the split);
* :func:`partition_summary` — per-client sizes and class histograms, the split's fingerprint and
  its skew (mean total-variation distance of the clients' label distributions from the pooled one).
* :class:`OneShotClients`, :func:`one_shot_clients` — one-shot local training (DENSE, Zhang et al.
  NeurIPS 2022; the client teachers of FedDPSD in the query unit): every client trains a copy of a
  common initialization on its own data once; the models are a cached shared artifact keyed on the
  task's member split, the seed and the settings, so DENSE and FedDPSD on the same task and seed
  start from the very same client models. :class:`LogitEnsemble` (the mean of their logits) and
  :func:`average_state` (their one-shot size-weighted parameter average) come with them.
* :func:`run_fedavg` — FedAvg (McMahan, Moore, Ramage, Hampson & Agüera y Arcas, AISTATS 2017):
  each round a set of clients trains the global model locally (``local_epochs`` of minibatch SGD)
  and the server averages the returned models weighted by client size. With a :class:`ClientDP`
  it is DP-FedAvg (McMahan, Ramage, Talwar & Zhang, ICLR 2018, "Learning differentially private
  recurrent language models"): clients sampled independently with probability q, each client's
  model delta clipped to L2 norm S (a non-finite delta, from a local run that diverged, counts as
  zero), the clipped deltas summed with N(0, (z S)^2) noise per
  coordinate and divided by the fixed expected count q N (their "fixed-denominator" estimator,
  sensitivity S / (q N) for adding or removing one client), applied with a server learning rate.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError
from bench.lib.seeding import seeded_init
from bench.lib.tasks import Split
from bench.lib.train import accuracy, conv_layout, make_optimizer, memory_layout

PARTITIONS = ("iid", "dirichlet")


def client_partition(rows: np.ndarray, labels: np.ndarray, n_clients: int, scheme: str = "iid",
                     alpha: float = 0.5, seed: int = 0, min_size: int = 10, max_draws: int = 1000) -> list[np.ndarray]:
    """Positions (into ``rows``/``labels``) of each client's examples, each array sorted.

    ``rows`` are the members' dataset row indices: the split is computed in row order, so the same
    members give the same clients whatever order they come in. ``dirichlet`` redraws the class
    shares until every client has ``min_size`` examples (at most ``max_draws`` draws; a ValueError
    says when that fails, e.g. too many clients for the data)."""
    rows = np.asarray(rows)
    labels = np.asarray(labels)
    if len(rows) != len(labels):
        raise ValueError("rows and labels differ in length")
    if n_clients < 1 or n_clients > len(rows):
        raise ValueError(f"need 1 <= clients <= members ({len(rows)}), got {n_clients}")
    if scheme not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {scheme!r}")
    order = np.argsort(rows, kind="stable")  # row order: independent of how the members were listed
    rng = np.random.default_rng([int(seed), 0xFED])
    if scheme == "iid":
        perm = order[rng.permutation(len(order))]
        return [np.sort(p) for p in np.array_split(perm, n_clients)]
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    min_size = min(int(min_size), len(rows) // n_clients)
    y = labels[order]
    classes = np.unique(y)
    for _ in range(max_draws):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for k in classes:
            idx = order[y == k]
            idx = idx[rng.permutation(len(idx))]
            p = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].append(chunk)
        out = [np.sort(np.concatenate(ch)) for ch in parts]
        if min(len(o) for o in out) >= min_size:
            return out
    raise ValueError(f"dirichlet(alpha={alpha}) gave a client with fewer than {min_size} examples in "
                     f"{max_draws} draws: use fewer clients or a larger alpha")


def partition_summary(parts: list[np.ndarray], rows: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Sizes, class histograms (clients x classes), the fingerprint of the row assignment and the
    label skew: the mean over clients of the total-variation distance between the client's label
    distribution and the pooled one (0 for identical distributions, up to 1)."""
    rows = np.asarray(rows)
    labels = np.asarray(labels)
    hist = np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
    pooled = hist.sum(0) / hist.sum()
    local = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    tv = 0.5 * np.abs(local - pooled).sum(1)
    h = hashlib.sha256()
    for i, p in enumerate(parts):
        h.update(f"{i}:".encode())
        h.update(np.sort(rows[p]).astype(np.int64).tobytes())
    return {"sizes": [int(len(p)) for p in parts], "class_histograms": hist.tolist(),
            "fingerprint": h.hexdigest()[:16], "label_skew_tv": float(tv.mean())}


def split_members(members: Split, num_classes: int, n_clients: int, scheme: str = "iid", alpha: float = 0.5,
                  seed: int = 0) -> tuple[list[Split], dict]:
    """The members cut into clients (:func:`client_partition` on their dataset rows and labels)
    and the split's :func:`partition_summary`. ValueError as :func:`client_partition`."""
    rows = members.index if members.index is not None else np.arange(len(members))
    labels = members.y.numpy()
    parts = client_partition(rows, labels, n_clients, scheme, alpha, seed)
    summary = partition_summary(parts, rows, labels, num_classes)
    summary["spec"] = partition_spec(n_clients, scheme, alpha, seed)
    return [members.subset(p) for p in parts], summary


def partition_spec(n_clients: int, scheme: str, alpha: float, seed: int) -> dict:
    """How to recompute a :func:`client_partition` from the task (its public recipe; checked
    against the split's fingerprint on use by :func:`client_of_members`)."""
    return {"clients": int(n_clients), "scheme": scheme,
            "alpha": float(alpha) if scheme == "dirichlet" else None, "seed": int(seed)}


def find_partition(info) -> Optional[dict]:
    """The first client-partition summary (from :func:`split_members`: has ``spec`` and
    ``fingerprint``) found anywhere in a release's info, depth first; None if there is none."""
    if isinstance(info, dict):
        if isinstance(info.get("spec"), dict) and "fingerprint" in info and "clients" in info["spec"]:
            return info
        for v in info.values():
            found = find_partition(v)
            if found is not None:
                return found
    elif isinstance(info, (list, tuple)):
        for v in info:
            found = find_partition(v)
            if found is not None:
                return found
    return None


def client_of_members(members: Split, summary: dict) -> Optional[np.ndarray]:
    """Each member's client (an int array aligned with ``members``), recomputed from the
    summary's ``spec`` on these members; None when the recomputed split's fingerprint is not the
    summary's (the release was cut from other members or by other code), so a view built on it
    can never silently use the wrong assignment."""
    spec = summary.get("spec") or {}
    rows = members.index if members.index is not None else np.arange(len(members))
    labels = members.y.numpy()
    try:
        parts = client_partition(rows, labels, spec["clients"], spec["scheme"],
                                 spec["alpha"] if spec.get("alpha") is not None else 0.5, spec["seed"])
    except (KeyError, TypeError, ValueError):
        return None
    if partition_summary(parts, rows, labels, 1 + int(labels.max()))["fingerprint"] != summary.get("fingerprint"):
        return None
    out = np.full(len(members), -1, dtype=np.int64)
    for i, p in enumerate(parts):
        out[p] = i
    return out


@dataclass
class ClientDP:
    """DP-FedAvg's mechanism: Poisson client sampling with ``sample_rate`` q, per-client clip
    ``clip`` S of the model delta, Gaussian noise multiplier ``noise_multiplier`` z (std z S on the
    sum of clipped deltas), the sum divided by ``expected_clients`` = q N."""

    sample_rate: float
    clip: float
    noise_multiplier: float
    expected_clients: float
    server_lr: float = 1.0


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters()]


def local_update(model: nn.Module, data: Split, *, epochs: int, batch_size: int, lr: float, momentum: float,
                 device, generator: torch.Generator, layout=torch.contiguous_format) -> None:
    """``epochs`` passes of minibatch SGD (cross-entropy) over one client's data, in place
    (batches in ``layout``, the model's memory format)."""
    opt = make_optimizer(model.parameters(), "sgd", lr, momentum=momentum)
    model.train()
    n = len(data)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            b = perm[i:i + batch_size]
            xb, yb = data.x[b].to(device).contiguous(memory_format=layout), data.y[b].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


def run_fedavg(model: nn.Module, clients: list[Split], *, rounds: int, local_epochs: int, batch_size: int, lr: float,
               momentum: float = 0.0, clients_per_round: Optional[int] = None, dp: Optional[ClientDP] = None,
               val: Optional[Split] = None, eval_every: int = 1, seed: int = 0, device="cpu",
               progress: Callable = lambda it, **k: it, local_fn: Optional[Callable] = None,
               after_round: Optional[Callable[[int], None]] = None) -> tuple[nn.Module, dict]:
    """The global model after ``rounds`` rounds (the last one: no selection) and its history
    (participants per round, validation accuracy every ``eval_every`` rounds as a diagnostic).

    Without ``dp``: ``clients_per_round`` clients (all when None) drawn uniformly without
    replacement each round, the new global model the size-weighted mean of their local models.
    With ``dp``: every client joins with probability q independently (a round may have none); the
    update is ``server_lr * (sum_i clip_S(delta_i) + N(0, (z S)^2 I)) / (q N)``.

    ``local_fn(model, data, generator, layout)`` replaces the clients' local training (default:
    :func:`local_update`'s cross-entropy SGD; FedAvg-GAN trains a discriminator); it must read
    nothing private but ``data``. ``after_round(r)`` runs on the server after round r's update
    (FedAvg-GAN's generator steps): whatever it computes is a function of the released updates."""
    if any(b.numel() and torch.is_floating_point(b) for b in model.buffers()):
        raise ValueError("federated averaging here covers parameters only: the model has float buffers")
    model.to(device)
    g = torch.Generator().manual_seed(int(seed) * 7_919 + 11)  # sampling and local shuffles
    noise_g = torch.Generator(device=device).manual_seed(int(seed) * 7_919 + 13)
    sizes = torch.tensor([len(c) for c in clients], dtype=torch.float64)
    hist = {"participants": [], "val_acc": [], "val_round": [], "clipped_fraction": [], "nonfinite_clients": []}
    local = _clone(model)
    # conv nets train channels_last (as fit_classifier): the same values up to float rounding
    layout = conv_layout(model, clients[0].x) if clients else torch.contiguous_format
    with memory_layout(layout, model, local):
        _rounds(model, local, clients, rounds, local_epochs, batch_size, lr, momentum, clients_per_round, dp, val,
                eval_every, device, progress, g, noise_g, sizes, hist, layout, local_fn, after_round)
    model.eval()
    return model, hist


def _rounds(model, local, clients, rounds, local_epochs, batch_size, lr, momentum, clients_per_round, dp, val,
            eval_every, device, progress, g, noise_g, sizes, hist, layout, local_fn=None, after_round=None) -> None:
    N = len(clients)
    for r in progress(range(rounds), desc="fedavg rounds"):
        if dp is None:
            m = N if clients_per_round is None else min(N, int(clients_per_round))
            chosen = torch.randperm(N, generator=g)[:m].tolist()
        else:
            chosen = torch.nonzero(torch.rand(N, generator=g) < dp.sample_rate).flatten().tolist()
        hist["participants"].append(len(chosen))
        start = [p.detach().clone() for p in _params(model)]
        acc = [torch.zeros_like(p) for p in start]
        clipped = nonfinite = 0
        for i in chosen:
            _load(local, start)
            if local_fn is None:
                local_update(local, clients[i], epochs=local_epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                             device=device, generator=g, layout=layout)
            else:
                local_fn(local, clients[i], g, layout)
            delta = [p.detach() - s for p, s in zip(_params(local), start)]
            if dp is None:
                w = float(sizes[i] / sizes[chosen].sum())
                for a, d in zip(acc, delta):
                    a.add_(d, alpha=w)
            else:
                norm = math.sqrt(sum(float(d.pow(2).sum()) for d in delta))
                # a diverged local run (inf/NaN delta) contributes nothing: 0 * inf would be NaN,
                # and a non-finite contribution would break the sensitivity bound S
                scale = min(1.0, dp.clip / max(norm, 1e-12)) if math.isfinite(norm) else 0.0
                clipped += scale < 1.0
                nonfinite += not math.isfinite(norm)
                if scale > 0:  # (alpha 0 would still propagate a NaN)
                    for a, d in zip(acc, delta):
                        a.add_(d, alpha=scale)
        if dp is not None:
            for a in acc:
                a.add_(torch.randn(a.shape, generator=noise_g, device=a.device), alpha=dp.noise_multiplier * dp.clip)
                a.mul_(dp.server_lr / dp.expected_clients)
            hist["clipped_fraction"].append(clipped / len(chosen) if chosen else 0.0)
            hist["nonfinite_clients"].append(nonfinite)
        with torch.no_grad():
            for p, s, a in zip(_params(model), start, acc):
                p.copy_(s + a)
        if after_round is not None:
            after_round(r)
        if val is not None and len(val) and ((r + 1) % eval_every == 0 or r == rounds - 1):
            hist["val_acc"].append(accuracy(model, val, device))
            hist["val_round"].append(r + 1)


def _clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _load(model: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(_params(model), values):
            p.copy_(v)


@dataclass
class OneShotClients:
    """The clients of one-shot federated learning: ``clients`` clients on the seeded ``partition``
    of the members (``alpha``: Dirichlet concentration), each training ``arch`` from one common
    initialization for ``local_epochs`` epochs of SGD (``local_lr``, ``local_momentum``, batch
    ``local_batch_size``). Defaults: DENSE's MNIST client (``cnn-bn`` is its ``CNNMnist``; SGD lr
    0.01, momentum 0.9, batch 128) with 10 local epochs (DENSE trains "until convergence")."""

    clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    arch: str = "cnn-bn"
    local_epochs: int = 10
    local_batch_size: int = 128
    local_lr: float = 0.01
    local_momentum: float = 0.9

    def validate(self, name: str) -> None:
        if self.clients < 2:
            raise BenchError(f"{name}: needs at least 2 clients (an ensemble)")
        if self.partition not in PARTITIONS:
            raise BenchError(f"{name}: client partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        if min(self.local_epochs, self.local_batch_size) < 1:
            raise BenchError(f"{name}: local_epochs and local_batch_size must be >= 1")
        if not (self.alpha > 0 and self.local_lr > 0 and 0 <= self.local_momentum < 1):
            raise BenchError(f"{name}: alpha and local_lr must be > 0, local_momentum in [0, 1)")


class LogitEnsemble(nn.Module):
    """The mean of the models' logits (DENSE's ``Ensemble_A``)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models]).mean(0)


def average_state(models: list[nn.Module], weights: list[float]) -> dict:
    """The size-weighted average of the models' parameters and float buffers (one-shot FedAvg,
    BatchNorm statistics included); integer buffers from the first model."""
    states = [m.state_dict() for m in models]
    total = float(sum(weights))
    out = {}
    for k, v in states[0].items():
        if torch.is_floating_point(v):
            out[k] = sum(s[k] * (w / total) for s, w in zip(states, weights))
        else:
            out[k] = v.clone()
    return out


#: bump when the client training below changes what it computes (part of the artifact key)
ONE_SHOT_VERSION = 1


def one_shot_clients(ctx, cfg: OneShotClients, build_model: Callable[[], nn.Module]
                     ) -> tuple[list[nn.Module], nn.Module, dict]:
    """The trained client models (eval mode, frozen, on ``ctx.device``), their common
    initialization and the split's summary (:func:`partition_summary`).

    ``build_model`` builds the architecture (called under the torch seed ``1000 seed + 31`` for
    the common initialization); the clients train one after the other with one shuffling
    generator seeded ``1000 seed + 37``. Cached as the shared artifact ``oneshot-clients`` keyed
    on the task's fingerprint (its member split), the split, the seed and ``cfg``: every defense
    that asks on the same task and seed (``dense``, FedDPSD's client teachers) gets the same
    models, trained once. ValueError from the partition becomes a one-line error."""
    init_seed, shuffle_seed = ctx.seed * 1000 + 31, ctx.seed * 1000 + 37
    task = ctx.task
    try:
        clients, split = split_members(task.members, task.num_classes, cfg.clients, cfg.partition, cfg.alpha,
                                       ctx.seed)
    except ValueError as e:
        raise BenchError(f"one-shot clients: {e}") from None
    init = seeded_init(init_seed, build_model)
    key = {"v": ONE_SHOT_VERSION, "task": task.info.get("fingerprint"), "split": split["fingerprint"],
           "cfg": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "init_seed": init_seed,
           "shuffle_seed": shuffle_seed, "arch": type(init).__name__}

    def build():
        rng = torch.Generator().manual_seed(shuffle_seed)
        out: dict = {}
        for i, data in enumerate(ctx.progress(clients, desc="one-shot local training")):
            m = _clone(init).to(ctx.device)
            local_update(m, data, epochs=cfg.local_epochs, batch_size=cfg.local_batch_size, lr=cfg.local_lr,
                         momentum=cfg.local_momentum, device=ctx.device, generator=rng)
            out.update({f"c{i}.{k}": v.detach().cpu() for k, v in m.state_dict().items()})
        out["__meta__"] = {"clients": cfg.clients}
        return out

    bundle = ctx.artifact("oneshot-clients", key, build)
    models = []
    for i in range(cfg.clients):
        m = _clone(init)
        m.load_state_dict({k[len(f"c{i}."):]: v for k, v in bundle.items() if k.startswith(f"c{i}.")})
        m.to(ctx.device).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        models.append(m)
    return models, init, split
