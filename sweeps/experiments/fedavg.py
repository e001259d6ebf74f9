"""FedAvg on non-IID clients vs centralized training of the same model on the same data."""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl import data as jdata
from jaxfl import progress
from jaxfl.algorithms import SERVER_OPTIMIZERS, FedAvg, server_optimizer
from jaxfl.checkpoint import Checkpointer
from jaxfl.errors import check, check_number
from jaxfl.evaluation import eval_sets, make_evaluate
from jaxfl.local import ClientData, make_local_train, softmax_cross_entropy
from jaxfl.loop import DivergenceError, run_rounds
from jaxfl.models import SIZES, mlp_classifier
from jaxfl.runtime import make_client_axis, resolve_num_devices
from jaxfl.sim import DeviceProfiles, load_profiles, sample_profiles
from sweeps import claims as claims_lib
from sweeps import families as families_lib
from sweeps import report as report_lib
from sweeps.configs import common
from sweeps.families import SPLITS, seeds, tuning_seeds
from sweeps.sweep import RunSpec

PARTITIONS = ("dirichlet", "shards", "iid")
METHODS = ("fedavg", "centralized")
# Sub-keys of a seed's root key, so each consumer draws independent numbers.
KEY_MODEL, KEY_PROFILES, KEY_ROUNDS, KEY_CENTRAL = range(4)


def validate(c) -> None:
  """Check every field before anything runs or is written."""
  common.check(c)
  check(c.dataset in jdata.DATASETS, "dataset", f"one of {list(jdata.DATASETS)}", c.dataset)
  check(c.partition in PARTITIONS, "partition", f"one of {list(PARTITIONS)}", c.partition)
  for field in ("num_clients", "min_client_size", "batch_size", "max_local_steps",
                "clients_per_round", "num_rounds", "eval_every", "central_epochs",
                "checkpoint_every"):
    check_number(c[field], field, low=1, integer=True)
  for field in ("alpha", "compute_median", "uplink_median", "downlink_median", "local_epochs"):
    check_number(c[field], field, low=0, strict=True)
  for field in ("client_lr", "server_lr"):  # a step of 0 trains nothing: no claim to test
    check_number(c[field], field, low=0, strict=True)
  for field in ("profile_sigma", "accuracy_gap_points"):
    check_number(c[field], field, low=0)
  check_number(c.validation, "validation", low=0, strict=True)
  check(c.validation < 1, "validation", "a fraction in (0, 1)", c.validation)
  grid = tuple(c.client_lr_grid)
  check(len(grid) >= 1 and all(isinstance(v, float) and 0 < v < math.inf for v in grid),
        "client_lr_grid", "a tuple of positive learning rates", grid)
  check(c.model in SIZES, "model", f"one of {list(SIZES)}", c.model)
  check(c.server_optimizer in SERVER_OPTIMIZERS, "server_optimizer",
        f"one of {list(SERVER_OPTIMIZERS)}", c.server_optimizer)
  check(c.clients_per_round <= c.num_clients, "clients_per_round",
        f"between 1 and num_clients={c.num_clients}", c.clients_per_round)
  devices = resolve_num_devices(c.num_devices)
  check(c.clients_per_round % devices == 0, "clients_per_round",
        f"a multiple of the {devices} devices", c.clients_per_round)
  for field in ("availability_low", "availability_high"):
    check_number(c[field], field)
  check(0 < c.availability_low <= c.availability_high <= 1, "availability_low",
        "0 < availability_low <= availability_high <= 1", c.availability_low)


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
  ds = jdata.load_dataset(c.dataset, data_dir=c.data_dir or None, download=c.download,
                          validation=c.validation, seed=c.seed)
  check(c.num_clients <= len(ds.y_train), "num_clients",
        f"at most {len(ds.y_train)} (training samples of {c.dataset})", c.num_clients)
  # A client smaller than a batch repeats its samples in it (jaxfl.local); a batch larger
  # than the whole training split is a typo, not an experiment.
  check(c.batch_size <= len(ds.y_train), "batch_size",
        f"at most {len(ds.y_train)} (training samples of {c.dataset})", c.batch_size)
  profiles_table = load_profiles(c.profiles_file, c.num_clients) if c.profiles_file else None
  parts = {s: partition(c, ds.y_train, s) for s in seeds(c) + tuning_seeds(c)}
  return Context(ds, parts, profiles_table)


