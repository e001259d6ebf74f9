"""Benchmark: client-samples per second of a federated round through the client-axis runtime.

Measured in one process, after compilation (``warmup`` calls, then ``repeats`` timed
calls ending in ``jax.block_until_ready``; medians reported), on K clients x
``local_steps`` steps x ``batch_size`` samples of an MLP on the digits task:

(i)   ``runtime``: one FedAvg round through :class:`jaxfl.algorithms.FedAvg`'s
      ``jit_round`` (client-axis runtime, all K clients participating);
(ii)  ``centralized``: the same model trained on the same number of samples in
      sequence, ``K * local_steps`` steps of ``batch_size`` on one client holding all
      the training data (:func:`jaxfl.local.make_local_train`, jitted);
(iii) ``client_loop``: the same round as a Python loop over clients, each calling a
      jitted one-client ``local_train``, then a jitted weighted mean and server update
      (the per-client pattern of fedjax / Flower);
(iv)  FLOP utilisation: FLOP/s of (i) (analytic matmul FLOPs, :func:`mlp_train_flops`;
      XLA's cost analysis reported beside it) over the FLOP/s of a large float32
      matmul timed in the same process, interleaved with the rounds;
(v)   ``plain_vmap``: the round written by hand, with no jaxfl runtime (a ``jax.vmap``
      over clients of a ``lax.scan`` of SGD steps, weighted mean, update);
(vi)  time per client-step of (i) as K grows (``scaling_clients``), on synthetic
      clients of ``scaling_samples_per_client`` samples drawn with replacement from
      the training set (digits has fewer samples than 512 clients need).

(i), (iii) and (v) do the same work: from the same parameters and round key they
compute the same new parameters (tests check it to 1e-5), because each client
visits its samples in the order :func:`jaxfl.local.visiting_order` draws from
``fold_in(k_train, client_id)`` exactly as ``FedAvg.round`` does.

To time one round repeatedly the same input state is passed to every call (a round
is a pure function), so every timed call does identical work.

All measurements of a repeat are interleaved call by call (round-robin over the
methods), so a change in machine load during the run hits all of them alike and
the ratios stay meaningful on a shared machine.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxfl import data as jdata
from jaxfl.algorithms import FedAvg, ServerState, server_optimizer
from jaxfl.errors import check
from jaxfl.local import ClientData, make_local_train, softmax_cross_entropy, visiting_order
from jaxfl.models import MLP, SIZES, functional
from jaxfl.runtime import make_client_axis, resolve_num_devices
from jaxfl.sim import uniform_profiles
from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.sweep import RunSpec
from sweeps.timing import make_matmul, time_interleaved

PARTITIONS = ("iid", "dirichlet")
METHODS = ("runtime", "runtime_vmap", "centralized", "client_loop", "plain_vmap")
# Sub-keys of a repeat's root key, so each consumer draws independent numbers.
KEY_MODEL, KEY_ROUNDS, KEY_CENTRAL, KEY_SCALING = range(4)


def validate(c) -> None:
  """Check every field before anything runs or is written."""
  pos_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0
  check(isinstance(c.seed, int) and c.seed >= 0, "seed", "a non-negative integer", c.seed)
  check(pos_int(c.num_seeds), "num_seeds", "a positive integer", c.num_seeds)
  check(c.dataset in jdata.DATASETS, "dataset", f"one of {list(jdata.DATASETS)}", c.dataset)
  check(c.partition in PARTITIONS, "partition", f"one of {list(PARTITIONS)}", c.partition)
  check(math.isfinite(c.alpha) and c.alpha > 0, "alpha", "a positive finite number", c.alpha)
  check(c.model in SIZES, "model", f"one of {list(SIZES)}", c.model)
  check(pos_int(c.num_clients), "num_clients", "a positive integer", c.num_clients)
  check(pos_int(c.local_steps), "local_steps", "a positive integer", c.local_steps)
  check(pos_int(c.batch_size), "batch_size", "a positive integer", c.batch_size)
  check(math.isfinite(c.client_lr) and c.client_lr >= 0, "client_lr",
        "a non-negative learning rate", c.client_lr)
  devices = resolve_num_devices(c.num_devices)
  check(c.num_clients % devices == 0, "num_clients", f"a multiple of the {devices} devices",
        c.num_clients)
  check(isinstance(c.warmup, int) and c.warmup >= 1, "warmup",
        "an integer >= 1 (the first call compiles)", c.warmup)
  check(pos_int(c.repeats), "repeats", "a positive integer", c.repeats)
  check(pos_int(c.matmul_size), "matmul_size", "a positive integer", c.matmul_size)
  ks = tuple(c.scaling_clients)
  check(len(ks) >= 2 and all(pos_int(k) and k % devices == 0 for k in ks)
        and list(ks) == sorted(set(ks)), "scaling_clients",
        f"an increasing tuple of at least 2 positive multiples of the {devices} devices", ks)
  check(pos_int(c.scaling_samples_per_client), "scaling_samples_per_client",
        "a positive integer", c.scaling_samples_per_client)
  for field in ("min_round_vs_centralized", "min_round_vs_client_loop",
                "max_time_per_client_step_growth"):
    v = c[field]
    check(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, field,
          "a positive finite number", v)


# ----------------------------------------------------------------------------- work


def mlp_widths(in_features: int, model: str, out_features: int) -> tuple[int, ...]:
  return (in_features, *SIZES[model], out_features)


def mlp_train_flops(widths: tuple[int, ...], samples: int) -> int:
  """Analytic matmul FLOPs of training an MLP on ``samples`` samples (forward + backward).

  A dense layer ``a -> b`` costs ``2ab`` flops per sample forward (multiply + add),
  ``2ab`` for its weight gradient and ``2ab`` for its input gradient; the first
  layer's input gradient is not computed (nothing upstream needs it), so a sample
  costs ``sum_l 2 a_l b_l * (2 if l == 0 else 3)``, a little under the usual
  "3 x forward" rule. Biases, activations, the loss and the optimizer are ignored
  (O(sum b) per sample, about 1% here).
  """
  layers = [2 * a * b for a, b in zip(widths[:-1], widths[1:])]
  per_sample = sum(f * (2 if i == 0 else 3) for i, f in enumerate(layers))
  return per_sample * samples


def compiled_flops(jitted: Callable, *args) -> float | None:
  """FLOPs XLA's cost analysis assigns to ``jitted(*args)``, or ``None`` if unavailable.

  XLA's ``HloCostAnalysis`` counts a while loop's body once, whatever the trip
  count (checked: a round with 1 and with 5 local steps get the same count), so for
  a ``lax.scan`` of S steps this is about 1/S of the executed flops.
  """
  try:
    cost = jitted.lower(*args).compile().cost_analysis()
  except Exception:  # backends without cost analysis raise various errors
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


class Setup(NamedTuple):
  """One repeat's inputs (the compiled functions are in :class:`Programs`)."""

  params: Any  # initial server parameters
  state: ServerState  # FedAvg server state at round 0
  clients: ClientData  # [K, n_max, ...] padded clients
  pooled: ClientData  # all training data as one client
  central_key: jax.Array
  k_train: jax.Array  # the round's training key, as FedAvg.round derives it


