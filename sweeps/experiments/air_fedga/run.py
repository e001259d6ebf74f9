"""Air-FedGA's runs: validation, the simulator set-up and one method family per method."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl import data as jdata
from jaxfl.algorithms import grouped_async as ga
from jaxfl.errors import check, check_number, is_number
from jaxfl.evaluation import eval_sets, make_evaluate, time_to_held_target
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import SIZES, mlp_classifier
from jaxfl.planners import grouping
from jaxfl.planners.power import POLICIES
from jaxfl.sim.channel import Comm, aircomp_upload_time, noise_var_from_snr_db
from sweeps import families as families_lib
from sweeps.configs import common
from sweeps.families import SPLITS, seeds, tuning_seeds

# name -> (uplink, synchronous, grouping, digital payload: "high" = comm.bits_per_param,
# "low" = low_bits_per_param; the two regimes the digital baseline is reported in)
METHODS = {
    "air_fedga": ("aircomp", False, "planned", "high"),
    "air_fedga_random": ("aircomp", False, "random", "high"),
    "air_fedavg": ("aircomp", True, "one", "high"),
    "fedasync": ("digital", False, "singletons", "high"),
    "fedasync_low_bits": ("digital", False, "singletons", "low"),
    "fedavg_digital": ("ideal", True, "one", "high"),
}
SUMMARY = ("time_to_target", "time_to_target_first", "time_to_target_updates", "mean_mse",
           "mean_staleness", "max_staleness", "updates", "final_accuracy", "num_groups",
           "eval_size", *(f"mse_{p}" for p in POLICIES))
KEY_MODEL, KEY_RUN = range(2)


def validate(c) -> None:
  """Check every field before anything runs or is written (the ``comm`` block by building
  :class:`~jaxfl.sim.channel.Comm`, which checks its own fields)."""
  common.check(c)
  for f in ("num_workers", "min_client_size", "batch_size",
            "local_steps", "planner_draws", "log_points"):
    check_number(c[f], f, low=1, integer=True)
  check(c.dataset in jdata.DATASETS, "dataset", f"one of {list(jdata.DATASETS)}", c.dataset)
  check(c.model in SIZES, "model", f"one of {list(SIZES)}", c.model)
  for f in ("alpha", "base_compute_time", "t_max", "path_gain_high", "low_bits_per_param"):
    check_number(c[f], f, low=0, strict=True)
  check_number(c.validation, "validation", low=0, strict=True)
  check(c.validation < 1, "validation", "a fraction in (0, 1)", c.validation)
  check_number(c.target_window, "target_window", low=0, integer=True)
  check(c.target_window < c.log_points, "target_window",
        f"fewer grid points than log_points={c.log_points}", c.target_window)
  lrs = tuple(c.learning_rate_grid)
  check(len(lrs) >= 1 and all(is_number(v) and 0 < v < math.inf for v in lrs),
        "learning_rate_grid", "a tuple of positive learning rates", lrs)
  tiers = tuple(c.compute_tiers)
  check(len(tiers) >= 1 and all(is_number(t) and 0 < t < math.inf for t in tiers),
        "compute_tiers", "a tuple of positive numbers", tiers)
  check(0 < c.jitter_low <= c.jitter_high, "jitter_low", "0 < jitter_low <= jitter_high",
        (c.jitter_low, c.jitter_high))
  check(0 < c.path_gain_low <= c.path_gain_high, "path_gain_low",
        "0 < path_gain_low <= path_gain_high", (c.path_gain_low, c.path_gain_high))
  check_number(c.snr_db, "snr_db", unit="dB")
  _comm(c)
  cands = tuple(c.group_candidates)
  check(len(cands) >= 1 and all(isinstance(m, int) and 1 <= m <= c.num_workers for m in cands),
        "group_candidates", f"group counts between 1 and num_workers={c.num_workers}", cands)
  for f in ("idle_weight", "mse_weight", "label_weight", "staleness_weight", "staleness_exponent"):
    check_number(c[f], f, low=0)
  grid = tuple(c.beta0_grid)
  check(len(grid) >= 1 and all(0 < b <= 1 for b in grid), "beta0_grid",
        "mixing constants in (0, 1]", grid)
  check(0 < c.target_accuracy <= 1, "target_accuracy", "an accuracy in (0, 1]", c.target_accuracy)
  check_number(c.time_margin, "time_margin", low=0, unit="seconds")


# ----------------------------------------------------------------------------- setup


def compute_times(c) -> np.ndarray:
  """Expected seconds per local round: worker k is in tier ``floor(len(tiers) k / N)``."""
  tiers = np.asarray(c.compute_tiers, float)
  tier = (len(tiers) * np.arange(c.num_workers)) // c.num_workers
  return c.base_compute_time * tiers[tier]


class SeedData(NamedTuple):
  clients: ClientData  # numpy, padded to the context's n_max
  path_gain: np.ndarray  # [N]
  groups: dict[str, list[np.ndarray]]  # method -> groups


class Context:
  """Data, per-seed partitions, channels and groupings."""

  def __init__(self, ds, per_seed: dict[int, SeedData], bounds: dict[str, tuple[int, int]]):
    self.ds = ds
    self.per_seed = per_seed
    self.bounds = bounds  # method -> (rounds, events)


def _comm(c) -> Comm:
  """The ``comm`` block as :class:`~jaxfl.sim.channel.Comm` (``noise_var`` from ``snr_db``)."""
  noise_var = noise_var_from_snr_db(c.snr_db, c.comm.max_power)
  return common.build(Comm, c.comm, "comm", noise_var=float(noise_var))


def _groups(c, compute, path_gain, counts, hist, seed: int, num_params: int
            ) -> dict[str, list[np.ndarray]]:
  """Every method's groups for one seed; random groups take the planned number of groups."""
  n = c.num_workers
  comm = _comm(c)
  plan = grouping.plan_groups(
      compute, path_gain, counts, hist, candidates=tuple(c.group_candidates),
      noise_var=comm.noise_var, max_power=comm.max_power,
      comm_time=comm.download_time + aircomp_upload_time(num_params, comm.bandwidth_hz,
                                                         comm.values_per_use),
      seed=seed, draws=c.planner_draws, weights=(c.idle_weight, c.mse_weight, c.label_weight),
      staleness_weight=c.staleness_weight)
  random = grouping.random_groups(n, len(plan.groups), np.random.default_rng([seed, 7]))
  kinds = {"planned": plan.groups, "random": random, "one": [np.arange(n)],
           "singletons": [np.array([k]) for k in range(n)]}
  return {m: kinds[kind] for m, (_, _, kind, _) in METHODS.items()}


