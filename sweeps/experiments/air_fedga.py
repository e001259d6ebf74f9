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

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfl import data as jdata
from jaxfl.algorithms import grouped_async as ga
from jaxfl.errors import check
from jaxfl.evaluation import make_evaluate
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import MLP, SIZES, functional
from jaxfl.planners import grouping
from jaxfl.planners.power import POLICIES
from jaxfl.sim.channel import Comm, noise_var_from_snr_db
from sweeps import claims as claims_lib
from sweeps import families as families_lib
from sweeps import report as report_lib
from sweeps.families import seeds, tuning_seeds

# name -> (uplink, synchronous, grouping)
METHODS = {
    "air_fedga": ("aircomp", False, "planned"),
    "air_fedga_random": ("aircomp", False, "random"),
    "air_fedavg": ("aircomp", True, "one"),
    "fedasync": ("digital", False, "singletons"),
    "fedavg_digital": ("ideal", True, "one"),
}
SUMMARY = ("time_to_target", "mean_mse", "mean_staleness", "max_staleness", "updates",
           "final_accuracy", "num_groups", *(f"mse_{p}" for p in POLICIES))
KEY_MODEL, KEY_RUN = range(2)


def validate(c) -> None:
  """Check every field before anything runs or is written."""
  pos = lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   and v > 0)
  pos_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0
  check(isinstance(c.seed, int) and c.seed >= 0, "seed", "a non-negative integer", c.seed)
  check(pos_int(c.num_seeds), "num_seeds", "a positive integer", c.num_seeds)
  check(pos_int(c.num_tuning_seeds), "num_tuning_seeds", "a positive integer", c.num_tuning_seeds)
  check(c.dataset in jdata.DATASETS, "dataset", f"one of {list(jdata.DATASETS)}", c.dataset)
  check(pos_int(c.num_workers), "num_workers", "a positive integer", c.num_workers)
  check(pos(c.alpha), "alpha", "a positive finite number", c.alpha)
  check(pos_int(c.min_client_size), "min_client_size", "a positive integer", c.min_client_size)
  check(c.model in SIZES, "model", f"one of {list(SIZES)}", c.model)
  for f in ("batch_size", "local_steps", "planner_draws", "log_points"):
    check(pos_int(c[f]), f, "a positive integer", c[f])
  for f in ("learning_rate", "base_compute_time", "max_power", "bandwidth_hz", "bits_per_param",
            "max_upload_time", "t_max", "path_gain_high"):
    check(pos(c[f]), f, "a positive finite number", c[f])
  check(isinstance(c.download_time, (int, float)) and c.download_time >= 0, "download_time",
        "a non-negative number", c.download_time)
  tiers = tuple(c.compute_tiers)
  check(len(tiers) >= 1 and all(pos(t) for t in tiers), "compute_tiers",
        "a tuple of positive numbers", tiers)
  check(0 < c.jitter_low <= c.jitter_high, "jitter_low", "0 < jitter_low <= jitter_high",
        (c.jitter_low, c.jitter_high))
  check(0 < c.path_gain_low <= c.path_gain_high, "path_gain_low",
        "0 < path_gain_low <= path_gain_high", (c.path_gain_low, c.path_gain_high))
  check(isinstance(c.snr_db, (int, float)) and math.isfinite(c.snr_db), "snr_db",
        "a finite number of dB", c.snr_db)
  check(c.fading in ("rayleigh", "rician"), "fading", "'rayleigh' or 'rician'", c.fading)
  check(c.rician_k >= 0, "rician_k", "a non-negative K-factor", c.rician_k)
  cands = tuple(c.group_candidates)
  check(len(cands) >= 1 and all(isinstance(m, int) and 1 <= m <= c.num_workers for m in cands),
        "group_candidates", f"group counts between 1 and num_workers={c.num_workers}", cands)
  for f in ("idle_weight", "mse_weight", "label_weight", "staleness_weight", "staleness_exponent"):
    check(isinstance(c[f], (int, float)) and c[f] >= 0, f, "a non-negative number", c[f])
  grid = tuple(c.beta0_grid)
  check(len(grid) >= 1 and all(0 < b <= 1 for b in grid), "beta0_grid",
        "mixing constants in (0, 1]", grid)
  check(0 < c.target_accuracy <= 1, "target_accuracy", "an accuracy in (0, 1]", c.target_accuracy)
  check(c.time_margin >= 0, "time_margin", "a non-negative number of seconds", c.time_margin)


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
  return Comm(bandwidth_hz=c.bandwidth_hz, bits_per_param=c.bits_per_param,
                 noise_var=noise_var_from_snr_db(c.snr_db, c.max_power), max_power=c.max_power,
                 download_time=c.download_time, max_upload_time=c.max_upload_time,
                 fading=c.fading, rician_k=c.rician_k)


