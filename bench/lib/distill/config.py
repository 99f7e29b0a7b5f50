"""The configuration the data-free distillation defenses share: :class:`TranscriptionConfig`, the
base dataclass of ``DPSDConfig`` (``defenses/dpsd.py``) and ``DPDFDConfig``
(``defenses/dpdfd.py``): teacher, student and generator, the loop, the data-sensitive Gaussian
mechanism and its accounting, the DAFL generator losses, model selection and audit canaries.
Each defense adds its own fields (and may override a shared one's default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from bench.core.errors import BenchError


@dataclass
class TranscriptionConfig:
    #: overrides of ``none``'s config for the teacher; empty = NoneConfig defaults (shared teacher)
    teacher: dict = field(default_factory=dict)
    student_arch: str = "student-cnn"
    latent_dim: int = 100
    #: generator width (DAFL: 128; 32 keeps one MNIST cell within minutes on a CPU core)
    generator_width: int = 32
    #: generator output layer: ``dataset-stats`` = DAFL's BatchNorm output mapped through the
    #: dataset's standard input normalization constants; ``tanh`` = (tanh + 1) / 2
    generator_output: Literal["dataset-stats", "tanh"] = "tanh"
    iterations: int = 400
    batch_size: int = 256
    lr_student: float = 3e-3
    lr_generator: float = 1e-2
    # --- data-sensitive (Gaussian) mechanism
    #: softmax temperature of the distillation loss inside the mechanism (DPDFD's snippet uses raw
    #: logits: T = 1)
    temperature: float = 1.0
    #: normalization bound C and stability constant e (DPDFD's snippet: e = 0.001)
    norm_bound: float = 1.0
    stability: float = 1e-3
    #: eta: target = s - eta * (gbar + noise)
    target_step: float = 1.0
    #: neighbouring relation on one query's answer: replace (sensitivity 2C) or zero-out (C)
    neighbouring: Literal["replace", "zero-out"] = "replace"
    #: reading of the query unit: each answer noised once, parallel composition (default), or the
    #: conservative "one answer per iteration may differ", sequential composition over iterations
    query_composition: Literal["parallel", "per-iteration"] = "parallel"
    accountant: Literal["pld", "rdp"] = "pld"
    #: fixed noise multiplier (std / C); None = calibrate to epsilon over ``iterations``
    noise_multiplier: Optional[float] = None
    #: how the calibrated noise is applied to each per-sample gradient: ``per-sample`` (sound:
    #: std sigma C) or ``batch-mean`` (the DPDFD authors' snippet: std sigma C / B, the scale of a
    #: mechanism on the batch mean, while per-sample targets are released). The report carries the
    #: claimed, released and example-level epsilon (see docs/methods/dpsd.md)
    noise_scale: Literal["per-sample", "batch-mean"] = "per-sample"
    # --- generator losses (DAFL weights for MNIST)
    w_oh: float = 1.0
    w_ie: float = 5.0
    w_act: float = 0.1
    #: one generator step every ``generator_every`` iterations
    generator_every: int = 1
    #: decay of the exponential moving average of the student's weights (0 = off); the average is
    #: evaluated, selected and released (post-processing of the DP updates)
    ema: float = 0.0
    eval_every: int = 20
    select_on_val: bool = True
    #: FedDPSD in the query unit: a non-empty dict of :class:`bench.lib.federated.OneShotClients`
    #: fields (e.g. ``{clients: 10, partition: dirichlet, alpha: 0.5}``) replaces the shared
    #: ``none`` teacher by the mean logits of one-shot client models (``dense``'s clients: the same
    #: task and seed give the same models); one teacher still answers each query, so the unit and
    #: the accounting stay the single teacher's
    teacher_clients: dict = field(default_factory=dict)
    # --- ensemble transcription (bench.lib.distill.ensemble): teachers > 1 trains one MLP
    # classifier per disjoint part of the members instead of using the shared ``none`` teacher
    #: 1 = the single shared teacher (privacy unit query / label); N > 1 = ensemble
    teachers: int = 1
    #: ``record`` (shards, unit example) or ``iid`` / ``dirichlet`` (clients, unit client)
    teacher_partition: Literal["record", "iid", "dirichlet"] = "record"
    #: Dirichlet concentration of the label-skewed client split
    teacher_alpha: float = 0.5
    teacher_hidden: int = 64
    teacher_epochs: int = 60
    teacher_batch_size: int = 32
    teacher_lr: float = 1e-3
    #: query the teacher(s) on every k-th iteration only; the iterations between are replay steps
    #: of the student on released annotations (bench.lib.distill.loop.LoopConfig.query_every)
    query_every: int = 1
    #: replay steps also move the generator on the DAFL losses against the student (no privacy cost)
    generator_on_replay: bool = False
    #: audit refits only (``own-unit-audit`` sets it): ``{m, seed, iteration}`` canary queries whose
    #: answer is swapped for another class's with probability 1/2
    #: (:class:`bench.lib.distill.canaries.QueryCanaries`)
    own_unit_canaries: dict = field(default_factory=dict)

    def check_sizes(self, name: str) -> None:
        """The checks every transcription config starts its ``validate`` with (``name``: the
        defense, in the message)."""
        if self.iterations <= 0 or self.batch_size <= 0 or self.norm_bound <= 0 or self.eval_every <= 0:
            raise BenchError(f"{name}: iterations, batch_size, norm_bound and eval_every must be positive")
        if self.teachers < 1 or self.query_every < 1:
            raise BenchError(f"{name}: teachers and query_every must be >= 1")
        if self.teachers > 1 and min(self.teacher_hidden, self.teacher_epochs, self.teacher_batch_size) < 1:
            raise BenchError(f"{name}: teacher_hidden, teacher_epochs and teacher_batch_size must be >= 1")
        if self.teacher_partition == "dirichlet" and not self.teacher_alpha > 0:
            raise BenchError(f"{name}: teacher_alpha must be > 0")
        if self.teacher_clients:
            if self.teachers > 1 or self.teacher:
                raise BenchError(f"{name}: teacher_clients replaces the single teacher: it excludes teachers > 1 "
                                 "and teacher overrides")
            from bench.lib.distill.teacher import client_settings

            client_settings(self.teacher_clients, name)
