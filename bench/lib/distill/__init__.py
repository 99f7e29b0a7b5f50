"""Shared pieces of the data-free DP distillation defenses (``dpsd``, ``dpdfd``): one
implementation of every building block, used by both (``from bench.lib import distill as D``).

* :mod:`.nets`: the registered architectures ``dafl-generator`` and ``student-cnn``;
* :mod:`.losses`: the DAFL generator losses and the per-sample DKD / KL distillation losses;
* :mod:`.annotators`: the private annotation mechanisms (:class:`GaussianAnnotator`,
  :class:`RRAnnotator`);
* :mod:`.noise`: sensitivity, the ``query`` unit, the noise plan, the ledger and the report
  figures of the Gaussian mechanism (epsilons from :mod:`bench.lib.accounting`);
* :mod:`.canaries`: own-unit audit canaries;
* :mod:`.loop`: :func:`transcribe`, the alternating generator / teacher / student loop;
* :mod:`.teacher`: the shared non-private teacher and seeded model construction;
* :mod:`.ensemble`: N teachers on disjoint shards or clients, their aggregated mechanisms and
  accounting (privacy unit ``example`` or ``client``);
* :mod:`.config`: :class:`TranscriptionConfig`, the base of both defenses' configs.

The only place a teacher output is used is the ``annotate`` call of :func:`transcribe`: the
teacher's logits go into the mechanism and are dropped; nothing else of the teacher reaches the
student or the generator (``tests/test_dpsd.py`` checks this by swapping teachers).
"""

# the library accountants the defenses and their tests read through this namespace
from bench.lib.accounting import (
    PLD_MAX_POINTS,
    calibrate_gaussian,
    gaussian_epsilon,
    pld_points,
    pure_dp_composition_epsilon,
)
from bench.lib.distill.annotators import (
    GaussianAnnotator,
    RRAnnotator,
    normalize_rows,
    rr_with_prior,
    topk_mask,
)
from bench.lib.distill.canaries import CANARY_KEYS, QueryCanaries, canary_info, make_canaries
from bench.lib.distill.config import TranscriptionConfig
from bench.lib.distill.ensemble import (
    ENSEMBLE_UNITS,
    EnsembleGaussianAnnotator,
    EnsembleLedger,
    EnsembleTeacher,
    EnsembleVoteAnnotator,
    ensemble_privacy_extra,
    fit_teacher_ensemble,
    plan_ensemble,
    query_iterations,
    setup_ensemble,
    transcribe_ensemble,
    vote_histogram,
)
from bench.lib.distill.loop import LoopConfig, adversarial_loss_fn, student_loss_fn, transcribe
from bench.lib.distill.losses import dafl_losses, dkd_per_sample, kl_per_sample, per_sample_logit_grad
from bench.lib.distill.nets import (
    DAFLGenerator,
    StudentCNN,
    generator_spec_args,
    input_stats,
    logits_and_features,
)
from bench.lib.distill.noise import (
    NOISE_SCALES,
    QUERY_UNITS,
    GaussianLedger,
    GaussianPlan,
    gaussian_privacy_extra,
    own_unit_compositions,
    plan_gaussian,
    sensitivity_factor,
)
from bench.lib.distill.teacher import get_teacher, resolve_teacher, seeded_init

__all__ = [
    "CANARY_KEYS", "ENSEMBLE_UNITS", "EnsembleGaussianAnnotator", "EnsembleLedger", "EnsembleTeacher",
    "EnsembleVoteAnnotator", "ensemble_privacy_extra", "fit_teacher_ensemble", "plan_ensemble", "query_iterations",
    "setup_ensemble", "transcribe_ensemble", "vote_histogram", "NOISE_SCALES", "PLD_MAX_POINTS", "QUERY_UNITS", "DAFLGenerator", "GaussianAnnotator",
    "GaussianLedger", "GaussianPlan", "LoopConfig", "QueryCanaries", "RRAnnotator", "StudentCNN",
    "TranscriptionConfig", "adversarial_loss_fn", "calibrate_gaussian", "canary_info", "dafl_losses",
    "dkd_per_sample", "gaussian_epsilon", "gaussian_privacy_extra", "generator_spec_args", "get_teacher", "resolve_teacher",
    "input_stats", "kl_per_sample", "logits_and_features", "make_canaries", "normalize_rows",
    "own_unit_compositions", "per_sample_logit_grad", "plan_gaussian", "pld_points", "pure_dp_composition_epsilon",
    "rr_with_prior", "seeded_init", "sensitivity_factor", "student_loss_fn", "topk_mask", "transcribe",
]