def _groups(c, compute, path_gain, counts, hist, seed: int, num_params: int
            ) -> dict[str, list[np.ndarray]]:
  """Every method's groups for one seed; random groups take the planned number of groups."""
  n = c.num_workers
  plan = grouping.plan_groups(
      compute, path_gain, counts, hist, candidates=tuple(c.group_candidates),
      noise_var=float(noise_var_from_snr_db(c.snr_db, c.max_power)), max_power=c.max_power,
      comm_time=c.download_time + num_params / c.bandwidth_hz,  # AirComp upload + download
      seed=seed, draws=c.planner_draws, weights=(c.idle_weight, c.mse_weight, c.label_weight),
      staleness_weight=c.staleness_weight)
  random = grouping.random_groups(n, len(plan.groups), np.random.default_rng([seed, 7]))
  kinds = {"planned": plan.groups, "random": random, "one": [np.arange(n)],
           "singletons": [np.array([k]) for k in range(n)]}
  return {m: kinds[kind] for m, (_, _, kind) in METHODS.items()}


def _num_params(c, ds) -> int:
  model = MLP(int(np.prod(ds.x_train.shape[1:])), SIZES[c.model], ds.num_classes,
              rngs=nnx.Rngs(0))
  return sum(x.size for x in jax.tree.leaves(functional(model)[1]))


def prepare(c) -> Context:
  """Data, partitions, path gains and every method's groups for every seed."""
  ds = jdata.load_dataset(c.dataset, data_dir=c.data_dir or None, download=c.download)
  check(c.num_workers * c.min_client_size <= len(ds.y_train), "num_workers",
        f"at most {len(ds.y_train) // c.min_client_size} (training samples of {c.dataset} / "
        f"min_client_size)", c.num_workers)
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
  """``simulate(key, (clients, members, path_gain), {"beta0": beta0})`` of ``method``."""
  ds = ctx.ds
  uplink, synchronous, _ = METHODS[method]
  comm = _comm(c)
  compute = jnp.asarray(compute_times(c), jnp.float32)
  rounds_, events = ctx.bounds[method]
  times = jnp.asarray(log_times(c), jnp.float32)
  policies = tuple(POLICIES) if method == "air_fedga" else ()
  in_features = int(np.prod(ds.x_train.shape[1:]))

  def simulate(key, inputs, hparams):
    clients, members, path_gain = inputs
    beta0 = hparams["beta0"]
    model = MLP(in_features, SIZES[c.model], ds.num_classes,
                rngs=nnx.Rngs(params=jax.random.fold_in(key, KEY_MODEL)))
    apply_fn, params0 = functional(model)
    evaluate = make_evaluate(apply_fn, ds.x_test, ds.y_test)
    engine = ga.GroupedAsync(
        loss_fn=softmax_cross_entropy(apply_fn), learning_rate=c.learning_rate,
        batch_size=c.batch_size, local_steps=c.local_steps,
        method=ga.Method(uplink, synchronous, staleness_exponent=c.staleness_exponent),
        comm=comm, members=members, compute_time=compute, path_gain=path_gain, t_max=c.t_max,
        jitter=(c.jitter_low, c.jitter_high), rounds=rounds_, events=events,
        policies=policies, beta0=beta0)
    trace = engine.simulate(params0, jax.random.fold_in(key, KEY_RUN), clients, evaluate)
    acc = ga.accuracy_at(trace, times)
    valid = trace.valid
    n_valid = jnp.maximum(jnp.sum(valid), 1)
    mean = lambda v: jnp.sum(jnp.where(valid, v, 0.0)) / n_valid
    t2t = ga.time_to_target(trace, c.target_accuracy)
    summary = {
        "time_to_target": jnp.where(jnp.isfinite(t2t), t2t, jnp.nan),
        "mean_mse": mean(trace.mse) if uplink == "aircomp" else jnp.nan,
        "mean_staleness": mean(trace.staleness.astype(jnp.float32)),
        "max_staleness": jnp.max(jnp.where(valid, trace.staleness, 0)).astype(jnp.float32),
        "updates": jnp.sum(valid).astype(jnp.float32),
        "final_accuracy": acc[-1],
        "num_groups": jnp.sum(jnp.any(members >= 0, -1)).astype(jnp.float32),
        **{f"mse_{p}": mean(trace.mse_by_policy[p]) if p in trace.mse_by_policy else jnp.nan
           for p in POLICIES},
    }
    last = jnp.arange(len(times)) == len(times) - 1
    values = {"accuracy": acc,
              **{k: jnp.where(last, v, jnp.nan) for k, v in summary.items()}}
    return times, values

  return simulate


