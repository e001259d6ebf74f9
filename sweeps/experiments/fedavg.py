"""FedAvg on non-IID clients vs centralized training of the same model on the same data."""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxfl import data as jdata
from jaxfl.algorithms import SERVER_OPTIMIZERS, FedAvg, server_optimizer
from jaxfl.checkpoint import Checkpointer
from jaxfl.errors import ConfigError, check
from jaxfl.evaluation import make_evaluate
from jaxfl.local import ClientData, make_local_train, softmax_cross_entropy
from jaxfl.loop import DivergenceError, run_rounds
from jaxfl.models import MLP, SIZES, functional
from jaxfl.runtime import make_client_axis, resolve_num_devices
from jaxfl.sim import DeviceProfiles, load_profiles, sample_profiles
from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.sweep import RunSpec

PARTITIONS = ("dirichlet", "shards", "iid")
METHODS = ("fedavg", "centralized")
# Sub-keys of a seed's root key, so each consumer draws independent numbers.
KEY_MODEL, KEY_PROFILES, KEY_ROUNDS, KEY_CENTRAL = range(4)


def validate(c) -> None:
  """Check every field before anything runs or is written."""
  check(isinstance(c.seed, int) and c.seed >= 0, "seed", "a non-negative integer", c.seed)
  check(c.num_seeds >= 1, "num_seeds", "a positive integer", c.num_seeds)
  check(c.dataset in jdata.DATASETS, "dataset", f"one of {list(jdata.DATASETS)}", c.dataset)
  check(c.partition in PARTITIONS, "partition", f"one of {list(PARTITIONS)}", c.partition)
  check(c.num_clients > 0, "num_clients", "a positive integer", c.num_clients)
  check(c.min_client_size >= 1, "min_client_size", "a positive integer (no empty clients)",
        c.min_client_size)
  check(math.isfinite(c.alpha) and c.alpha > 0, "alpha", "a positive finite number", c.alpha)
  check(c.model in SIZES, "model", f"one of {list(SIZES)}", c.model)
  check(c.batch_size > 0, "batch_size", "a positive integer", c.batch_size)
  check(math.isfinite(c.client_lr) and c.client_lr >= 0, "client_lr",
        "a non-negative finite learning rate", c.client_lr)
  check(math.isfinite(c.server_lr) and c.server_lr >= 0, "server_lr",
        "a non-negative finite learning rate", c.server_lr)
  for field in ("compute_median", "uplink_median", "downlink_median"):
    check(math.isfinite(c[field]) and c[field] > 0, field, "a positive finite number", c[field])
  check(not c.data_dir or not os.path.exists(c.data_dir) or os.path.isdir(c.data_dir),
        "data_dir", "a directory (or '' for the default)", c.data_dir)
  check(c.server_optimizer in SERVER_OPTIMIZERS, "server_optimizer",
        f"one of {list(SERVER_OPTIMIZERS)}", c.server_optimizer)
  check(c.local_epochs > 0, "local_epochs", "a positive number", c.local_epochs)
  check(c.max_local_steps > 0, "max_local_steps", "a positive integer", c.max_local_steps)
  check(0 < c.clients_per_round <= c.num_clients, "clients_per_round",
        f"between 1 and num_clients={c.num_clients}", c.clients_per_round)
  check(c.num_rounds > 0, "num_rounds", "a positive integer", c.num_rounds)
  check(c.eval_every > 0, "eval_every", "a positive integer", c.eval_every)
  check(c.central_epochs > 0, "central_epochs", "a positive integer", c.central_epochs)
  check(c.checkpoint_every > 0, "checkpoint_every", "a positive integer", c.checkpoint_every)
  devices = resolve_num_devices(c.num_devices)
  check(c.clients_per_round % devices == 0, "clients_per_round",
        f"a multiple of the {devices} devices", c.clients_per_round)
  check(0 < c.availability_low <= c.availability_high <= 1, "availability_low",
        "0 < availability_low <= availability_high <= 1", c.availability_low)
  check(math.isfinite(c.profile_sigma) and c.profile_sigma >= 0, "profile_sigma",
        "a non-negative finite number", c.profile_sigma)
  check(c.accuracy_gap_points >= 0, "accuracy_gap_points", "a non-negative number",
        c.accuracy_gap_points)


def partition(c, labels: np.ndarray, seed: int) -> list[np.ndarray]:
  if c.partition == "dirichlet":
    return jdata.partition.dirichlet(labels, c.num_clients, c.alpha, seed=seed,
                                     min_size=c.min_client_size)
  if c.partition == "shards":
    return jdata.partition.shards(labels, c.num_clients, c.shards_per_client, seed=seed)
  return jdata.partition.iid(len(labels), c.num_clients, seed=seed)


class Context(NamedTuple):
  ds: jdata.Dataset
  parts: dict[int, list[np.ndarray]]  # seed -> client index arrays
  profiles_table: DeviceProfiles | None


def prepare(c) -> Context:
  """Load the data and partition it for every seed; raises ConfigError on bad input."""
  try:
    ds = jdata.load_dataset(c.dataset, data_dir=c.data_dir or None, download=c.download)
  except OSError as e:
    raise ConfigError("data_dir", "a directory that can be created and written",
                      c.data_dir or jdata.default_data_dir()) from e
  check(c.num_clients <= len(ds.y_train), "num_clients",
        f"at most {len(ds.y_train)} (training samples of {c.dataset})", c.num_clients)
  profiles_table = load_profiles(c.profiles_file, c.num_clients) if c.profiles_file else None
  parts = {s: partition(c, ds.y_train, s) for s in seeds(c)}
  return Context(ds, parts, profiles_table)