def round_train_key(state: ServerState) -> jax.Array:
  """The key ``FedAvg.round`` trains with; client ``k`` uses ``fold_in(it, k)``."""
  key = jax.random.fold_in(state.key, state.round)
  return jax.random.split(key)[1]


def make_fedavg(loss_fn, c, num_clients: int, num_devices: int | None = None) -> FedAvg:
  """FedAvg with every one of ``num_clients`` clients participating, fixed local steps."""
  return FedAvg(loss_fn, optax.sgd(c.client_lr), server_optimizer("fedavg", 1.0),
                batch_size=c.batch_size, clients_per_round=num_clients,
                profiles=uniform_profiles(num_clients, availability=1.0),
                local_steps=c.local_steps,
                axis=make_client_axis(c.num_devices if num_devices is None else num_devices))


def make_client_loop_round(loss_fn, c) -> Callable:
  """(iii) ``round(params, opt_state, client_list, client_keys, counts) -> (params, opt_state)``.

  One jitted ``local_train`` per client called from Python, then one jitted
  aggregation (stack, mean weighted by counts, FedAvg server step): the same math as
  ``FedAvg.round`` with full participation.
  """
  # Every step runs, as in the runtime's fixed-steps round: no per-step select either side.
  local = jax.jit(make_local_train(loss_fn, optax.sgd(c.client_lr), batch_size=c.batch_size,
                                   max_steps=c.local_steps, mask_steps=False))
  server_tx = server_optimizer("fedavg", 1.0)
  steps = jnp.int32(c.local_steps)

  @jax.jit
  def aggregate(params, opt_state, new_params, counts):
    w = counts.astype(jnp.float32)
    w = w / jnp.sum(w)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *new_params)
    mean_delta = jax.tree.map(lambda q, p: jnp.tensordot(w, q - p[None], axes=1), stacked, params)
    updates, opt_state = server_tx.update(jax.tree.map(jnp.negative, mean_delta), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def round_fn(params, opt_state, client_list, client_keys, counts):
    new_params = [local(params, d, steps, k)[0] for d, k in zip(client_list, client_keys)]
    return aggregate(params, opt_state, new_params, counts)

  return round_fn


def split_clients(clients: ClientData) -> list[ClientData]:
  """Per-client device arrays, as a per-client framework holds each client's data."""
  k = clients.count.shape[0]
  return [jax.tree.map(lambda a, i=i: a[i], clients) for i in range(k)]


def client_keys(k_train: jax.Array, num_clients: int) -> list[jax.Array]:
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_train, jnp.arange(num_clients))
  return list(keys)


