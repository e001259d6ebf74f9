"""CoCoDC vs Streaming DiLoCo vs DiLoCo (see ``sweeps/configs/cocodc.py``, whose docstring
states the evaluation protocol).

Methods (:mod:`jaxfl.algorithms.diloco`, :mod:`jaxfl.algorithms.streaming_diloco`):
``diloco`` (blocking: every ``H`` steps all workers wait for the full model's all-reduce),
``streaming_tau<τ>`` (fragments on a fixed staggered schedule, received ``τ`` steps after
their send and merged with ``alpha``-mixing) and ``cocodc_tau<τ>`` (adaptive fragment
choice, delay-compensated merge), one pair per overlap ``τ`` in ``overlaps``.

The three families (``diloco``, ``streaming``, ``cocodc``) are :mod:`sweeps.families`
families with one tuning grid for all, ``inner_lr x outer_lr`` (traced: the inner AdamW's
peak learning rate and the outer Nesterov's); Streaming DiLoCo's ``alpha`` and CoCoDC's
``lam0`` are fixed config values. ``τ`` and the initial model are each run's inputs, and a
family's runs are one ``vmap`` compiled once. Every grid point runs on the tuning seeds
(``seed + 1000 + i``) as the run ``<method>[inner_lr=..,outer_lr=..]``, evaluated on the
*validation* windows; the reported run of a method uses the point with the lowest mean
final validation loss over its tuning seeds, evaluated on the *test* windows (the odd
windows of each domain's held-out validation files; validation takes the even ones).
Both log ``eval_loss``, each on its own windows; the database holds both, so the report
rebuilds the choice, the targets and the tuning table from the tuning runs alone.

The evaluated model is the mean of the workers' local parameters (after DiLoCo's outer
step all workers hold the global model, so DiLoCo is evaluated every ``H`` steps).
"""

from sweeps.experiments.cocodc.report import chosen_points, report, targets
from sweeps.experiments.cocodc.run import (
    families,
    fragment_comm_seconds,
    grid,
    info,
    inner_optimizer,
    method_name,
    prepare,
    split_windows,
    validate,
)
from sweeps.experiments.cocodc.targets import common_time_grid, held, on_grid, target_loss

__all__ = ["chosen_points", "common_time_grid", "families", "fragment_comm_seconds", "grid",
           "held", "info", "inner_optimizer", "method_name", "on_grid", "prepare", "report",
           "split_windows", "target_loss", "targets", "validate"]
