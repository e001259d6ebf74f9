"""Air-FedGA vs Air-FedAvg, FedAsync, digital FedAvg and random grouping on one simulator.

Every method is :class:`jaxfl.algorithms.grouped_async.GroupedAsync` with its own groups, uplink
and mixing (the table in that module). A run's rows are the global model's accuracy (on
the validation split for a tuning run, the test split for a reported one) at
``log_points`` equally spaced simulated times, the common evaluation grid, then its
summary at the last of them: time to ``target_accuracy`` held for ``target_window`` more
grid points (absent if never reached), the first passage on the grid and at any update,
the mean AirComp MSE (and, for Air-FedGA, the MSE every power policy would have had on the
same channels), staleness, the number of global updates and the hyperparameters used.

Tuning: every method runs the same grid, ``learning_rate_grid`` x ``beta0_grid`` (a
synchronous method's ``beta0`` is its server step size), on the tuning seeds
(``seed + 1000 + i``, never reported) and keeps the point with the smallest median held
time to target on the validation split (ties: the larger final accuracy), so no method
is tuned on the seeds or the images its claims use.
"""

from sweeps.experiments.air_fedga.report import report, report_sweep
from sweeps.experiments.air_fedga.run import METHODS, compute_times, families, prepare, validate

__all__ = ["METHODS", "compute_times", "families", "prepare", "report", "report_sweep",
           "validate"]
