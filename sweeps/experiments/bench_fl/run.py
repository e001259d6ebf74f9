"""bench_fl's runs: validation, each repeat's set-up and timings, and the per-run protocol
(one run per repeat, its timings logged as metrics at step 0)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl import data as jdata
from jaxfl.algorithms import FedAvg, ServerState
from jaxfl.errors import check, check_number
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import SIZES, mlp_classifier
from jaxfl.runtime import resolve_num_devices
from sweeps import timing
from sweeps.configs import common
from sweeps.experiments.bench_fl.programs import (
  client_keys,
  compiled_flops,
  make_centralized,
  make_client_loop_round,
  make_fedavg,
  make_plain_vmap_round,
  mlp_train_flops,
  mlp_widths,
  split_clients,
)
from sweeps.sweep import RunSpec
from sweeps.timing import make_matmul, time_interleaved

PARTITIONS = ("iid", "dirichlet")
METHODS = ("runtime", "runtime_vmap", "centralized", "client_loop", "plain_vmap")
# Sub-keys of a repeat's root key, so each consumer draws independent numbers.
KEY_MODEL, KEY_ROUNDS, KEY_CENTRAL, KEY_SCALING = range(4)


def validate(c) -> None:
  """Check every field before anything runs or is written."""
  common.check(c)
  check(c.dataset in jdata.DATASETS, "dataset", f"one of {list(jdata.DATASETS)}", c.dataset)
  check(c.partition in PARTITIONS, "partition", f"one of {list(PARTITIONS)}", c.partition)
  check(c.model in SIZES, "model", f"one of {list(SIZES)}", c.model)
  # warmup >= 1: the first call compiles.
  for field in ("num_clients", "local_steps", "batch_size", "warmup", "repeats", "matmul_size",
                "scaling_samples_per_client"):
    check_number(c[field], field, low=1, integer=True)
  for field in ("alpha", "min_round_vs_centralized", "min_round_vs_client_loop",
                "max_time_per_client_step_growth"):
    check_number(c[field], field, low=0, strict=True)
  check_number(c.client_lr, "client_lr", low=0)
  devices = resolve_num_devices(c.num_devices)
  check(c.num_clients % devices == 0, "num_clients", f"a multiple of the {devices} devices",
        c.num_clients)
  ks = tuple(c.scaling_clients)
  check(len(ks) >= 2 and all(isinstance(k, int) and k > 0 and k % devices == 0 for k in ks)
        and list(ks) == sorted(set(ks)), "scaling_clients",
        f"an increasing tuple of at least 2 positive multiples of the {devices} devices", ks)


class Setup(NamedTuple):
  """One repeat's inputs (the compiled functions are in :class:`Programs`)."""

  params: Any  # initial server parameters
  state: ServerState  # FedAvg server state at round 0
  clients: ClientData  # [K, n_max, ...] padded clients
  pooled: ClientData  # all training data as one client
  central_key: jax.Array
  k_train: jax.Array  # the round's training key, as FedAvg.round derives it


# ----------------------------------------------------------------------------- repeats


def load(c):
  ds = jdata.load_dataset(c.dataset, data_dir=c.data_dir or None)
  check(c.num_clients <= len(ds.y_train), "num_clients",
        f"at most {len(ds.y_train)} (training samples of {c.dataset})", c.num_clients)
  return ds


def partition(c, ds, seed: int) -> list[np.ndarray]:
  if c.partition == "dirichlet":
    return jdata.partition.dirichlet(ds.y_train, c.num_clients, c.alpha, seed=seed)
  return jdata.partition.iid(len(ds.y_train), c.num_clients, seed=seed)


def make_setup(c, ds, alg: FedAvg, seed: int) -> Setup:
  """One repeat's inputs: model init, partition and keys all come from ``seed``."""
  key = jax.random.PRNGKey(seed)
  _, params = init_model(c, ds, jax.random.fold_in(key, KEY_MODEL))
  x, y, counts = jdata.partition.pad_clients(ds.x_train, ds.y_train, partition(c, ds, seed))
  clients = ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts))
  n = len(ds.y_train)
  pooled = ClientData(jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), jnp.int32(n))
  state = alg.init(params, jax.random.fold_in(key, KEY_ROUNDS))
  return Setup(params, state, clients, pooled, jax.random.fold_in(key, KEY_CENTRAL),
               FedAvg.round_keys(state)[1])


def init_model(c, ds, key: jax.Array):
  return mlp_classifier(c.model, ds.x_train.shape[1:], ds.num_classes, key)


