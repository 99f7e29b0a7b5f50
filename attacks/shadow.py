"""``shadow``: the shadow-model attack of Shokri et al. (S&P 2017), and the one-shadow ML-Leaks
variant of Salem et al. (NDSS 2019).

Shadow models: the first ``n_shadows`` releases of the cell's shared reference zoo
(``bench/lib/membership/references.py``), i.e. the target's defense/config/epsilon trained on random halves of
the candidate pool. For every shadow, its prediction vectors on the whole candidate pool,
labelled IN/OUT by that shadow's keep mask, are the attack model's training records. (The
attacker is assumed to know the candidate pool, the same threat model as LiRA and RMIA; the
attack model is a function of a prediction vector, not a per-example statistic.)

* ``variant: shokri``: one binary attack model **per class** (the example's true label) on the full
  softmax vector; defaults to 4 shadows.
* ``variant: ml-leaks``: Salem et al.'s adversary 1: **one** shadow and one class-agnostic attack
  model on the top-3 sorted probabilities.

Attack model: a small MLP (scikit-learn ``MLPClassifier``, 64 hidden units, as the papers use
neural attack models) or logistic regression; inputs standardised. Score = the attack model's
probability of IN on the target's prediction vector.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from bench.api import Attack, AttackResult, BenchError, register_attack
from bench.lib.membership.clients import CLIENT_VIEW_METRICS
from bench.lib.membership.references import (
    SUMMARY_METRICS,
    balanced_eval_sets,
    eval_split,
    fit_references,
    probs,
    summarize,
    view_logits,
)


@dataclass
class ShadowConfig:
    variant: Literal["shokri", "ml-leaks"] = "shokri"
    #: shadow models (None: 4 for shokri, 1 for ml-leaks)
    n_shadows: Optional[int] = None
    attack_model: Literal["mlp", "logreg"] = "mlp"
    #: attack-model inputs: softmax probabilities (the papers) or their logarithms
    features: Literal["probs", "logprobs"] = "probs"
    n_eval: int = 1000
    reference_seed: int = 0
    n_boot: int = 1000

    def validate(self):
        if self.n_shadows is not None and self.n_shadows < 1:
            raise BenchError("shadow: n_shadows must be >= 1")

    @property
    def shadows(self) -> int:
        return self.n_shadows if self.n_shadows is not None else (4 if self.variant == "shokri" else 1)


def _features(p: np.ndarray, variant: str, kind: str) -> np.ndarray:
    f = np.sort(p, axis=1)[:, ::-1][:, :3] if variant == "ml-leaks" else p
    return np.log(np.clip(f, 1e-30, 1.0)) if kind == "logprobs" else f


def _model(kind: str, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        clf = LogisticRegression(max_iter=1000)
    else:
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)
    return make_pipeline(StandardScaler(), clf)


def _fit_predict(x_train, y_train, x_test, kind, seed) -> np.ndarray:
    if len(np.unique(y_train)) < 2:
        return np.full(len(x_test), float(y_train.mean()) if len(y_train) else 0.5)
    m = _model(kind, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the small attack MLP
        m.fit(x_train, y_train)
    return m.predict_proba(x_test)[:, 1]


@register_attack("shadow")
class Shadow(Attack):
    """Shadow-model attack (Shokri et al. 2017; one-shadow ML-Leaks variant, Salem et al. 2019)."""

    Config = ShadowConfig
    kind = "membership"
    metrics = (*SUMMARY_METRICS, *CLIENT_VIEW_METRICS)
    summary = ()
    paper = ("Shokri, Stronati, Song, Shmatikov: Membership Inference Attacks Against Machine Learning Models, "
             "S&P 2017; Salem et al.: ML-Leaks, NDSS 2019")

    def run(self, ctx, release) -> AttackResult:
        c = self.config
        t0 = time.time()
        refs = fit_references(ctx, c.shadows, c.reference_seed)
        pool = ctx.task.candidate_pool()
        xs, ys, cls = [], [], []
        for j, r in enumerate(refs.releases):
            xs.append(_features(probs(view_logits(r.model, pool, ctx.device)[:, 0]), c.variant, c.features))
            ys.append(refs.keep[j].astype(int))
            cls.append(pool.y.numpy())
        x_train, y_train, c_train = np.concatenate(xs), np.concatenate(ys), np.concatenate(cls)

        members, nonmembers = balanced_eval_sets(ctx.task, c.n_eval, ctx.seed)
        ev, labels = eval_split(members, nonmembers)
        x_test = _features(probs(view_logits(release.model, ev, ctx.device)[:, 0]), c.variant, c.features)
        y_test = ev.y.numpy()
        scores = np.zeros(len(ev))
        if c.variant == "shokri":
            for k in np.unique(y_test):
                tr, te = c_train == k, y_test == k
                scores[te] = _fit_predict(x_train[tr], y_train[tr], x_test[te], c.attack_model, ctx.seed)
        else:
            scores = _fit_predict(x_train, y_train, x_test, c.attack_model, ctx.seed)
        info = {"variant": c.variant, "attack_model": c.attack_model, "features": c.features,
                "training_records": int(len(y_train))}
        return summarize(ctx, release, scores, labels, n_boot=c.n_boot, evaluated=ev, refs=refs, started=t0,
                         extra_arrays={"eval_rows": ev.index.astype(np.int64)}, info=info)
