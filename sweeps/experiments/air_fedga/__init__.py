"""Air-FedGA vs Air-FedAvg, FedAsync, digital FedAvg and random grouping on one simulator.

Every method is :class:`jaxfl.algorithms.grouped_async.GroupedAsync` with its own groups, uplink
and mixing (the table in that module). A run's rows are the global model's test
accuracy at ``log_points`` equally spaced simulated times, then its summary at the
last of them: time to ``target_accuracy`` (absent if never reached), the mean AirComp
MSE (and, for Air-FedGA, the MSE every power policy would have had on the same
channels), staleness, the number of global updates and the mixing constant used.

Mixing constants: each asynchronous method runs every ``beta0_grid`` value on the
tuning seeds (``seed + 1000 + i``, never reported) and keeps the one with the smallest
median time to target (ties: the larger final accuracy), so no method is tuned on the
seeds its claims use.
"""

from sweeps.experiments.air_fedga.report import report, report_sweep
from sweeps.experiments.air_fedga.run import METHODS, compute_times, families, prepare, validate

__all__ = ["METHODS", "compute_times", "families", "prepare", "report", "report_sweep",
           "validate"]
