"""Worker grouping for grouped asynchronous over-the-air FL (Air-FedGA).

Air-FedGA (Ma et al., arXiv 2507.05704) splits workers into groups: members of a group
upload at once over the air (AirComp) and the group is synchronous; groups update the
global model asynchronously. Its abstract names the trade-offs the grouping must
balance -- the paper's full text was not available here, so **this module is a
reconstruction** (assumed for arXiv 2507.05704 from its abstract) of an algorithm with
that structure, not the paper's own:

* **idle time**: a group's round ends at its slowest member, so members of similar
  speed waste little, :math:`I = \\sum_g \\sum_{k \\in g} (\\max_{j \\in g} T_j - T_k)`;
* **aggregation error**: a group's AirComp MSE is capped by its weakest channel
  (:mod:`jaxfl.planners.power`), estimated as :math:`E[\\mathrm{MSE}_g]` over
  Rayleigh draws with the MSE-optimal power policy;
* **non-IID gap between groups**: :math:`\\sum_g \\mathrm{KL}(p_g \\| p)` of each
  group's label distribution to the population's;
* **staleness**: more groups update more often, but the slow groups' updates grow
  stale.

Algorithm (:func:`plan_groups`): for each candidate number of groups ``M``, cut the
workers sorted by expected compute time into ``M`` contiguous groups, then improve
:math:`J = c_w I/I_0 + c_m \\sum_g E[\\mathrm{MSE}_g]/E_0 + c_d \\mathrm{KL}/\\mathrm{KL}_0`
(each term relative to its value at the speed-sorted start) by swapping members of
adjacent groups while a swap lowers it. ``M`` is then the candidate with the smallest
estimated training time

.. math::
  \\hat T(M) = (1 + c_s \\tau_{max}) (1 + \\overline{E[\\mathrm{MSE}]} + \\overline{\\mathrm{KL}})
               \\bar T_{update},\\quad
  \\tau_{max} = \\frac{\\max_g T_g}{\\min_g T_g} (M - 1),\\quad
  \\bar T_{update} = \\Big(\\sum_g 1 / T_g\\Big)^{-1},

with :math:`T_g` the group's round time (slowest member's compute, plus upload and
download). Power scaling and denoising factors are then chosen per round from the
channels by :func:`jaxfl.planners.power.optimal_power`. All of it is host-side
planning (NumPy, one jitted MSE estimate), done once per run.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.errors import ConfigError
from jaxfl.planners.power import aggregation_mse, optimal_power


class GroupPlan(NamedTuple):
  """The chosen grouping and how each candidate number of groups scored."""

  groups: list[np.ndarray]  # worker indices of each group
  estimated_time: dict[int, float]  # candidate M -> \hat T(M)
  objective: dict[int, float]  # candidate M -> J after local search (J = 3 at the start)


def speed_sorted(compute_time: np.ndarray, num_groups: int) -> list[np.ndarray]:
  """Workers sorted by expected compute time, cut into ``num_groups`` near-equal contiguous
  groups."""
  compute_time = np.asarray(compute_time, float)
  _check_groups(num_groups, len(compute_time))
  order = np.argsort(compute_time, kind="stable")
  return [np.sort(g) for g in np.array_split(order, num_groups)]


def random_groups(num_workers: int, num_groups: int, rng: np.random.Generator) -> list[np.ndarray]:
  """A uniformly random split into ``num_groups`` groups of near-equal size."""
  _check_groups(num_groups, num_workers)
  return [np.sort(g) for g in np.array_split(rng.permutation(num_workers), num_groups)]


def members_array(groups: list[np.ndarray], max_groups: int, max_size: int) -> np.ndarray:
  """``[max_groups, max_size]`` int32 worker indices, ``-1`` for padding (empty slots and
  groups)."""
  if len(groups) > max_groups or max(len(g) for g in groups) > max_size:
    raise ConfigError("groups", f"at most {max_groups} groups of at most {max_size} workers",
                      [len(g) for g in groups])
  out = -np.ones([max_groups, max_size], np.int32)
  for i, g in enumerate(groups):
    out[i, :len(g)] = g
  return out


def idle_time(groups: list[np.ndarray], compute_time: np.ndarray) -> float:
  """:math:`\\sum_g \\sum_{k \\in g} (\\max_{j \\in g} T_j - T_k)`: time members wait for
  their group."""
  return float(sum(np.sum(compute_time[g].max() - compute_time[g]) for g in groups))


def group_divergences(groups: list[np.ndarray], label_hist: np.ndarray) -> np.ndarray:
  """:math:`\\mathrm{KL}(p_g \\| p)` of each group's label (or domain) distribution, from
  the members' summed counts, to the population's."""
  label_hist = np.asarray(label_hist)
  total = label_hist.sum(0) / label_hist.sum()
  out = []
  for g in groups:
    p = label_hist[g].sum(0) / max(label_hist[g].sum(), 1)
    nz = p > 0
    out.append(float(np.sum(p[nz] * np.log(p[nz] / np.maximum(total[nz], 1e-12)))))
  return np.array(out)


def label_divergence(groups: list[np.ndarray], label_hist: np.ndarray) -> float:
  """:math:`\\sum_g \\mathrm{KL}(p_g \\| p)` of the groups' label distributions to the
  population's (:func:`group_divergences`)."""
  return float(sum(group_divergences(groups, label_hist).tolist()))


