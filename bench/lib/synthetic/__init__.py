"""Shared machinery of the defenses that train a student on data they did not read directly
(``datalens``, ``dp-gan``, ``pate-gan``, ``g-pate``, ``gs-wgan``,
``fedavg-gan``, ``pate``, ``vae-metric``; ``tldmi`` uses :func:`holdout` only).

* :mod:`.student`: :func:`train_student` (epoch-selected student training with diagnostic
  curves), :func:`holdout` (a seeded train / selection split) and :func:`train_synthetic_student`
  (a DP generator's student, selected on a synthetic holdout);
* :mod:`.partition`: disjoint teacher shards (:func:`partition`, :func:`shard_capacity`,
  :func:`padded_shards`, :func:`row_universe`);
* :mod:`.teachers`: stacked teacher discriminators (:class:`~.teachers.TeacherEnsemble`,
  :class:`~.teachers.LinearTeacherEnsemble`) and their optimizer :func:`adam`;
* :mod:`.gan`: the conditional DCGAN generator (architecture ``datalens-generator``);
* :mod:`.aggregation`: TopAgg (top-k stochastic-sign votes, noisy sum, threshold);
* :mod:`.release`: the common tail of every DP generator's ``fit`` (synthetic set, its student,
  the release of both: :func:`~.release.generator_release`).

Privacy accounting is in :mod:`bench.lib.accounting`. The GAN, aggregation and release modules
are imported on demand (``from bench.lib.synthetic.gan import ...``), so a defense that only trains a
student does not load them.
"""

from bench.lib.synthetic.partition import padded_shards, partition, row_universe, shard_capacity
from bench.lib.synthetic.student import holdout, train_student, train_synthetic_student
from bench.lib.synthetic.teachers import adam

__all__ = ["adam", "holdout", "padded_shards", "partition", "row_universe", "shard_capacity", "train_student",
           "train_synthetic_student"]
