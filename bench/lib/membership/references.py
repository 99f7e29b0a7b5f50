"""Reference (shadow) models shared by the membership attacks, and the signals they query.

One zoo per cell: reference ``i`` is a release of the **target's own defense, config and
epsilon** (``ctx.defense``, ``ctx.defense_config``, ``ctx.epsilon``), fitted through
``ctx.fit_many`` (cached, parallel with ``--jobs``) on a random half of the task's candidate
pool (members + non-member pool). Masks come in complementary pairs: references ``2j`` and
``2j + 1`` train on the two halves of one random permutation, so with an even number of
references every candidate is IN for exactly half of them (the balanced keep masks of the LiRA
code) and the zoo is *prefix-stable*: the first k references do not depend on how many are
asked for. LiRA with 8, RMIA with 2 and the shadow attack with 4 references therefore ask for the
same first releases, i.e. the same cache entries (same defense, config, epsilon, member rows,
tag and seed), and only the first attack of a cell trains them.

Reference ``i`` trains with seed ``ref_seed(ctx.seed, reference_seed, i)`` (never the target's
seed) and tag ``mia-ref:<reference_seed>:<i>``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.api import Release
from bench.lib.tasks import Split
from bench.lib.train import predict_logits, true_class_log_odds


def ref_seed(cell_seed: int, reference_seed: int, i: int) -> int:
    h = hashlib.sha256(f"mia-ref|{cell_seed}|{reference_seed}|{i}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def reference_masks(pool_size: int, n_refs: int, reference_seed: int = 0, cell_seed: int = 0) -> np.ndarray:
    """(n_refs, pool_size) boolean keep masks in complementary pairs (prefix-stable)."""
    if n_refs < 0:
        raise ValueError("n_refs must be >= 0")
    masks = np.zeros((n_refs, pool_size), dtype=bool)
    half = pool_size // 2
    for i in range(n_refs):
        j = i // 2
        rng = np.random.default_rng([int(reference_seed), int(cell_seed), j, 0x5EED])
        perm = rng.permutation(pool_size)
        sel = perm[:half] if i % 2 == 0 else perm[half:]
        masks[i, sel] = True
    return masks


@dataclass
class ReferenceSet:
    """The zoo: pool rows, keep masks (references x pool) and the fitted releases."""

    pool_rows: np.ndarray
    keep: np.ndarray
    releases: list[Release]
    seeds: list[int]
    tags: list[str]
    fit_seconds: float = 0.0
    wall_seconds: float = 0.0
    _pos: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.releases)

    def positions(self, rows) -> np.ndarray:
        if not self._pos:
            self._pos.update({int(r): i for i, r in enumerate(self.pool_rows)})
        try:
            return np.array([self._pos[int(r)] for r in np.asarray(rows)], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"row {e} is not in the candidate pool") from None

    def keep_for(self, rows) -> np.ndarray:
        """(n_refs, len(rows)) keep bits of dataset ``rows`` (which must be pool rows)."""
        return self.keep[:, self.positions(rows)]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ref_keep": self.keep.astype(np.uint8), "ref_pool_rows": self.pool_rows.astype(np.int64),
                "ref_seeds": np.asarray(self.seeds, dtype=np.int64)}

    def metrics(self) -> dict[str, float]:
        return {"n_references": float(len(self)), "reference_fit_seconds": float(self.fit_seconds)}


def reference_requests(ctx, n_refs: int, reference_seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    pool = ctx.task.candidate_pool()
    keep = reference_masks(len(pool), n_refs, reference_seed, ctx.seed)
    reqs = []
    for i in range(n_refs):
        reqs.append({"defense": ctx.defense, "config": ctx.defense_config,
                     "member_rows": pool.index[keep[i]].tolist(), "tag": f"mia-ref:{reference_seed}:{i}",
                     "seed": ref_seed(ctx.seed, reference_seed, i)})
    return pool.index.copy(), keep, reqs


def fit_references(ctx, n_refs: int, reference_seed: int = 0) -> ReferenceSet:
    """Fit (or load) the first ``n_refs`` references of the cell's zoo."""
    if not getattr(ctx, "defense", ""):
        raise ValueError("the context names no target defense: reference models need ctx.defense")
    rows, keep, reqs = reference_requests(ctx, n_refs, reference_seed)
    t0 = time.time()
    rels = ctx.fit_many(reqs) if reqs else []
    wall = time.time() - t0
    fit = float(sum(float(r.info.get("fit_seconds", 0.0)) for r in rels))
    return ReferenceSet(rows, keep, rels, [r["seed"] for r in reqs], [r["tag"] for r in reqs], fit, wall)


