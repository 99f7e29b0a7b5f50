"""The teacher and the seeded models of the data-free distillation defenses: :func:`get_teacher`
(the cached non-private ``none`` release of the same task and seed), :func:`resolve_teacher`
(that, or the client ensemble of FedDPSD in the query unit) and :func:`seeded_init` (a module
built under a fixed torch seed)."""

from __future__ import annotations

from torch import nn

from bench.lib.seeding import seeded_init  # noqa: F401 - re-exported for the distillation defenses


def get_teacher(ctx, teacher_config: dict) -> nn.Module:
    """The cached non-private ``none`` release of the same task and seed (the shared teacher)."""
    rel = ctx.fit_defense("none", dict(teacher_config or {}))
    teacher = rel.model.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def client_settings(teacher_clients: dict, name: str):
    """``teacher_clients`` as :class:`bench.lib.federated.OneShotClients` (unknown keys and bad
    values are one-line errors naming the defense)."""
    from bench.core.errors import BenchError
    from bench.lib.federated import OneShotClients

    fields = OneShotClients.__dataclass_fields__
    unknown = sorted(set(teacher_clients) - set(fields))
    if unknown:
        raise BenchError(f"{name}: unknown teacher_clients key {unknown[0]!r}; valid keys: {', '.join(fields)}")
    cfg = OneShotClients(**teacher_clients)
    cfg.validate(f"{name} teacher_clients")
    return cfg


def resolve_teacher(ctx, c, name: str) -> tuple[nn.Module, str, dict]:
    """The single teacher of a transcription config ``c`` (a ``TranscriptionConfig``), its
    description and what the release may say about it.

    Without ``c.teacher_clients``: the shared ``none`` teacher (:func:`get_teacher`). With it:
    FedDPSD in the query unit, the mean logits of one-shot client models
    (:func:`bench.lib.federated.one_shot_clients`, the clients of ``dense`` on the same task and
    seed) queried as one teacher. Either way one teacher answers each query, so the mechanism,
    its unit and its accounting are the single-teacher ones."""
    if not c.teacher_clients:
        desc = "none" + (f" {c.teacher}" if c.teacher else " (NoneConfig defaults)")
        return get_teacher(ctx, c.teacher), desc, {}
    from bench.lib.federated import LogitEnsemble, one_shot_clients
    from bench.lib.models import build_model, spec_for

    cfg = client_settings(c.teacher_clients, name)
    spec = spec_for(ctx.task, cfg.arch)
    models, _, split = one_shot_clients(ctx, cfg, lambda: build_model(spec))
    teacher = LogitEnsemble(models).to(ctx.device).eval()
    part = cfg.partition + (f" alpha {cfg.alpha:g}" if cfg.partition == "dirichlet" else "")
    return teacher, f"client ensemble ({cfg.clients} clients, {part})", {
        "clients": cfg.clients, "partition": cfg.partition, "alpha": cfg.alpha if cfg.partition == "dirichlet" else None,
        "arch": cfg.arch, "local_epochs": cfg.local_epochs, "split_fingerprint": split["fingerprint"],
        # the split's public recipe: lets every membership attack add its per-client view
        "client_split": {"spec": split["spec"], "fingerprint": split["fingerprint"]}}