def synthetic_clients(ds, num_clients: int, samples_per_client: int, seed: int) -> ClientData:
  """``num_clients`` clients of ``samples_per_client`` samples drawn with replacement."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(ds.y_train), (num_clients, samples_per_client))
  return ClientData(jnp.asarray(ds.x_train[idx]), jnp.asarray(ds.y_train[idx]),
                    jnp.full([num_clients], samples_per_client, jnp.int32))


class Programs(NamedTuple):
  """The compiled functions, built once and reused by every repeat (same shapes)."""

  loss_fn: Callable
  alg: FedAvg
  alg_vmap: FedAvg  # the same round on one device: the like-for-like runtime overhead
  central: Callable
  loop_round: Callable
  plain_round: Callable
  scaling_algs: dict[int, FedAvg]
  matmul: Callable[[], jax.Array]


def build_programs(c, ds) -> Programs:
  apply_fn, _ = init_model(c, ds, jax.random.PRNGKey(0))
  loss_fn = softmax_cross_entropy(apply_fn)
  return Programs(loss_fn, make_fedavg(loss_fn, c, c.num_clients),
                  make_fedavg(loss_fn, c, c.num_clients, num_devices=1),
                  make_centralized(loss_fn, c),
                  make_client_loop_round(loss_fn, c), make_plain_vmap_round(apply_fn, c),
                  {k: make_fedavg(loss_fn, c, k) for k in c.scaling_clients},
                  make_matmul(c.matmul_size, jax.random.PRNGKey(c.seed)))


def round_functions(c, prog: Programs, s: Setup) -> dict[str, Callable[[], Any]]:
  """Zero-argument callables of (i), (ii), (iii), (v) on this repeat's inputs."""
  client_list = split_clients(s.clients)
  keys = client_keys(s.k_train, c.num_clients)
  central_steps = jnp.int32(c.num_clients * c.local_steps)
  return {
      "runtime": lambda: prog.alg.jit_round(s.state, s.clients),
      "runtime_vmap": lambda: prog.alg_vmap.jit_round(s.state, s.clients),
      "centralized": lambda: prog.central(s.params, s.pooled, central_steps, s.central_key),
      "client_loop": lambda: prog.loop_round(s.params, s.state.opt_state, client_list, keys,
                                             s.clients.count),
      "plain_vmap": lambda: prog.plain_round(s.params, s.clients, s.k_train),
  }


def run_repeat(c, ds, prog: Programs, seed: int, log=print) -> dict:
  """One repeat: times of (i), (ii), (iii), (v), the matmul peak and the K-scaling."""
  s = make_setup(c, ds, prog.alg, seed)
  samples = c.num_clients * c.local_steps * c.batch_size
  if log:
    log(f"[repeat {seed}] round of {c.num_clients} clients x {c.local_steps} steps x batch "
        f"{c.batch_size} = {samples} samples; clients hold "
        f"{int(s.clients.count.min())}..{int(s.clients.count.max())} samples "
        f"(n_max {s.clients.x.shape[1]})")
  # The peak is timed among the rounds, so it sees the same machine load as they do.
  times = time_interleaved({**round_functions(c, prog, s), "matmul": prog.matmul},
                           warmup=c.warmup, repeats=c.repeats, log=log)
  peak = 2.0 * c.matmul_size**3 / statistics.median(times.pop("matmul"))
  med = {m: statistics.median(t) for m, t in times.items()}
  sps = {m: samples / t for m, t in med.items()}
  if log:
    log(f"[repeat {seed}] " + " | ".join(f"{m} {1e3 * med[m]:.2f} ms ({sps[m]:,.0f} samples/s)"
                                         for m in METHODS) +
        f" | matmul {c.matmul_size}^3 {peak / 1e9:.1f} GFLOP/s")

  # (vi) the runtime's round at growing K, on fixed-size synthetic clients.
  key = jax.random.PRNGKey(seed)
  scaling_fns = {}
  for k, alg in prog.scaling_algs.items():
    data = synthetic_clients(ds, k, c.scaling_samples_per_client, seed + k)
    st = alg.init(s.params, jax.random.fold_in(key, KEY_SCALING))
    scaling_fns[k] = lambda alg=alg, st=st, data=data: alg.jit_round(st, data)
  scale_times = time_interleaved({f"K={k}": f for k, f in scaling_fns.items()}, warmup=c.warmup,
                                 repeats=c.repeats, log=log)
  step_ms = {k: 1e3 * statistics.median(scale_times[f"K={k}"]) / (k * c.local_steps)
             for k in scaling_fns}
  ks = sorted(step_ms)
  growth = max(step_ms[k] / step_ms[ks[0]] for k in ks)
  # Also from the fastest smaller K: small rounds carry fixed costs that flatter growth.
  growth_from_fastest = max(step_ms[k] / min(step_ms[j] for j in ks[:i + 1])
                            for i, k in enumerate(ks))
  if log:
    log(f"[repeat {seed}] time per client-step: " + ", ".join(
        f"K={k} {1e3 * v:.2f} us" for k, v in step_ms.items()) + f" | growth {growth:.3f}")

  widths = mlp_widths(int(np.prod(ds.x_train.shape[1:])), c.model, ds.num_classes)
  flops = mlp_train_flops(widths, samples)
  return dict(seed=seed, ms={m: 1e3 * v for m, v in med.items()}, samples_per_s=sps,
              round_vs_centralized=sps["runtime"] / sps["centralized"],
              round_vs_client_loop=sps["runtime"] / sps["client_loop"],
              runtime_overhead=med["plain_vmap"] / med["runtime_vmap"],
              flops_per_round=flops, flops_per_s=flops / med["runtime"],
              peak_flops_per_s=peak, flop_utilisation=flops / med["runtime"] / peak,
              time_per_client_step_ms={str(k): v for k, v in step_ms.items()},
              time_per_client_step_growth=growth,
              time_per_client_step_growth_from_fastest=growth_from_fastest,
              n_max=int(s.clients.x.shape[1]))