@jax.jit
def _mean_mse(weights: jax.Array, gain_sq: jax.Array, max_power: jax.Array,
              noise_var: jax.Array) -> jax.Array:
  """Mean over channel draws ``gain_sq [D, N]`` of the optimal policy's MSE for one group."""
  def one(g):
    pc = optimal_power(g, max_power, weights, noise_var)
    return aggregation_mse(g, pc.power, pc.eta, weights, noise_var)

  return jnp.mean(jax.vmap(one)(gain_sq))


def expected_mse(group: np.ndarray, counts: np.ndarray, gain_draws: np.ndarray,
                 max_power: np.ndarray, noise_var: float) -> float:
  """:math:`E[\\mathrm{MSE}_g]` over ``gain_draws`` ``[D, N]`` (|h|² draws of every worker).

  The group's target is the sample-weighted mean of its members (weights
  :math:`D_k / D_g`); non-members get weight 0.
  """
  w = np.zeros(len(counts), np.float32)
  w[group] = counts[group] / counts[group].sum()
  return float(_mean_mse(jnp.asarray(w), jnp.asarray(gain_draws, jnp.float32),
                         jnp.asarray(max_power, jnp.float32), jnp.float32(noise_var)))


def group_round_time(groups: list[np.ndarray], compute_time: np.ndarray,
                     comm_time: float) -> np.ndarray:
  """Each group's expected round time: slowest member's compute plus ``comm_time``."""
  return np.array([compute_time[g].max() + comm_time for g in groups])


def plan_groups(compute_time: np.ndarray, path_gain: np.ndarray, counts: np.ndarray,
                label_hist: np.ndarray, *, candidates: tuple[int, ...], noise_var: float,
                max_power: np.ndarray | float = 1.0, comm_time: float = 0.0,
                weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                staleness_weight: float = 0.1, draws: int = 64, max_passes: int = 50,
                seed: int = 0) -> GroupPlan:
  """Choose the number of groups and the grouping (reconstruction; see the module docstring).

  Args:
    compute_time: ``[N]`` expected compute seconds of each worker's local round.
    path_gain: ``[N]`` large-scale channel gains :math:`L_k` (long-term CSI).
    counts: ``[N]`` samples per worker.
    label_hist: ``[N, C]`` label counts per worker.
    candidates: numbers of groups to consider (each at most N).
    noise_var: receiver noise power :math:`\\sigma^2`.
    max_power: ``[N]`` (or scalar) transmit power limits :math:`P_k`.
    comm_time: upload + download seconds added to every group round.
    weights: :math:`(c_w, c_m, c_d)` of the local-search objective.
    staleness_weight: :math:`c_s` of the time estimate.
    draws: Rayleigh draws for :math:`E[\\mathrm{MSE}_g]`.
    max_passes: local-search passes over all adjacent-group swaps.
    seed: seeds the channel draws.

  Returns:
    A :class:`GroupPlan`; every worker is in exactly one group.
  """
  compute_time = np.asarray(compute_time, float)
  n = len(compute_time)
  counts = np.asarray(counts, float)
  label_hist = np.asarray(label_hist, float)
  if not candidates:
    raise ConfigError("candidates", "at least one number of groups", candidates)
  for m in candidates:
    _check_groups(m, n)
  max_power = np.broadcast_to(np.asarray(max_power, float), [n])
  rng = np.random.default_rng(seed)
  gain_draws = np.asarray(path_gain, float)[None] * rng.exponential(size=[draws, n])
  c_w, c_m, c_d = weights

  mse_cache: dict[tuple[int, ...], float] = {}

  def mse_of(g: np.ndarray) -> float:
    key = tuple(int(i) for i in g)
    if key not in mse_cache:
      mse_cache[key] = expected_mse(g, counts, gain_draws, max_power, noise_var)
    return mse_cache[key]

  plans, estimated, objective = {}, {}, {}
  for m in candidates:
    groups = speed_sorted(compute_time, m)
    ref = (max(idle_time(groups, compute_time), 1e-12),
           max(sum(mse_of(g) for g in groups), 1e-12),
           max(label_divergence(groups, label_hist), 1e-12))

    def cost(gs, ref=ref):
      return (c_w * idle_time(gs, compute_time) / ref[0]
              + c_m * sum(mse_of(g) for g in gs) / ref[1]
              + c_d * label_divergence(gs, label_hist) / ref[2])

    best = cost(groups)
    for _ in range(max_passes):
      improved = False
      for a in range(m - 1):  # adjacent groups in speed order
        for i in range(len(groups[a])):
          for j in range(len(groups[a + 1])):
            trial = list(groups)
            ga, gb = groups[a].copy(), groups[a + 1].copy()
            ga[i], gb[j] = gb[j], ga[i]
            trial[a], trial[a + 1] = np.sort(ga), np.sort(gb)
            c = cost(trial)
            if c < best - 1e-9:
              groups, best, improved = trial, c, True
              break
          if improved:
            break
      if not improved:
        break
    periods = group_round_time(groups, compute_time, comm_time)
    tau_max = periods.max() / periods.min() * (m - 1)
    update_time = 1.0 / np.sum(1.0 / periods)
    mean_mse = float(np.mean([mse_of(g) for g in groups]))
    mean_kl = label_divergence(groups, label_hist) / m
    estimated[m] = float((1 + staleness_weight * tau_max) * (1 + mean_mse + mean_kl) * update_time)
    objective[m] = float(best)
    plans[m] = groups
  chosen = min(candidates, key=lambda m: (estimated[m], m))
  return GroupPlan(plans[chosen], estimated, objective)


def _check_groups(num_groups, num_workers: int) -> None:
  if not isinstance(num_groups, (int, np.integer)) or not 1 <= num_groups <= num_workers:
    raise ConfigError("num_groups", f"an integer between 1 and the {num_workers} workers",
                      num_groups)