def run_specs(c) -> list[RunSpec]:
  return [RunSpec(m, s) for s in seeds(c) for m in METHODS]


def rounds(c, spec: RunSpec) -> int:
  return c.num_rounds if spec.method == "fedavg" else 1


def _model(c, ds, key):
  return mlp_classifier(c.model, ds.x_train.shape[1:], ds.num_classes,
                        jax.random.fold_in(key, KEY_MODEL))


def _profiles(c, ctx: Context, key) -> DeviceProfiles:
  if ctx.profiles_table is not None:
    return ctx.profiles_table
  return sample_profiles(
      jax.random.fold_in(key, KEY_PROFILES), c.num_clients, compute_median=c.compute_median,
      uplink_median=c.uplink_median, downlink_median=c.downlink_median, sigma=c.profile_sigma,
      availability_range=(c.availability_low, c.availability_high))


def _fedavg(c, loss_fn, profiles: DeviceProfiles, client_lr=None) -> FedAvg:
  lr = c.client_lr if client_lr is None else client_lr
  return FedAvg(loss_fn, optax.sgd(lr), server_optimizer(c.server_optimizer, c.server_lr),
                batch_size=c.batch_size, clients_per_round=c.clients_per_round, profiles=profiles,
                local_steps=None, local_epochs=c.local_epochs, max_local_steps=c.max_local_steps,
                axis=make_client_axis(c.num_devices))


def _clients(ds, parts: list[np.ndarray], n_max: int | None = None) -> ClientData:
  """Padded client data; ``n_max`` pads further (local training never reads the padding,
  and the visiting order of a client's samples does not depend on it)."""
  x, y, counts = jdata.partition.pad_clients(ds.x_train, ds.y_train, parts)
  extra = (n_max or x.shape[1]) - x.shape[1]
  x = np.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
  y = np.pad(y, [(0, 0), (0, extra)] + [(0, 0)] * (y.ndim - 2))
  return ClientData(x, y, counts)


def _central_steps(c, ds) -> int:
  return int(math.ceil(c.central_epochs * len(ds.y_train) / c.batch_size))