# ----------------------------------------------------------------------------- sweep protocol
# One run per repeat: RunSpec("runtime", seed) measures the runtime's round against its
# baselines and logs every number as a metric at step 0, so report() rebuilds claims.json
# and report.md from the database alone (sweeps.sweep describes the protocol).

RUN_METHOD = "runtime"


class Context:
  """The dataset, and the compiled programs built by the first repeat that needs them."""

  def __init__(self, ds):
    self.ds = ds
    self.programs: Programs | None = None
    self.xla_flops: float | None = None


def prepare(c) -> Context:
  ds = load(c)
  for seed in range(c.seed, c.seed + c.num_seeds):  # a partition may still reject the config
    partition(c, ds, seed)
  return Context(ds)


def run_specs(c) -> list[RunSpec]:
  return [RunSpec(RUN_METHOD, c.seed + i) for i in range(c.num_seeds)]


def rounds(c, spec: RunSpec) -> int:
  del c, spec
  return 1


def environment(c) -> dict:
  """Where the numbers were measured (the run's ``info``)."""
  return dict(timing.environment(), devices=resolve_num_devices(c.num_devices))


def execute(c, spec: RunSpec, ctx: Context, run_dir: str, log_metrics, progress) -> dict:
  """One repeat: all timings of :func:`run_repeat`, logged as metrics at step 0."""
  del run_dir  # nothing to checkpoint: a repeat is timed whole
  if ctx.programs is None:
    ctx.programs = build_programs(c, ctx.ds)
    s0 = make_setup(c, ctx.ds, ctx.programs.alg, spec.seed)
    # Under shard_map, XLA's cost analysis describes one device's program: scale to all.
    flops = compiled_flops(ctx.programs.alg.jit_round, s0.state, s0.clients)
    ctx.xla_flops = None if flops is None else flops * ctx.programs.alg.axis.num_devices
    env = environment(c)
    progress.log(f"bench_fl/{c.variant}: {env['backend']} ({env['device']}), {env['devices']} "
                 "device(s) for the round")
  result = run_repeat(c, ctx.ds, ctx.programs, spec.seed, log=progress.log)
  log_metrics(0, None, {**flatten(result), "xla_flops_per_round": ctx.xla_flops})
  progress.update(1, vs_central=result["round_vs_centralized"],
                  vs_loop=result["round_vs_client_loop"])
  return environment(c)


_SCALARS = ("round_vs_centralized", "round_vs_client_loop", "runtime_overhead",
            "flops_per_round", "flops_per_s", "peak_flops_per_s", "flop_utilisation",
            "time_per_client_step_growth", "time_per_client_step_growth_from_fastest", "n_max")
_PER_METHOD = ("ms", "samples_per_s")
_STEP_MS = "time_per_client_step_ms"


def flatten(result: dict) -> dict[str, float]:
  """A repeat's numbers as metric names: ``ms/runtime``, ``time_per_client_step_ms/K=8``..."""
  out = {k: float(result[k]) for k in _SCALARS}
  for field in _PER_METHOD:
    out.update({f"{field}/{m}": float(v) for m, v in result[field].items()})
  out.update({f"{_STEP_MS}/K={k}": float(v) for k, v in result[_STEP_MS].items()})
  return out


def unflatten(seed: int, values: dict[str, float | None]) -> dict:
  """The inverse of :func:`flatten` (plus ``seed``)."""
  result: dict[str, Any] = {"seed": seed, **{k: values[k] for k in _SCALARS}}
  for field in _PER_METHOD:
    result[field] = {m: values[f"{field}/{m}"] for m in METHODS}
  prefix = f"{_STEP_MS}/K="
  result[_STEP_MS] = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
  result[_STEP_MS] = dict(sorted(result[_STEP_MS].items(), key=lambda kv: int(kv[0])))
  return result