def _num_params(c, ds) -> int:
  params = mlp_classifier(c.model, ds.x_train.shape[1:], ds.num_classes, jax.random.key(0))[1]
  return sum(x.size for x in jax.tree.leaves(params))


def prepare(c) -> Context:
  """Data, partitions, path gains and every method's groups for every seed."""
  ds = jdata.load_dataset(c.dataset, data_dir=c.data_dir or None, download=c.download,
                          validation=c.validation, seed=c.seed)
  check(c.num_workers * c.min_client_size <= len(ds.y_train), "num_workers",
        f"at most {len(ds.y_train) // c.min_client_size} (training samples of {c.dataset} / "
        f"min_client_size)", c.num_workers)
  check(c.batch_size <= len(ds.y_train), "batch_size",
        f"at most {len(ds.y_train)} (training samples of {c.dataset})", c.batch_size)
  compute = compute_times(c)
  num_params = _num_params(c, ds)
  raw = {}
  for s in seeds(c) + tuning_seeds(c):
    parts = jdata.partition.dirichlet(ds.y_train, c.num_workers, c.alpha, seed=s,
                                      min_size=c.min_client_size)
    path_gain = np.random.default_rng([s, 1]).uniform(c.path_gain_low, c.path_gain_high,
                                                       c.num_workers)
    counts = np.array([len(p) for p in parts], float)
    hist = jdata.partition.label_histograms(ds.y_train, parts, ds.num_classes)
    raw[s] = (parts, path_gain, _groups(c, compute, path_gain, counts, hist, s, num_params))
  n_max = max(len(p) for parts, _, _ in raw.values() for p in parts)
  per_seed = {}
  for s, (parts, path_gain, groups) in raw.items():
    x, y, counts = jdata.partition.pad_clients(ds.x_train, ds.y_train, parts)
    pad = [(0, 0), (0, n_max - x.shape[1])]
    clients = ClientData(np.pad(x, pad + [(0, 0)] * (x.ndim - 2)), np.pad(y, pad), counts)
    per_seed[s] = SeedData(clients, path_gain.astype(np.float32), groups)
  bounds = {m: ga.bounds(compute, [d.groups[m] for d in per_seed.values()], t_max=c.t_max,
                         jitter_low=c.jitter_low) for m in METHODS}
  return Context(ds, per_seed, bounds)


# ----------------------------------------------------------------------------- simulation


def log_times(c) -> np.ndarray:
  return np.linspace(0.0, c.t_max, c.log_points + 1)[1:]


def _max_groups(c, ctx, method) -> tuple[int, int]:
  groups = [d.groups[method] for d in ctx.per_seed.values()]
  return max(len(g) for g in groups), max(len(x) for g in groups for x in g)


