"""CoCoDC vs Streaming DiLoCo vs DiLoCo (see ``sweeps/configs/cocodc.py``).

Methods (:mod:`jaxfl.algorithms.diloco`, :mod:`jaxfl.algorithms.streaming_diloco`):
``diloco`` (blocking: every ``H`` steps all workers wait for the full model's all-reduce),
``streaming_tau<τ>`` (fragments on a fixed staggered schedule, received ``τ`` steps after
their send and merged with ``alpha``-mixing) and ``cocodc_tau<τ>`` (adaptive fragment
choice, delay-compensated merge), one pair per overlap ``τ`` in ``overlaps``.

The three families (``diloco``, ``streaming``, ``cocodc``) are :mod:`sweeps.families`
families: the outer learning rate and ``alpha``/``lam0`` are the tuning grid (traced),
``τ`` and the initial model are each run's inputs, and a family's runs are one ``vmap``
compiled once. Every grid point runs on the tuning seeds (``seed + 1000 + i``) as the run
``<method>[outer_lr=..,alpha=..]``; the reported run of a method uses the point with the
lowest mean final loss on *validation* windows over its tuning seeds, and its curves are
measured on *test* windows (every other validation window of the workers' domains: the
tuning loss never sees them). Both log ``eval_loss``, each on its own windows; the
database holds both, so the report rebuilds the tuning table.

The evaluated model is the mean of the workers' local parameters (after DiLoCo's outer
step all workers hold the global model, so DiLoCo is evaluated every ``H`` steps).
"""

from sweeps.experiments.cocodc.report import first_reach, report
from sweeps.experiments.cocodc.run import (
    families,
    fragment_comm_seconds,
    grid,
    info,
    method_name,
    prepare,
    validate,
)

__all__ = ["families", "first_reach", "fragment_comm_seconds", "grid", "info", "method_name",
           "prepare", "report", "validate"]