def seeds(c) -> list[int]:
  return [c.seed + i for i in range(c.num_seeds)]


def run_specs(c) -> list[RunSpec]:
  return [RunSpec(m, s) for s in seeds(c) for m in METHODS]


def rounds(c, spec: RunSpec) -> int:
  return c.num_rounds if spec.method == "fedavg" else 1


def _model(c, ds, key):
  in_features = int(np.prod(ds.x_train.shape[1:]))
  model = MLP(in_features, SIZES[c.model], ds.num_classes,
              rngs=nnx.Rngs(params=jax.random.fold_in(key, KEY_MODEL)))
  apply_fn, params0 = functional(model)
  return apply_fn, params0


def execute(c, spec: RunSpec, ctx: Context, run_dir: str, log_metrics, progress) -> None:
  """One run: FedAvg for ``num_rounds`` rounds, or the centralized baseline."""
  key = jax.random.PRNGKey(spec.seed)
  ds = ctx.ds
  apply_fn, params0 = _model(c, ds, key)
  loss_fn = softmax_cross_entropy(apply_fn)
  evaluate = make_evaluate(apply_fn, ds.x_test, ds.y_test)
  if spec.method == "centralized":
    _centralized(c, ds, loss_fn, params0, evaluate, key, log_metrics, progress)
    return

  x_pad, y_pad, counts = jdata.partition.pad_clients(ds.x_train, ds.y_train, ctx.parts[spec.seed])
  clients = ClientData(jnp.asarray(x_pad), jnp.asarray(y_pad), jnp.asarray(counts))
  profiles = ctx.profiles_table if ctx.profiles_table is not None else sample_profiles(
      jax.random.fold_in(key, KEY_PROFILES), c.num_clients, compute_median=c.compute_median,
      uplink_median=c.uplink_median, downlink_median=c.downlink_median, sigma=c.profile_sigma,
      availability_range=(c.availability_low, c.availability_high))
  alg = FedAvg(loss_fn, optax.sgd(c.client_lr), server_optimizer(c.server_optimizer, c.server_lr),
               batch_size=c.batch_size, clients_per_round=c.clients_per_round, profiles=profiles,
               local_steps=None, local_epochs=c.local_epochs, max_local_steps=c.max_local_steps,
               axis=make_client_axis(c.num_devices))
  state = alg.init(params0, jax.random.fold_in(key, KEY_ROUNDS))

  def record(r):
    values = {k: r[k] for k in ("accuracy", "loss", "train_loss", "participants")}
    log_metrics(r["round"], r["sim_time"], values)
    progress.update(r["round"], sim_time=r["sim_time"], acc=r["accuracy"])

  os.makedirs(run_dir, exist_ok=True)
  with Checkpointer(os.path.join(run_dir, "checkpoints"), every=c.checkpoint_every) as ckpt:
    if ckpt.latest_round() is not None:
      progress.log(f"resuming from the checkpoint of round {ckpt.latest_round()}")
    run_rounds(alg, state, clients, num_rounds=c.num_rounds, evaluate=evaluate,
               eval_every=c.eval_every, checkpointer=ckpt, on_record=record, log=None)


def _centralized(c, ds, loss_fn, params0, evaluate, key, log_metrics, progress) -> None:
  """One "client" holding all the training data, with the same optimizer and batch size."""
  n = len(ds.y_train)
  steps = int(math.ceil(c.central_epochs * n / c.batch_size))
  train = jax.jit(make_local_train(loss_fn, optax.sgd(c.client_lr), batch_size=c.batch_size,
                                   max_steps=steps, mask_steps=False))
  pooled = ClientData(jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), jnp.int32(n))
  params, _ = train(params0, pooled, jnp.int32(steps), jax.random.fold_in(key, KEY_CENTRAL))
  accuracy, loss = (float(v) for v in evaluate(params))
  if not math.isfinite(loss):
    raise DivergenceError(f"centralized training ended with evaluation loss {loss}")
  log_metrics(steps, None, {"accuracy": accuracy, "loss": loss})
  progress.update(1, acc=accuracy)
  progress.log(f"centralized: {c.central_epochs} epochs ({steps} steps), test acc {accuracy:.4f}")


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and accuracy.png from the database alone."""
  final = db.final_values(c.experiment, "accuracy", config_hash=digest)
  per_seed = {m: [100.0 * final.get(m, {}).get(s, math.nan) for s in seeds(c)] for m in METHODS}
  per_seed = {m: [None if math.isnan(v) else v for v in vs] for m, vs in per_seed.items()}
  claim = claims_lib.claim(
      id="accuracy_vs_centralized",
      statement=(f"FedAvg over {c.num_clients} non-IID clients (Dirichlet alpha={c.alpha}) ends "
                 f"within {c.accuracy_gap_points} accuracy points of centralized training"),
      paper="FedAvg trains on non-IID client data to nearly the accuracy of centralized "
            "training (McMahan et al. 2017, arXiv 1602.05629)",
      metric="test_accuracy_points", better="higher", method="fedavg", baseline="centralized",
      margin=c.accuracy_gap_points, per_seed=per_seed)
  doc = claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                variant=c.variant, seeds=seeds(c), claims=[claim])
  series = db.series(c.experiment, "fedavg", "accuracy", config_hash=digest)
  report_lib.write_fedavg_report(out, c, series, per_seed, doc)
  return doc