def make_plain_vmap_round(apply_fn, c) -> Callable:
  """(v) A FedAvg round written directly in JAX: ``round(params, clients, k_train) -> params``.

  No jaxfl runtime, optimizer or aggregator objects: ``vmap`` over clients of a
  ``lax.scan`` of plain SGD steps, then the count-weighted mean of the deltas. Every
  client takes all ``local_steps`` steps (no masking) and nothing but the parameters
  is returned. The visiting order is the runtime's, so the result matches (i).
  """
  lr, b, steps = c.client_lr, c.batch_size, c.local_steps

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()

  grad = jax.grad(loss)

  def client(params, x, y, n, key):
    order = visiting_order(key, n, x.shape[0])

    def step(p, s):
      idx = order[(s * b + jnp.arange(b)) % jnp.maximum(n, 1)]
      g = grad(p, x[idx], y[idx])
      return jax.tree.map(lambda w, gw: w - lr * gw, p, g), None

    return jax.lax.scan(step, params, jnp.arange(steps))[0]

  @jax.jit
  def round_fn(params, clients: ClientData, k_train):
    num = clients.count.shape[0]
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_train, jnp.arange(num))
    new = jax.vmap(client, in_axes=(None, 0, 0, 0, 0))(params, clients.x, clients.y,
                                                       clients.count, keys)
    w = clients.count.astype(jnp.float32)
    w = w / jnp.sum(w)
    return jax.tree.map(lambda q, p: p + jnp.tensordot(w, q - p[None], axes=1), new, params)

  return round_fn


def make_centralized(loss_fn, c) -> Callable:
  """(ii) ``K * local_steps`` sequential steps of ``batch_size`` on one pooled client."""
  return jax.jit(make_local_train(loss_fn, optax.sgd(c.client_lr), batch_size=c.batch_size,
                                  max_steps=c.num_clients * c.local_steps, mask_steps=False))


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
               round_train_key(state))