def families(c, ctx: Context) -> list[families_lib.Family]:
  """A family per method (their groups differ in shape); an asynchronous method's
  ``beta0`` is tuned over ``beta0_grid`` (smallest median time to target, ties: the
  larger median final accuracy), a synchronous method's is 1."""
  out = []
  select = families_lib.lowest("time_to_target", "-final_accuracy", aggregate="median")
  for method, (_, synchronous, _) in METHODS.items():
    m, s = _max_groups(c, ctx, method)

    def inputs(method_, seed, stage, m=m, s=s):
      del stage
      d = ctx.per_seed[seed]
      return (d.clients, grouping.members_array(d.groups[method_], m, s), d.path_gain)

    grid = [{"beta0": 1.0}] if synchronous else [{"beta0": float(b)} for b in c.beta0_grid]
    out.append(families_lib.Family(
        name=method, methods=(method,), simulate=_simulate_fn(c, ctx, method),
        steps=range(1, c.log_points + 1), inputs=inputs, grid=grid, select=select,
        optional=SUMMARY))
  return out


# ----------------------------------------------------------------------------- report


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md, accuracy.png and mse.png from the database alone."""
  final = {name: db.final_values(c.experiment, name, config_hash=digest)
           for name in ("time_to_target", "mean_mse", "beta0", "final_accuracy",
                        "mean_staleness", "num_groups", *(f"mse_{p}" for p in POLICIES))}
  # A run without a time_to_target row never reached the target.
  runs = {(r["method"], r["seed"]) for r in db.runs(c.experiment, status="done")
          if r["config_hash"] == digest}
  per_seed = lambda name, methods: {
      m: [final[name].get(m, {}).get(s) if (m, s) in runs else None for s in seeds(c)]
      for m in methods}
  t2t = per_seed("time_to_target", METHODS)
  paper = "Air-FedGA trains 29.9%-71.6% faster than the state of the art (arXiv 2507.05704)"

  def reduction(method, baseline):
    a = claims_lib.median(t2t[method], "lower")
    b = claims_lib.median(t2t[baseline], "lower")
    return None if a is None or b is None else 100.0 * (1.0 - a / b)

  claims = []
  for base, name in (("air_fedavg", "Air-FedAvg"), ("fedasync", "FedAsync")):
    claims.append(claims_lib.claim(
        id=f"time_to_target_vs_{base}",
        statement=(f"Air-FedGA reaches {c.target_accuracy:.0%} test accuracy in less simulated "
                   f"time than {name}"),
        paper=paper, metric="sim_time_to_target", better="lower", method="air_fedga",
        baseline=base, margin=c.time_margin,
        per_seed={"air_fedga": t2t["air_fedga"], base: t2t[base]},
        reduction_percent=reduction("air_fedga", base), paper_reduction_percent=[29.9, 71.6]))
  claims.append(claims_lib.claim(
      id="planned_vs_random_grouping",
      statement="Air-FedGA's planned grouping reaches the target sooner than random groups of "
                "the same sizes",
      paper="worker grouping is one of Air-FedGA's optimisation variables (arXiv 2507.05704)",
      metric="sim_time_to_target", better="lower", method="air_fedga",
      baseline="air_fedga_random", margin=c.time_margin,
      per_seed={"air_fedga": t2t["air_fedga"], "air_fedga_random": t2t["air_fedga_random"]},
      reduction_percent=reduction("air_fedga", "air_fedga_random")))
  mse = {p: [final[f"mse_{p}"].get("air_fedga", {}).get(s) for s in seeds(c)] for p in POLICIES}
  claims.append(claims_lib.claim(
      id="optimal_power_mse_vs_zero_forcing",
      statement="The MSE-optimal power policy's mean AirComp aggregation MSE on Air-FedGA's "
                "rounds is below channel inversion's on the same channels",
      paper="power scaling and denoising factors minimise the AirComp MSE (Cao et al., TWC "
            "2020; arXiv 2507.05704)",
      metric="mean_aggregation_mse", better="lower", method="optimal", baseline="zero_forcing",
      per_seed={"optimal": mse["optimal"], "zero_forcing": mse["zero_forcing"]}))
  doc = claims_lib.write_claims(
      os.path.join(out, "claims.json"), experiment=c.experiment, variant=c.variant,
      seeds=seeds(c), claims=claims,
      reported=dict(time_to_target=t2t, beta0=per_seed("beta0", METHODS),
                    final_accuracy=per_seed("final_accuracy", METHODS),
                    mean_staleness=per_seed("mean_staleness", METHODS),
                    num_groups=per_seed("num_groups", ["air_fedga"])["air_fedga"],
                    mse_by_policy=mse))
  curves = {m: db.series(c.experiment, m, "accuracy", config_hash=digest) for m in METHODS}
  write_report(out, c, doc, curves, t2t, mse, per_seed)
  return doc


NAMES = {"air_fedga": "Air-FedGA", "air_fedga_random": "Air-FedGA (random groups)",
         "air_fedavg": "Air-FedAvg", "fedasync": "FedAsync (digital)",
         "fedavg_digital": "FedAvg (ideal digital)"}


def write_report(out, c, doc, curves, t2t, mse, per_seed) -> None:
  plt = report_lib.plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, (m, by_seed) in enumerate(curves.items()):
    if not by_seed:
      continue
    n = min(len(v[0]) for v in by_seed.values())
    t = np.asarray(next(iter(by_seed.values()))[1][:n], float)
    ys = 100 * np.array([v[2][:n] for v in by_seed.values()], float)
    ax.plot(t, ys.mean(0), color=f"C{i}", label=NAMES[m])
    ax.fill_between(t, ys.min(0), ys.max(0), color=f"C{i}", alpha=0.15, lw=0)
  ax.axhline(100 * c.target_accuracy, color="k", ls=":", lw=1, label="target")
  ax.set(xlabel="simulated time (s)", ylabel="test accuracy (%)",
         title=f"{c.num_workers} workers, SNR {c.snr_db:g} dB, tiers {tuple(c.compute_tiers)}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "accuracy.png"), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 3.5))
  names = list(mse)
  vals = [[v for v in mse[p] if v is not None] for p in names]
  ax.boxplot(vals, tick_labels=names)
  ax.set(ylabel="mean aggregation MSE per round", yscale="log",
         title="power policies on Air-FedGA's channels")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "mse.png"), dpi=110)
  plt.close(fig)

  rows = ["| method | time to target (s), median | per seed | mixing beta0 | final accuracy |"
          " mean staleness |", "|---|---|---|---|---|---|"]
  beta = per_seed("beta0", METHODS)
  acc = per_seed("final_accuracy", METHODS)
  stale = per_seed("mean_staleness", METHODS)
  fmt = report_lib._fmt
  for m in METHODS:
    rows.append(f"| {NAMES[m]} | {fmt(claims_lib.median(t2t[m], 'lower'))} | "
                f"{', '.join(fmt(v) for v in t2t[m])} | {fmt(beta[m][0])} | "
                f"{report_lib.mean_std(acc[m])} | {report_lib.mean_std(stale[m])} |")
  lines = [f"# air_fedga ({c.variant})", "", report_lib.claims_table(doc), "",
           "Reductions in time to target: " + ", ".join(
               f"{cl['id']}: {fmt(cl.get('reduction_percent'))}%" for cl in doc["claims"]
               if "reduction_percent" in cl) + " (paper: 29.9-71.6%).", "",
           *rows, "", "![accuracy](accuracy.png)", "",
           "| power policy | mean MSE (mean ± std over seeds) |", "|---|---|",
           *[f"| {p} | {report_lib.mean_std(mse[p])} |" for p in mse], "",
           "![mse](mse.png)", "",
           f"{c.num_workers} workers, compute tiers {tuple(c.compute_tiers)} x "
           f"{c.base_compute_time} s, SNR {c.snr_db} dB, {c.fading} fading, bandwidth "
           f"{c.bandwidth_hz:g} channel uses/s, {c.bits_per_param:g} bits/parameter digital, "
           f"target {c.target_accuracy:.0%}, t_max {c.t_max:g} s. Groups and mixing rule are "
           "reconstructions (arXiv 2507.05704's text was not available).", ""]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))


# ----------------------------------------------------------------------------- regimes


def report_sweep(folder: str, points: list[tuple[dict, object, dict]]) -> None:
  """``regime.md`` and ``regime.png``: where over-the-air grouping pays, over a grid.

  For every grid point (``get_sweep()``: compute heterogeneity x digital payload), the
  ratio of Air-FedGA's median time to target to Air-FedAvg's and to FedAsync's (below
  1: Air-FedGA is faster), against the heterogeneity max/min compute time, a line per
  ``bits_per_param``.
  """
  rows = []
  for _, c, doc in points:
    by_id = {cl["id"]: cl for cl in doc["claims"]}
    ratio = lambda cl: (None if cl["value"] is None or cl["baseline_value"] is None
                        else cl["value"] / cl["baseline_value"])
    tiers = tuple(c.compute_tiers)
    rows.append(dict(heterogeneity=max(tiers) / min(tiers), bits=float(c.bits_per_param),
                     vs_air_fedavg=ratio(by_id["time_to_target_vs_air_fedavg"]),
                     vs_fedasync=ratio(by_id["time_to_target_vs_fedasync"]),
                     air_fedga=by_id["time_to_target_vs_air_fedavg"]["value"],
                     air_fedavg=by_id["time_to_target_vs_air_fedavg"]["baseline_value"],
                     fedasync=by_id["time_to_target_vs_fedasync"]["baseline_value"]))
  rows.sort(key=lambda r: (r["heterogeneity"], r["bits"]))
  plt = report_lib.plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  for ax, key, title in ((axes[0], "vs_air_fedavg", "Air-FedGA / Air-FedAvg"),
                         (axes[1], "vs_fedasync", "Air-FedGA / FedAsync")):
    for i, bits in enumerate(sorted({r["bits"] for r in rows})):
      pts = [(r["heterogeneity"], r[key]) for r in rows if r["bits"] == bits and r[key]]
      if pts:
        ax.plot(*zip(*pts), "o-", color=f"C{i}", label=f"{bits:g} bits/parameter digital")
    ax.axhline(1.0, color="k", lw=1, ls=":")
    ax.set(xscale="log", xlabel="compute heterogeneity (slowest / fastest)", title=title)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("time-to-target ratio (< 1: Air-FedGA faster)")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(folder, "regime.png"), dpi=110)
  plt.close(fig)
  fmt = report_lib._fmt
  lines = ["# air_fedga: where over-the-air grouping pays", "",
           "Median simulated time to the target accuracy (s) per grid point, and Air-FedGA's "
           "ratio to each baseline (below 1: Air-FedGA is faster; — : never reached).", "",
           "| heterogeneity | digital bits / parameter | Air-FedGA | Air-FedAvg | FedAsync | "
           "ratio to Air-FedAvg | ratio to FedAsync |", "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['heterogeneity']:g} | {r['bits']:g} | {fmt(r['air_fedga'])} | "
            f"{fmt(r['air_fedavg'])} | {fmt(r['fedasync'])} | {fmt(r['vs_air_fedavg'])} | "
            f"{fmt(r['vs_fedasync'])} |" for r in rows]
  lines += ["", "![regime](regime.png)", ""]
  with open(os.path.join(folder, "regime.md"), "w") as f:
    f.write("\n".join(lines))