# --------------------------------------------------------------------------------------------
# queries
# --------------------------------------------------------------------------------------------

def shift_views(x: torch.Tensor, max_shift: int = 1, manhattan: bool = True) -> list[torch.Tensor]:
    """The image and its translations by (dx, dy), zero-filled: |dx| + |dy| = 1..max_shift when
    ``manhattan`` (4 d images at distance d, Choquette-Choo et al.'s translation set), else the
    4 one-pixel shifts only."""
    views = [x]
    h, w = x.shape[-2:]
    for d in range(1, max_shift + 1):
        offs = [(dx, dy) for dx in range(-d, d + 1) for dy in range(-d, d + 1) if abs(dx) + abs(dy) == d]
        if not manhattan:
            offs = [o for o in offs if 0 in o]
        for dx, dy in offs:
            v = torch.zeros_like(x)
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            v[..., yd, xd] = x[..., ys, xs]
            views.append(v)
    return views


def rotate_views(x: torch.Tensor, degrees: float) -> list[torch.Tensor]:
    """Rotations by -degrees and +degrees (bilinear, zero fill)."""
    out = []
    for deg in (-degrees, degrees):
        t = torch.tensor(np.deg2rad(deg), dtype=torch.float32)
        c, s = torch.cos(t), torch.sin(t)
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return out


def query_views(x: torch.Tensor, augment: str) -> list[torch.Tensor]:
    """The query set of an attack: ``none`` (the image), ``shift`` (the image and its 4
    one-pixel translations; MNIST digits are not mirror-symmetric, so no flips)."""
    if augment == "none":
        return [x]
    if augment == "shift":
        return shift_views(x, 1)
    raise ValueError(f"unknown augment {augment!r}")


def view_logits(model, split: Split, device, augment: str = "none") -> torch.Tensor:
    """(n, views, classes) logits of ``model`` on the query views of ``split``."""
    return torch.stack([predict_logits(model, v, device) for v in query_views(split.x, augment)], dim=1)


def logit_scaled_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """LiRA's phi = log p_y - log(1 - p_y) = z_y - logsumexp_{j != y} z_j, in float64
    (:func:`bench.lib.train.true_class_log_odds`)."""
    return true_class_log_odds(logits, y)


def true_class_prob(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Softmax probability of the true label, in float64 (RMIA's Pr(x | theta))."""
    z = logits.double()
    yy = y.view(-1, *([1] * (z.dim() - 2)), 1).expand(*z.shape[:-1], 1)
    return torch.gather(torch.softmax(z, -1), -1, yy).squeeze(-1).numpy()


def probs(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), -1).numpy()


def eval_split(members: Split, nonmembers: Split) -> tuple[Split, np.ndarray]:
    """Members then non-members as one split, and labels (1 = member)."""
    sp = Split(torch.cat([members.x, nonmembers.x]), torch.cat([members.y, nonmembers.y]),
               np.concatenate([members.index, nonmembers.index]))
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))]).astype(np.int8)
    return sp, labels


def population_split(task, n: int, seed: int, holdout: int = 0) -> tuple[Split, Split]:
    """Population samples z and a disjoint hold-out, both from the official test split (never
    trained on by the target or any reference, never used to select anything). If the test split
    is too small for ``n + holdout``, the two get proportional shares of it."""
    rng = np.random.default_rng([int(seed), 0xF00D])
    total = len(task.test)
    perm = rng.permutation(total)
    want = int(n) + int(holdout)
    if want > total:
        n = max(1, int(round(total * n / want)))
        holdout = total - n
    z = task.test.subset(np.sort(perm[:n]))
    h = task.test.subset(np.sort(perm[n:n + holdout]))
    return z, h


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------