def _central_train(c, ds, loss_fn, params0, key, lr=None):
  """One "client" holding all the training data, with the same optimizer and batch size."""
  n, steps = len(ds.y_train), _central_steps(c, ds)
  lr = c.client_lr if lr is None else lr
  train = jax.jit(make_local_train(loss_fn, optax.sgd(lr), batch_size=c.batch_size,
                                   max_steps=steps, mask_steps=False,
                                   progress_every=max(1, steps // 50)))
  pooled = ClientData(jnp.asarray(ds.x_train), jnp.asarray(ds.y_train), jnp.int32(n))
  return train(params0, pooled, jnp.int32(steps), jax.random.fold_in(key, KEY_CENTRAL))[0]


def eval_rounds(c) -> list[int]:
  """Rounds with an evaluation: every ``eval_every``-th and the last."""
  return sorted({*range(c.eval_every, c.num_rounds + 1, c.eval_every), c.num_rounds})


def execute(c, spec: RunSpec, ctx: Context, run_dir: str, log_metrics, progress) -> None:
  """One run on the host loop (checkpoints, resume; the path for ``num_devices > 1``):
  FedAvg for ``num_rounds`` rounds, or the centralized baseline, at ``client_lr`` (this
  path is not tuned: tuning is the vmapped families' grid)."""
  key = jax.random.PRNGKey(spec.seed)
  ds = ctx.ds
  apply_fn, params0 = _model(c, ds, key)
  loss_fn = softmax_cross_entropy(apply_fn)
  evaluate = make_evaluate(apply_fn, ds.x_test, ds.y_test)
  if spec.method == "centralized":
    params = _central_train(c, ds, loss_fn, params0, key)
    accuracy, loss = (float(v) for v in evaluate(params))
    if not math.isfinite(loss):
      raise DivergenceError(f"centralized training ended with evaluation loss {loss}")
    log_metrics(_central_steps(c, ds), None,
                {"accuracy": accuracy, "loss": loss, "client_lr": c.client_lr})
    progress.update(1, acc=accuracy)
    progress.log(f"centralized: {c.central_epochs} epochs ({_central_steps(c, ds)} steps), "
                 f"test acc {accuracy:.4f}")
    return

  clients = jax.tree.map(jnp.asarray, _clients(ds, ctx.parts[spec.seed]))
  alg = _fedavg(c, loss_fn, _profiles(c, ctx, key))
  state = alg.init(params0, jax.random.fold_in(key, KEY_ROUNDS))

  def record(r):
    values = {k: r[k] for k in ("accuracy", "loss", "train_loss", "participants")}
    if r["round"] == c.num_rounds:  # the run's hyperparameter, as the families log it
      values["client_lr"] = c.client_lr
    log_metrics(r["round"], r["sim_time"], values)
    progress.update(r["round"], sim_time=r["sim_time"], acc=r["accuracy"])

  os.makedirs(run_dir, exist_ok=True)
  with Checkpointer(os.path.join(run_dir, "checkpoints"), every=c.checkpoint_every) as ckpt:
    # Progress goes to the bars (record); only the line on resuming (the round, or an
    # unreadable checkpoint passed over) is written out.
    run_rounds(alg, state, clients, num_rounds=c.num_rounds,
               evaluate=lambda st: evaluate(st.params),
               eval_every=c.eval_every, checkpointer=ckpt, on_record=record, log=None,
               log_prefix=f"{spec.method} seed {spec.seed}: ", log_resume=progress.log)


def vmappable(c) -> bool:
  """The families run as vmapped calls only for the client axis on one device."""
  return resolve_num_devices(c.num_devices) == 1


def families(c, ctx: Context) -> list[families_lib.Family]:
  """FedAvg and the centralized baseline, each one pure function of the seed's key.

  FedAvg's rounds are a ``lax.scan`` (an inner scan of ``eval_every`` rounds, then an
  evaluation) computing :func:`execute`'s rows: the same keys, data, profiles and
  evaluation rounds. Both methods get the same tuning budget: the client learning rate
  over ``client_lr_grid``, chosen by the final validation accuracy on the tuning seeds;
  reported runs evaluate on the test split. FedAvg's server step is its definition's
  (plain averaging, ``server_lr``), not tuned.
  """
  ds = ctx.ds
  sets = eval_sets(ds)
  grid = [{"client_lr": float(v)} for v in c.client_lr_grid]
  select = families_lib.lowest("-accuracy", "loss")

  def central(key, evalset, hparams):
    apply_fn, params0 = _model(c, ds, key)
    params = _central_train(c, ds, softmax_cross_entropy(apply_fn), params0, key,
                            hparams["client_lr"])
    accuracy, loss = make_evaluate(apply_fn, evalset.x, evalset.y, mask=evalset.mask)(params)
    return jnp.full([1], jnp.nan), {"accuracy": accuracy[None], "loss": loss[None]}

  n_max = max(len(p) for parts in ctx.parts.values() for p in parts)
  steps = eval_rounds(c)
  lengths = np.diff([0, *steps])  # rounds before each evaluation

  def fedavg(key, inputs, hparams):
    clients, evalset = inputs
    apply_fn, params0 = _model(c, ds, key)
    evaluate = make_evaluate(apply_fn, evalset.x, evalset.y, mask=evalset.mask)
    alg = _fedavg(c, softmax_cross_entropy(apply_fn), _profiles(c, ctx, key),
                  hparams["client_lr"])

    def train_then_evaluate(state, num_rounds: int, i):
      state, m = jax.lax.scan(lambda st, _: alg.round(st, clients), state, None,
                              length=num_rounds)
      accuracy, loss = evaluate(state.params)
      progress.tick(i + 1, len(steps), after=loss)  # i: the evaluation's index, not batched
      return state, (state.sim_time, accuracy, loss, m.loss[-1],
                     m.participants[-1].astype(jnp.float32))

    state = alg.init(params0, jax.random.fold_in(key, KEY_ROUNDS))
    rows = []
    full = int(np.sum(lengths == c.eval_every))  # the leading evaluations every eval_every
    if full:
      state, out = jax.lax.scan(lambda st, i: train_then_evaluate(st, c.eval_every, i), state,
                                jnp.arange(full))
      rows.append(out)
    for n in lengths[full:]:  # a last, shorter stretch when eval_every does not divide
      state, out = train_then_evaluate(state, int(n), len(steps) - 1)
      rows.append(jax.tree.map(lambda v: v[None], out))
    sim_time, accuracy, loss, train_loss, participants = (
        jnp.concatenate(parts) for parts in zip(*rows))
    return sim_time, {"accuracy": accuracy, "loss": loss, "train_loss": train_loss,
                      "participants": participants}

  return [
      families_lib.Family(
          name="fedavg", methods=("fedavg",), simulate=fedavg, steps=steps, grid=grid,
          select=select,
          inputs=lambda m, seed, stage: (_clients(ds, ctx.parts[seed], n_max),
                                         sets[SPLITS[stage]])),
      families_lib.Family(name="centralized", methods=("centralized",), simulate=central,
                          steps=[_central_steps(c, ds)], grid=grid, select=select,
                          inputs=lambda m, seed, stage: sets[SPLITS[stage]]),
  ]


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and accuracy.png from the database alone."""
  final = db.final_values(c.experiment, "accuracy", config_hash=digest)
  per_seed = {m: [100.0 * final.get(m, {}).get(s, math.nan) for s in seeds(c)] for m in METHODS}
  per_seed = {m: [None if math.isnan(v) else v for v in vs] for m, vs in per_seed.items()}
  claim = claims_lib.claim(
      id="accuracy_vs_centralized", kind="reproduction",
      statement=(f"FedAvg over {c.num_clients} non-IID clients (Dirichlet alpha={c.alpha}) ends "
                 f"within {c.accuracy_gap_points} accuracy points of centralized training"),
      paper="FedAvg trains on non-IID client data to nearly the accuracy of centralized "
            "training (McMahan et al. 2017, arXiv 1602.05629)",
      metric="test_accuracy_points", better="higher", method="fedavg", baseline="centralized",
      margin=c.accuracy_gap_points, per_seed=per_seed)
  doc = claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                variant=c.variant, seeds=seeds(c), claims=[claim])
  series = db.series(c.experiment, "fedavg", "accuracy", config_hash=digest)
  with report_lib.figure(os.path.join(out, "accuracy.png"), 1, 2, size=(11, 4),
                         sharey=True, legend=False) as axes:
    for ax, x in zip(axes, ("step", "time"), strict=True):
      report_lib.seed_band(ax, series, x=x, scale=100.0, color="C0",
                           label=f"fedavg (mean, band: min-max over {len(series)} seeds)")
      report_lib.reference_band(ax, per_seed["centralized"], color="C1",
                                label="centralized (mean)")
    axes[0].set(xlabel="round", ylabel="test accuracy (%)",
                title=f"FedAvg, {c.num_clients} clients, Dirichlet α={c.alpha}")
    axes[1].set(xlabel="simulated time (s)")
    axes[0].legend(fontsize=8)  # one legend: both panels draw the same lines
  sim_final = [t[-1] for _, t, _ in series.values() if t]
  grid = [{"client_lr": v} for v in c.client_lr_grid]
  report_lib.write_markdown(out, [
      f"# fedavg ({c.variant})", report_lib.claims_table(doc),
      report_lib.method_table(per_seed, "test accuracy (%)"),
      report_lib.tuning_table(db, c.experiment, digest, {m: grid for m in METHODS},
                              f"final validation accuracy, mean over {c.num_tuning_seeds} "
                              "tuning seeds"),
      "FedAvg simulated time to the last round (s): " + report_lib.mean_std(sim_final),
      report_lib.image("accuracy.png"),
      f"Data {c.dataset}, {c.num_clients} clients ({c.partition}, α={c.alpha}), "
      f"{c.clients_per_round} per round, {c.local_epochs} local epochs, batch "
      f"{c.batch_size}, server {c.server_optimizer} "
      f"(lr {c.server_lr}), {c.num_rounds} rounds; centralized {c.central_epochs} epochs. "
      f"{c.validation:.0%} of the training set held out for selection; accuracy on the "
      "test split."])
  return doc
