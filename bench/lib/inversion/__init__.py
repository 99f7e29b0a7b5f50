"""Shared parts of the model-inversion attacks (``gmi``, ``kedmi``, ``plgmi``, ``mi-face``).

* :mod:`~bench.lib.inversion.common`: hashes, state bundles, ``freeze``, batches, prediction,
  resizing, ``resolve`` (nested configs), PLG-MI's max-margin loss.
* :mod:`~bench.lib.inversion.judge`: **the judge**, an evaluation classifier ``eval-cnn`` trained
  by the harness on the *classification* protocol of the same dataset (all classes), resized to
  the inversion protocol's image size, and cached as an artifact. Attacks never see it: they
  produce their reconstructions first and hand them to :func:`evaluate_inversion`.
* :mod:`~bench.lib.inversion.nets`: the GAN networks and :class:`GANConfig`, the config fields
  every prior shares.
* **GAN priors** on the attacker's public split, built through ``ctx.artifact`` so that one prior
  serves every cell that asks for the same (dataset, public rows, image size, config, seed, code):
  :mod:`~bench.lib.inversion.prior_wgan` (the WGAN-GP of GMI, target-independent),
  :mod:`~bench.lib.inversion.prior_kedmi` (KEDMI's inversion-specific semi-supervised GAN) and
  :mod:`~bench.lib.inversion.prior_plgmi` (PLG-MI's pseudo-label conditional GAN), both keyed
  by a hash of the target's weights. Each artifact's ``build`` is defined in the module whose
  code determines it: the harness keys the artifact on that module's source and its imports.
* :mod:`~bench.lib.inversion.metrics`, pure functions: top-k attack accuracy, KNN distance, FID
  in evaluator features, LPIPS (``lpips`` package; NaN with a reason when the ImageNet backbone
  weights are missing).
* :mod:`~bench.lib.inversion.evaluate`: the evaluation every attack shares.

Images are float tensors in [0, 1] of shape (N, C, H, W), like the task splits. This module
re-exports the public names; patch a name in the module that holds it, not here.
"""

from bench.lib.inversion.common import (
    ARTIFACT_VERSION,
    batches,
    freeze,
    load_state,
    max_margin_loss,
    model_hash,
    predict,
    public_key,
    resize,
    resolve,
    state_bundle,
    tensor_hash,
)
from bench.lib.inversion.evaluate import common_eval_kwargs, evaluate_inversion
from bench.lib.inversion.judge import EvalCNN, EvaluatorConfig, get_evaluator
from bench.lib.inversion.metrics import (
    alexnet_weights_path,
    fid_from_features,
    knn_distance,
    load_alexnet_trunk,
    lpips_distance,
    lpips_model,
    topk_correct,
)
from bench.lib.inversion.nets import (
    CondBN,
    DCGenerator,
    GANConfig,
    KPlusOneDiscriminator,
    MinibatchDiscrimination,
    ProjectionDiscriminator,
    WGANCritic,
    kplus1_prior,
    log_sum_exp,
)
from bench.lib.inversion.prior_kedmi import KEDMIGANConfig, kedmi_gan, train_kedmi_gan
from bench.lib.inversion.prior_plgmi import PLGGANConfig, augment, plg_gan, top_n_selection, train_plg_gan
from bench.lib.inversion.prior_wgan import WGANConfig, train_wgan_gp, wgan_prior

__all__ = [
    "ARTIFACT_VERSION", "CondBN", "DCGenerator", "EvalCNN", "EvaluatorConfig", "GANConfig", "KEDMIGANConfig",
    "KPlusOneDiscriminator", "MinibatchDiscrimination", "PLGGANConfig", "ProjectionDiscriminator", "WGANConfig",
    "WGANCritic", "alexnet_weights_path", "augment", "batches", "common_eval_kwargs", "evaluate_inversion",
    "fid_from_features", "freeze", "get_evaluator", "kedmi_gan", "knn_distance", "kplus1_prior", "load_alexnet_trunk",
    "load_state", "log_sum_exp", "lpips_distance", "lpips_model", "max_margin_loss", "model_hash", "plg_gan",
    "predict", "public_key", "resize", "resolve", "state_bundle", "tensor_hash", "top_n_selection", "topk_correct",
    "train_kedmi_gan", "train_plg_gan", "train_wgan_gp", "wgan_prior",
]