def init_model(c, ds, key: jax.Array):
  in_features = int(np.prod(ds.x_train.shape[1:]))
  return functional(MLP(in_features, SIZES[c.model], ds.num_classes, rngs=nnx.Rngs(params=key)))


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
  return dict(backend=jax.default_backend(), device=jax.devices()[0].device_kind,
              devices=resolve_num_devices(c.num_devices), jax_version=jax.__version__,
              xla_flags=os.environ.get("XLA_FLAGS", ""))


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


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and scaling.png from the database alone."""
  runs = sorted((r for r in db.runs(c.experiment, status="done", method=RUN_METHOD)
                 if r["config_hash"] == digest), key=lambda r: r["seed"])
  if not runs:
    raise ValueError(f"{c.experiment}: no finished repeat of config {digest} in {db.path}")
  results, xla = [], None
  for r in runs:
    values = {m["name"]: m["value"] for m in db.metrics(run_id=r["id"])}
    xla = values.get("xla_flops_per_round", xla)
    results.append(unflatten(r["seed"], values))
  env = runs[0]["info"] or {}
  doc = write_claims(c, out, [r["seed"] for r in runs], results, xla, env)
  write_report(out, c, results, doc)
  return doc


# ----------------------------------------------------------------------------- outputs


def write_claims(c, out: str, seeds: list[int], results: list[dict],
                 xla_flops: float | None, env: dict) -> dict:
  per = lambda name: [r[name] for r in results]
  per_method = lambda field: {m: [r[field][m] for r in results] for m in METHODS}
  rounds = f"{c.num_clients} clients x {c.local_steps} local steps x batch {c.batch_size}"
  claims = [
      claims_lib.claim(
          id="round_vs_centralized",
          statement=(f"A FedAvg round through the client-axis runtime ({rounds}) processes at "
                     f"least {c.min_round_vs_centralized}x the samples per second of centralized "
                     "training of the same model on the same number of samples in sequence"),
          paper="vmapping clients turns K sequential small batches into one batched step",
          metric="samples_per_s_ratio", better="higher", method="runtime",
          per_seed={"runtime": per("round_vs_centralized")},
          threshold=c.min_round_vs_centralized,
          samples_per_s={m: per_method("samples_per_s")[m] for m in ("runtime", "centralized")}),
      claims_lib.claim(
          id="round_vs_client_loop",
          statement=(f"The vmapped round processes at least {c.min_round_vs_client_loop}x the "
                     "samples per second of the same round as a Python loop over clients "
                     "calling a jitted local-training function"),
          paper="fedjax / Flower run clients in a Python loop; jaxfl maps them in one program",
          metric="samples_per_s_ratio", better="higher", method="runtime",
          per_seed={"runtime": per("round_vs_client_loop")},
          threshold=c.min_round_vs_client_loop,
          samples_per_s={m: per_method("samples_per_s")[m] for m in ("runtime", "client_loop")}),
      claims_lib.claim(
          id="time_per_client_step_growth",
          statement=(f"The round's time per client-step grows by at most "
                     f"{c.max_time_per_client_step_growth}x from K={min(c.scaling_clients)} to "
                     f"K={max(c.scaling_clients)} clients"),
          paper="the client axis scales linearly in K",
          metric="time_per_client_step_ratio", better="lower", method="runtime",
          per_seed={"runtime": per("time_per_client_step_growth")},
          threshold=c.max_time_per_client_step_growth,
          time_per_client_step_ms={k: [r["time_per_client_step_ms"][k] for r in results]
                                   for k in results[0]["time_per_client_step_ms"]}),
  ]
  med = claims_lib.median
  samples = c.num_clients * c.local_steps * c.batch_size
  reported = dict(
      runtime_overhead=med(per("runtime_overhead")),
      runtime_overhead_note="plain hand-written vmap round time / the runtime's round time on "
                            "one device (= samples/s (i') / (v)); 1 = no overhead, < 1 = "
                            "runtime slower",
      flop_utilisation=med(per("flop_utilisation")),
      flops_per_s=med(per("flops_per_s")),
      peak_flops_per_s=med(per("peak_flops_per_s")),
      flops_per_round_analytic=results[0]["flops_per_round"],
      flops_per_round_xla_cost_analysis=xla_flops,
      flops_per_round_xla_times_local_steps=(None if xla_flops is None
                                             else xla_flops * c.local_steps),
      flop_utilisation_xla=None if xla_flops is None else
      med([xla_flops * c.local_steps / (r["ms"]["runtime"] / 1e3) / r["peak_flops_per_s"]
           for r in results]),
      flops_note="analytic: matmul flops, forward 2ab per layer and sample, backward 2ab "
                 "(weight gradient) + 2ab (input gradient, not for the first layer); XLA's cost "
                 "analysis counts a scan body once, so it is about 1/local_steps of the executed "
                 "flops: scaled by local_steps it is an estimate that includes elementwise ops",
      time_per_client_step_growth_from_fastest=med(
          per("time_per_client_step_growth_from_fastest"), "lower"),
      samples_per_round=samples,
      ms_per_round={m: med(v, "lower") for m, v in per_method("ms").items()},
      samples_per_s={m: med(v) for m, v in per_method("samples_per_s").items()},
      per_repeat=[{k: r[k] for k in ("seed", "ms", "samples_per_s", "round_vs_centralized",
                                     "round_vs_client_loop", "runtime_overhead",
                                     "peak_flops_per_s", "flop_utilisation",
                                     "time_per_client_step_ms",
                                     "time_per_client_step_growth",
                                     "time_per_client_step_growth_from_fastest")}
                  for r in results],
      **{k: env.get(k) for k in ("backend", "device", "devices", "jax_version", "xla_flags")},
  )
  return claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                 variant=c.variant, seeds=seeds, claims=claims, reported=reported)


def write_report(out: str, c, results: list[dict], doc: dict) -> None:
  """``report.md`` (all numbers) and ``scaling.png`` (time per client-step vs K)."""
  plt = report_lib.plt
  ks = sorted(int(k) for k in results[0]["time_per_client_step_ms"])
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, r in enumerate(results):
    us = [1e3 * r["time_per_client_step_ms"][str(k)] for k in ks]
    ax.plot(ks, us, "o-", color=f"C{i % 10}", label=f"repeat {r['seed']}")
  ax.set_xscale("log", base=2)
  ax.set_ylim(bottom=0)
  ax.set(xlabel="clients per round K", ylabel="time per client-step (µs)",
         title=f"FedAvg round, {c.scaling_samples_per_client} samples/client, batch "
               f"{c.batch_size}, {c.local_steps} steps")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "scaling.png"), dpi=110)
  report_lib.plt.close(fig)

  rep = doc["reported"]
  med = claims_lib.median
  names = {"runtime": "(i) jaxfl runtime round (FedAvg.jit_round)",
           "centralized": "(ii) centralized, same samples in sequence",
           "client_loop": "(iii) Python loop over clients (jitted local_train each)",
           "plain_vmap": "(v) hand-written jitted vmap round",
           "runtime_vmap": "(i') jaxfl runtime round on one device (vmap only)"}
  lines = [f"# bench_fl ({c.variant})", "",
           f"Backend {rep['backend']} ({rep['device']}); round: {c.num_clients} clients x "
           f"{c.local_steps} local steps x batch {c.batch_size} = {rep['samples_per_round']} "
           f"samples, MLP {c.model} on {c.dataset} ({c.partition} partition); medians of "
           f"{c.repeats} timed calls after {c.warmup} warm-up calls, over {c.num_seeds} repeats "
           f"(seeds {doc['seeds']}).", "", report_lib.claims_table(doc), "",
           "| method | ms / round | samples / s |", "|---|---|---|"]
  for m in METHODS:
    lines.append(f"| {names[m]} | {rep['ms_per_round'][m]:.3f} | {rep['samples_per_s'][m]:,.0f} |")
  xla = rep["flops_per_round_xla_cost_analysis"]
  na = lambda v, fmt: "—" if v is None else format(v, fmt)
  ratio = lambda name: med([r[name] for r in results])
  quantities = [
      ("(i)/(ii) samples/s, round vs centralized", f"{ratio('round_vs_centralized'):.3f}"),
      ("(i)/(iii) samples/s, round vs client loop", f"{ratio('round_vs_client_loop'):.3f}"),
      ("(i')/(v) samples/s, one-device runtime vs hand-written (runtime_overhead)",
       f"{rep['runtime_overhead']:.3f}"),
      ("FLOPs per round, analytic (matmuls, forward + backward)",
       f"{rep['flops_per_round_analytic']:.4g}"),
      ("FLOPs per round, XLA cost analysis (scan body counted once)", na(xla, ".4g")),
      ("FLOPs per round, XLA cost analysis x local_steps",
       na(rep["flops_per_round_xla_times_local_steps"], ".4g")),
      ("achieved FLOP/s of (i), analytic", f"{rep['flops_per_s'] / 1e9:.3f} G"),
      (f"matmul {c.matmul_size}^3 float32 FLOP/s (practical peak)",
       f"{rep['peak_flops_per_s'] / 1e9:.1f} G"),
      ("FLOP utilisation of (i), analytic", f"{rep['flop_utilisation']:.2%}"),
      ("FLOP utilisation of (i), XLA x local_steps", na(rep["flop_utilisation_xla"], ".2%")),
      ("time per client-step growth from the fastest smaller K",
       f"{rep['time_per_client_step_growth_from_fastest']:.3f}"),
  ]
  lines += ["", "| quantity | value |", "|---|---|"]
  lines += [f"| {label} | {value} |" for label, value in quantities]
  lines += ["", f"K-scaling on synthetic clients ({c.scaling_samples_per_client} samples each, "
            "drawn with replacement from the training set):", "",
            f"| K | ms / round | time per client-step (µs) | ratio to K={ks[0]} |",
            "|---|---|---|---|"]
  for k in ks:
    step = med([r["time_per_client_step_ms"][str(k)] for r in results], "lower")
    base = med([r["time_per_client_step_ms"][str(ks[0])] for r in results], "lower")
    lines.append(f"| {k} | {step * k * c.local_steps:.3f} | {1e3 * step:.2f} | {step / base:.3f} |")
  lines += ["", "![time per client-step](scaling.png)", "",
            "Per repeat (ms per round):", "",
            "| seed | " + " | ".join(METHODS) + " | (i)/(ii) | (i)/(iii) | (v)/(i) time | growth |",
            "|---|" + "---|" * (len(METHODS) + 4)]
  for r in results:
    lines.append(f"| {r['seed']} | " + " | ".join(f"{r['ms'][m]:.3f}" for m in METHODS) +
                 f" | {r['round_vs_centralized']:.3f} | {r['round_vs_client_loop']:.3f} | "
                 f"{r['runtime_overhead']:.3f} | {r['time_per_client_step_growth']:.3f} |")
  lines.append("")
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))