def audit_delta(ctx, release) -> float:
    """The delta an audit tests: the release's own for DP targets, else the suite's."""
    d = release.privacy.delta
    return float(d) if d and d > 0 else float(ctx.delta)


#: the metrics :func:`summarize` reports for every membership-style attack (point estimates, the
#: epsilon lower bounds, bootstrap intervals, sizes, reference cost and time); attacks declare
#: ``metrics = (*SUMMARY_METRICS, <their own>)``
SUMMARY_METRICS = ("auc", "tpr_at_0.1%fpr", "tpr_at_1%fpr", "balanced_acc", "advantage",
               "eps_lb", "eps_lb_max_certifiable", "eps_lb_one_run", "eps_lb_one_run_max_certifiable",
               "auc_ci_lo", "auc_ci_hi", "tpr_at_0.1%fpr_ci_lo", "tpr_at_0.1%fpr_ci_hi", "tpr_at_1%fpr_ci_lo",
               "tpr_at_1%fpr_ci_hi", "balanced_acc_ci_lo", "balanced_acc_ci_hi", "advantage_ci_lo",
               "advantage_ci_hi", "n_members", "n_nonmembers", "n_references", "reference_fit_seconds",
               "attack_seconds")


def summarize(ctx, release, scores: np.ndarray, labels: np.ndarray, *, n_boot: int, refs: ReferenceSet | None,
              started: float, extra_metrics: dict | None = None, extra_arrays: dict | None = None,
              info: dict | None = None, evaluated: Split | None = None):
    """Metrics (point estimates, bootstrap CIs, eps lower bounds, cost) and arrays of one attack.

    ``evaluated`` (the evaluated split in score order, with its dataset rows) turns on the
    per-client view (``bench.lib.membership.clients``) when the release records a client
    partition: ``client_auc_max`` / ``client_auc_min`` / ``client_auc_max_p`` / ``clients_scored``
    / ``client_members_min`` metrics, ``client_auc`` / ``client_members`` arrays, and
    ``info["client_view"]``."""
    from bench.core.api import AttackResult
    from bench.lib.membership.stats import membership_summary

    scores = np.asarray(scores, dtype=np.float64)
    metrics = membership_summary(scores, labels, delta=audit_delta(ctx, release), n_boot=n_boot, seed=ctx.seed)
    if refs is not None:
        metrics.update(refs.metrics())
    else:
        metrics.update({"n_references": 0.0, "reference_fit_seconds": 0.0})
    metrics.update(extra_metrics or {})
    metrics["attack_seconds"] = float(time.time() - started)
    arrays = {"scores": scores.astype(np.float64), "labels": labels.astype(np.int8)}
    if refs is not None:
        arrays.update(refs.arrays())
    arrays.update(extra_arrays or {})
    info = dict(info or {})
    if evaluated is not None:
        from bench.lib.membership.clients import client_view

        view = client_view(ctx.task, getattr(release, "info", {}) or {}, evaluated, scores, labels, seed=ctx.seed)
        if view is not None:
            view_metrics, view_arrays, view_info = view
            metrics.update(view_metrics)
            arrays.update(view_arrays)
            info["client_view"] = view_info
    if refs is not None:
        info.setdefault("references", {"n": len(refs), "tags": refs.tags, "defense": ctx.defense,
                                       "epsilon": None if np.isinf(ctx.epsilon) else ctx.epsilon,
                                       "fit_wall_seconds": refs.wall_seconds})
    return AttackResult(metrics, arrays, info)


def balanced_eval_sets(task, n_eval: int, seed: int):
    rng = np.random.default_rng(seed)
    n = min(n_eval, len(task.members), len(task.nonmembers))
    mi = np.sort(rng.choice(len(task.members), n, replace=False))
    ni = np.sort(rng.choice(len(task.nonmembers), n, replace=False))
    return task.members.subset(mi), task.nonmembers.subset(ni)
