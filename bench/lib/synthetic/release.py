"""The common tail of every DP data generator's ``fit`` (``datalens``, ``dp-gan``, ``pate-gan``,
``g-pate``, ``gs-wgan``, ``fedavg-gan``): draw the synthetic set from the trained generator,
train the student on it (epoch selected on a synthetic holdout), and package generator and
student as one release.

Everything here is post-processing of the generator: the student and its selection read the
synthetic set only; the real validation split is recorded as a diagnostic curve and never used.
The defense builds its own :class:`~bench.api.PrivacyReport` (the mechanism is its own) and the
method-specific part of ``info``; this helper adds the student's history and selection and the
keys every generator release carries, so the reports read all of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from bench.api import PrivacyReport, Release
from bench.lib.models import spec_for
from bench.lib.synthetic.gan import generate
from bench.lib.synthetic.student import train_synthetic_student

#: the selection sentence of a generator's privacy report (the student is inside the epsilon)
STUDENT_SELECTION = ("student epoch chosen on held-out synthetic samples (post-processing of the DP generator: "
                     "inside the epsilon)")
REAL_VAL_NOTE = "accuracy on task.val per student epoch: diagnostic, never used for selection"


def student_synthetic_seed(seed: int) -> int:
    """The seed of the released synthetic set of a cell (its student trains on it)."""
    return seed * 31 + 3


def generator_student(task, G, c, *, seed: int, device, progress: Callable = lambda it, **k: it,
                      curves: Optional[dict] = None):
    """``c.n_synthetic`` samples of ``G`` and the student trained on them (the config's
    ``student_*`` fields and ``synthetic_val_frac``); returns (student, its spec, history)."""
    synth = generate(G, c.n_synthetic, student_synthetic_seed(seed))
    return train_synthetic_student(
        task, synth, arch=c.student_arch, epochs=c.student_epochs, lr=c.student_lr,
        batch_size=c.student_batch_size, optimizer=c.student_optimizer, val_frac=c.synthetic_val_frac,
        seed=seed, device=device, progress=progress, curves=curves)


def generator_release(ctx, G, c, privacy: PrivacyReport, *, generator_history: Any, info: Optional[dict] = None,
                      gspec: Optional[dict] = None, real_val_note: str = REAL_VAL_NOTE) -> Release:
    """The release of a trained conditional generator ``G`` (architecture ``datalens-generator``,
    its sizes ``gspec`` or the config's ``z_dim``/``gf_dim``/``gfc_dim``) and of the student on its
    samples, with ``privacy`` and ``info`` (method-specific keys) from the defense."""
    task = ctx.task
    # ---- the student sees synthetic data only; the real validation curve is a diagnostic ----
    student, sspec, hist = generator_student(task, G, c, seed=ctx.seed, device=ctx.device, progress=ctx.progress,
                                             curves={"real_val": task.val})
    sizes = gspec if gspec is not None else {"z_dim": c.z_dim, "gf_dim": c.gf_dim, "gfc_dim": c.gfc_dim}
    gen_spec = spec_for(task, {"name": "datalens-generator", **sizes})
    full = {"history": {"student": hist, "generator": generator_history}, "selected_by": "synthetic_val_acc",
            "selected_epoch": hist["selected_epoch"], "n_synthetic": c.n_synthetic, **(info or {}),
            "real_val_curve_note": real_val_note}
    return Release({"model": student.cpu().eval(), "generator": G.cpu().eval()},
                   {"model": sspec, "generator": gen_spec}, privacy, full)