def _simulate_fn(c, ctx: Context, method: str):
  """``simulate(key, (clients, members, path_gain, evalset), {"learning_rate", "beta0"})``
  of ``method``: accuracy on ``evalset`` (validation or test) at :func:`log_times`, and a
  summary at the last point."""
  ds = ctx.ds
  uplink, synchronous, _, payload = METHODS[method]
  comm = _comm(c)
  if payload == "low":
    comm = dataclasses.replace(comm, bits_per_param=float(c.low_bits_per_param))
  compute = jnp.asarray(compute_times(c), jnp.float32)
  rounds_, events = ctx.bounds[method]
  times = jnp.asarray(log_times(c), jnp.float32)
  policies = tuple(POLICIES) if method == "air_fedga" else ()

  def simulate(key, inputs, hparams):
    clients, members, path_gain, evalset = inputs
    beta0 = hparams["beta0"]
    apply_fn, params0 = mlp_classifier(c.model, ds.x_train.shape[1:], ds.num_classes,
                                       jax.random.fold_in(key, KEY_MODEL))
    evaluate = make_evaluate(apply_fn, evalset.x, evalset.y, mask=evalset.mask)
    engine = ga.GroupedAsync(
        loss_fn=softmax_cross_entropy(apply_fn), learning_rate=hparams["learning_rate"],
        batch_size=c.batch_size, local_steps=c.local_steps,
        method=ga.Method(uplink, synchronous, staleness_exponent=c.staleness_exponent),
        comm=comm, members=members, compute_time=compute, path_gain=path_gain, t_max=c.t_max,
        jitter=(c.jitter_low, c.jitter_high), rounds=rounds_, events=events,
        policies=policies, beta0=beta0)
    # A tick per 1/50 of the events: the call's progress line, not one callback per event.
    trace = engine.simulate(params0, jax.random.fold_in(key, KEY_RUN), clients, evaluate,
                            progress_every=max(1, events // 50))
    acc = ga.accuracy_at(trace, times)
    valid = trace.valid
    n_valid = jnp.maximum(jnp.sum(valid), 1)
    mean = lambda v: jnp.sum(jnp.where(valid, v, 0.0)) / n_valid
    finite = lambda t: jnp.where(jnp.isfinite(t), t, jnp.nan)
    held = lambda window: time_to_held_target(times, acc, c.target_accuracy, window=window)
    summary = {
        "time_to_target": finite(held(c.target_window)),
        "time_to_target_first": finite(held(0)),
        "time_to_target_updates": finite(ga.time_to_target(trace, c.target_accuracy)),
        "mean_mse": mean(trace.mse) if uplink == "aircomp" else jnp.nan,
        "mean_staleness": mean(trace.staleness.astype(jnp.float32)),
        "max_staleness": jnp.max(jnp.where(valid, trace.staleness, 0)).astype(jnp.float32),
        "updates": jnp.sum(valid).astype(jnp.float32),
        "final_accuracy": acc[-1],
        "num_groups": jnp.sum(jnp.any(members >= 0, -1)).astype(jnp.float32),
        "eval_size": jnp.sum(evalset.mask),
        **{f"mse_{p}": mean(trace.mse_by_policy[p]) if p in trace.mse_by_policy else jnp.nan
           for p in POLICIES},
    }
    last = jnp.arange(len(times)) == len(times) - 1
    values = {"accuracy": acc,
              **{k: jnp.where(last, v, jnp.nan) for k, v in summary.items()}}
    return times, values

  return simulate


def grid(c) -> list[dict[str, float]]:
  """Every method's tuning grid: its local step size x its server mixing constant (a
  synchronous method's server step size: with one group of everyone, fresh, the mixing
  weight is ``min(1, beta0)``), the same points for all."""
  return [{"learning_rate": float(lr), "beta0": float(b)}
          for lr in c.learning_rate_grid for b in c.beta0_grid]


def families(c, ctx: Context) -> list[families_lib.Family]:
  """A family per method (their groups differ in shape), each tuned over the same
  :func:`grid` on the tuning seeds' validation curves (smallest median held time to
  target, ties: the larger median final accuracy), reported on the test split."""
  out = []
  sets = eval_sets(ctx.ds)
  select = families_lib.lowest("time_to_target", "-final_accuracy", aggregate="median")
  for method in METHODS:
    m, s = _max_groups(c, ctx, method)

    def inputs(method_, seed, stage, m=m, s=s):
      d = ctx.per_seed[seed]
      return (d.clients, grouping.members_array(d.groups[method_], m, s), d.path_gain,
              sets[SPLITS[stage]])

    out.append(families_lib.Family(
        name=method, methods=(method,), simulate=_simulate_fn(c, ctx, method),
        steps=range(1, c.log_points + 1), inputs=inputs, grid=grid(c), select=select,
        optional=SUMMARY))
  return out
