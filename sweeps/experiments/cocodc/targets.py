"""CoCoDC's targets and times to target: fixed by the tuning runs, read on common grids.

* :func:`target_loss`: a baseline's target, its median validation loss over the tuning
  seeds at one step (the runs of its chosen grid point); the reported runs never enter.
* :func:`common_time_grid` / :func:`on_grid`: one grid of simulated times for every
  method, each evaluation curve linearly interpolated onto it (DiLoCo is evaluated every
  ``H`` steps, after its blocking sync; the streaming methods every ``eval_every`` steps,
  with their own stalls), and no value past a run's end.
* :func:`held`: :func:`jaxfl.evaluation.time_to_held_target` on such a grid (or on the
  methods' common evaluation steps), ``None`` for never.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

from jaxfl.evaluation import time_to_held_target

# (steps, sim_times, values), as sweeps.results_queries series() returns them
Curve = tuple[Sequence[float], Sequence[float | None], Sequence[float | None]]


def target_loss(tuning_curves: Mapping[int, Curve], step: int) -> float | None:
  """The median over the tuning seeds of the loss logged at ``step`` (``None`` if a seed
  has no finite value there, or there are no seeds).

  >>> target_loss({1000: ([0, 8, 16], [0, 1, 2], [3.0, 2.5, 2.0]),
  ...              1001: ([0, 8, 16], [0, 1, 2], [3.0, 2.7, 2.1])}, 8)
  2.6
  """
  vals = []
  for steps, _, values in tuning_curves.values():
    steps = [int(s) for s in steps]
    v = values[steps.index(step)] if step in steps else None
    if v is None or not math.isfinite(v):
      return None
    vals.append(float(v))
  return statistics.median(vals) if vals else None


def common_time_grid(end: float, spacing: float) -> np.ndarray:
  """``0, spacing, 2 spacing, ...`` up to ``end`` (included when it falls on the grid).

  >>> common_time_grid(2.5, 0.8).tolist()
  [0.0, 0.8, 1.6, 2.4000000000000004]
  """
  if not spacing > 0:
    raise ValueError(f"spacing: expected a positive number, got {spacing}")
  return spacing * np.arange(math.floor(end / spacing + 1e-9) + 1)


def on_grid(grid, times, values, tol: float = 1e-3) -> np.ndarray:
  """The piecewise-linear curve ``(times, values)`` at the ``grid`` times; NaN before its
  first or after its last time (``tol`` seconds of float32 clock rounding aside) and next
  to a missing value.

  >>> on_grid(np.arange(6.0), [0.0, 4.0], [3.0, 1.0]).tolist()
  [3.0, 2.5, 2.0, 1.5, 1.0, nan]
  """
  grid = np.asarray(grid, float)
  t = np.asarray([np.nan if x is None else x for x in times], float)
  v = np.asarray([np.nan if x is None else x for x in values], float)
  if not t.size:
    return np.full(grid.shape, np.nan)
  out = np.interp(grid, t, v)
  out[(grid < t[0] - tol) | (grid > t[-1] + tol)] = np.nan
  return out


def held(xs, values, target: float | None, window: int) -> float | None:
  """The first ``x`` from which ``values`` stay at or below ``target`` for ``window``
  more points (:func:`jaxfl.evaluation.time_to_held_target`; ``window=0`` is the first
  passage); ``None`` if never, or without a target.

  >>> held([0, 8, 16, 24, 32, 40], [3.0, 2.0, 2.6, 2.1, 2.0, 1.9], 2.2, 2), \\
  ...   held([0, 8, 16, 24, 32, 40], [3.0, 2.0, 2.6, 2.1, 2.0, 1.9], 2.2, 0)
  (24.0, 8.0)
  """
  if target is None or not len(values):
    return None
  ys = np.asarray([np.nan if v is None else v for v in values], float)
  t = float(time_to_held_target(np.asarray(xs, float), ys, float(target), window=window,
                                higher=False))
  return t if math.isfinite(t) else None
