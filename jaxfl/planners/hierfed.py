r"""HierFedLoRA's plan: near-IID groups, then each group's aggregation frequency and depth.

HierFedLoRA (Liu, Liao, Xu, Xu, arXiv 2503.21213) "partitions all devices into multiple
near-IID groups", "adjusts the intra-group aggregation frequency for each group" and
"assigns diverse and suitable fine-tuning depth (the number of continuous fine-tuning
layers from the output) for each group", choosing frequency and depth jointly. Its method
text is not public: **both algorithms here are reconstructions** (arXiv 2503.21213) of the
project's digest, with the structure its abstract names.

Grouping (:func:`near_iid_groups`). With device :math:`i`'s label (or domain) histogram
:math:`h_i` (counts), a group's mix is :math:`P_g = \sum_{i \in g} h_i / \sum_{i \in g}
|h_i|` and the population's :math:`P`; the objective is the mean divergence
:math:`\frac1G \sum_g \mathrm{KL}(P_g \,\|\, P)` (:func:`mix_divergence`). Devices are
placed largest first, each into the group (among those below the balanced size
:math:`\lceil N/G \rceil`) whose divergence after adding it is smallest, ties to the group
whose mean speed is closest; then pairwise swaps between groups are applied while one
lowers the objective (sizes stay balanced: a swap exchanges one device for one).

Frequency and depth (:func:`frequency_and_depth`). A group's iteration at depth
:math:`D` takes :math:`t_g(D) = \max_{i \in g} t_i(D)`; within the global round budget
:math:`T` it can run :math:`f` intra-group aggregations when :math:`f\,t_g(D) \le T`. Of
the feasible pairs the group takes the one maximising the surrogate utility

.. math::
  U_g(f, D) = \big(1 - e^{-D/\kappa}\big)\, \frac{f}{1 + \beta\, \delta_g (f - 1)},

(deeper adapters learn more, concave in :math:`D`; more intra-group rounds help, less so the
further the group's mix :math:`\delta_g = \mathrm{KL}(P_g\|P)` is from the population's,
since its model drifts between global syncs). The paper's utility is unknown; this one is
the digest's monotone surrogate, with :math:`\kappa` and :math:`\beta` given by the caller.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfl.errors import ConfigError, check_number
from jaxfl.planners.grouping import group_divergences, label_divergence

__all__ = ["GroupPlan", "frequency_and_depth", "group_divergences", "mix_divergence",
           "near_iid_groups"]


def _kl(p: np.ndarray, q: np.ndarray) -> float:
  nz = p > 0
  return float(np.sum(p[nz] * np.log(p[nz] / np.maximum(q[nz], 1e-12))))


def _mix(hist: np.ndarray) -> np.ndarray:
  total = hist.sum()
  return hist / total if total > 0 else np.full(hist.shape, 1.0 / hist.size)


def mix_divergence(groups: list[np.ndarray], hist: np.ndarray) -> float:
  r"""The grouping objective: the mean over groups of :math:`\delta_g = \mathrm{KL}(P_g \|
  P)` (:func:`jaxfl.planners.grouping.group_divergences`)."""
  return float(np.mean(group_divergences(groups, hist)))


def _check(hist, num_groups) -> np.ndarray:
  hist = np.asarray(hist, np.float64)
  if hist.ndim != 2 or hist.shape[0] < 1 or (hist < 0).any() or (hist.sum(1) <= 0).any():
    raise ConfigError("hist", "a [devices, classes] array of counts, every device holding "
                      "data", f"shape {hist.shape}")
  check_number(num_groups, "num_groups", low=1, integer=True)
  if num_groups > hist.shape[0]:
    raise ConfigError("num_groups", f"at most the number of devices ({hist.shape[0]})",
                      num_groups)
  return hist


def near_iid_groups(hist, num_groups: int, speed=None, *, max_passes: int = 20
                    ) -> list[np.ndarray]:
  """Devices split into ``num_groups`` balanced groups of near-population mixes.

  Args:
    hist: ``[N, C]`` counts per device and class (or domain).
    num_groups: ``G``, at most ``N``.
    speed: ``[N]`` device speeds for ties (default: all equal).
    max_passes: swap-refinement passes at most (each tries every pair of devices).

  Returns:
    ``G`` sorted int arrays of device indices; every device in exactly one; sizes differ
    by at most one.

  Raises:
    ConfigError: a bad ``hist``, ``num_groups`` below 1 or above ``N``, a ``speed`` not of
      shape ``[N]``.

  Examples:
    Four devices, two holding only class 0 and two only class 1: each group gets one of
    each, the population's mix.

    >>> near_iid_groups([[9, 0], [0, 8], [7, 0], [0, 6]], 2)
    [array([0, 1]), array([2, 3])]
  """
  hist = _check(hist, num_groups)
  n = hist.shape[0]
  speed = np.ones(n) if speed is None else np.asarray(speed, np.float64)
  if speed.shape != (n,):
    raise ConfigError("speed", f"an array of shape [{n}]", f"shape {speed.shape}")
  population = _mix(hist.sum(0))
  base, extra = divmod(n, num_groups)  # sizes: `extra` groups of base + 1, the rest base
  sums = np.zeros((num_groups, hist.shape[1]))
  members: list[list[int]] = [[] for _ in range(num_groups)]
  for i in sorted(range(n), key=lambda i: (-hist[i].sum(), i)):
    best = None
    big = sum(len(m) > base for m in members)
    for g in range(num_groups):
      if len(members[g]) > base or (len(members[g]) == base and big >= extra):
        continue
      div = _kl(_mix(sums[g] + hist[i]), population)
      tie = abs(np.mean(speed[members[g]]) - speed[i]) if members[g] else 0.0
      key = (round(div, 12), tie, g)
      if best is None or key < best[0]:
        best = (key, g)
    g = best[1]
    members[g].append(i)
    sums[g] += hist[i]
  groups = [np.array(m) for m in members]
  cost = lambda gs: label_divergence(gs, hist)
  current = cost(groups)
  for _ in range(max_passes):
    improved = False
    for a in range(num_groups):
      for b in range(a + 1, num_groups):
        for ia in range(len(groups[a])):
          for ib in range(len(groups[b])):
            trial = list(groups)
            ga, gb = groups[a].copy(), groups[b].copy()
            ga[ia], gb[ib] = groups[b][ib], groups[a][ia]
            trial[a], trial[b] = ga, gb
            c = cost(trial)
            if c < current - 1e-12:
              groups, current, improved = trial, c, True
    if not improved:
      break
  return [np.sort(g) for g in groups]


class GroupPlan(NamedTuple):
  """Each group's intra-group aggregations per global round and fine-tuning depth."""

  frequency: np.ndarray  # int [G], f_g >= 1
  depth: np.ndarray  # int [G], 1 <= D_g <= L
  round_time: float  # max_g f_g t_g(D_g): when the global aggregation happens


def frequency_and_depth(groups: list[np.ndarray], step_time, divergences, budget: float, *,
                        max_frequency: int = 8, kappa: float = 2.0, beta: float = 1.0
                        ) -> GroupPlan:
  r"""Each group's :math:`(f_g, D_g)`: the feasible pair of largest utility (module
  docstring).

  Args:
    groups: device indices per group (:func:`near_iid_groups`).
    step_time: ``[N, L]``, device ``i``'s iteration time at depth ``d + 1`` (its local
      steps and its upload to the group), e.g. from a device cost model.
    divergences: ``[G]``, :math:`\delta_g` (:func:`group_divergences`).
    budget: the global round's time budget :math:`T`.
    max_frequency: intra-group aggregations per global round at most.
    kappa, beta: the utility's depth scale and drift penalty.

  Raises:
    ConfigError: a group that cannot run one iteration at depth 1 within ``budget``
      (field ``budget``), ``max_frequency`` below 1, non-positive times.
  """
  step_time = np.asarray(step_time, np.float64)
  if step_time.ndim != 2 or (step_time <= 0).any():
    raise ConfigError("step_time", "a [devices, depths] array of positive times",
                      f"shape {step_time.shape}")
  check_number(budget, "budget", low=0, strict=True)
  check_number(max_frequency, "max_frequency", low=1, integer=True)
  num_layers = step_time.shape[1]
  freq, depth = [], []
  for g, delta in zip(groups, np.asarray(divergences, np.float64)):
    t = step_time[g].max(0)  # [L]: the group waits for its slowest member
    best = None
    for d in range(1, num_layers + 1):
      f = min(max_frequency, int(budget // t[d - 1]))
      for f_ in range(1, f + 1):
        u = (1 - np.exp(-d / kappa)) * f_ / (1 + beta * delta * (f_ - 1))
        if best is None or u > best[0] + 1e-12:
          best = (u, f_, d)
    if best is None:
      raise ConfigError("budget", f"at least one iteration at depth 1 of every group "
                        f"(the slowest group needs {t[0]:.4g})", budget)
    freq.append(best[1])
    depth.append(best[2])
  freq, depth = np.array(freq), np.array(depth)
  times = [f * step_time[g].max(0)[d - 1] for g, f, d in zip(groups, freq, depth)]
  return GroupPlan(freq, depth, float(max(times)))
