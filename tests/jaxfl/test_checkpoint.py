"""Checkpoints: exact round trips, bit-identical resume, divergence keeps the last good round."""

import json
import logging
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.algorithms import FedAvg, ServerState, server_optimizer
from jaxfl.checkpoint import Checkpointer
from jaxfl.evaluation import make_evaluate
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.loop import DivergenceError, run_rounds
from jaxfl.models import MLP, functional
from jaxfl.sim import sample_profiles
from jaxfl.transforms import weighted_mean

NUM_CLIENTS = 8
RECORD_KEYS = ("round", "sim_time", "train_loss", "participants", "accuracy", "loss")


def tiny_model(seed=0):
  """MLP(64, (8,), 10) with numpy-drawn parameters (skips NNX's ~4 s of eager init compiles)."""
  apply_fn, abstract = functional(nnx.eval_shape(lambda: MLP(64, (8,), 10, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  return apply_fn, jax.tree.map(
      lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), abstract)


def synthetic_clients(seed=0, n_max=16):
  rng = np.random.default_rng(seed)
  counts = rng.integers(4, n_max + 1, NUM_CLIENTS)
  x = rng.normal(size=(NUM_CLIENTS, n_max, 64)).astype(np.float32)
  y = rng.integers(0, 10, (NUM_CLIENTS, n_max)).astype(np.int32)
  for k, n in enumerate(counts):
    x[k, n:], y[k, n:] = 0, 0
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts, jnp.int32))


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()  # bits, not values: -0.0 != 0.0 here


APPLY_FN, PARAMS = tiny_model()


@pytest.fixture(scope="module")
def setup():
  """One FedAdam algorithm (compiled once for the module), client data and an evaluator."""
  # Heterogeneous profiles with availability < 1, so sim_time and participants vary per round.
  profiles = sample_profiles(jax.random.PRNGKey(11), NUM_CLIENTS, sigma=0.7,
                             availability_range=(0.4, 1.0))
  alg = FedAvg(softmax_cross_entropy(APPLY_FN), optax.sgd(0.1), server_optimizer("fedadam", 0.03),
               batch_size=4, clients_per_round=4, local_steps=2, profiles=profiles)
  rng = np.random.default_rng(5)
  on_params = make_evaluate(APPLY_FN, rng.normal(size=(40, 64)).astype(np.float32),
                            rng.integers(0, 10, 40).astype(np.int32), batch_size=16)
  return alg, synthetic_clients(), lambda state: on_params(state.params)


def initial_state(alg, key):
  """``alg.init`` committed to the device, like the arrays orbax restores.

  jit's cache tells committed from uncommitted arguments: without this the first round after a
  restore compiles ``jit_round`` a second time (~3 s here) for the same shapes.
  """
  return jax.device_put(alg.init(PARAMS, key), jax.devices()[0])


class CountingRounds:
  """Delegates ``jit_round`` and counts how many rounds were actually run."""

  def __init__(self, algorithm):
    self.algorithm, self.calls = algorithm, 0

  def jit_round(self, state, clients):
    self.calls += 1
    return self.algorithm.jit_round(state, clients)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_restore_empty_dir_returns_none(tmp_path):
  with Checkpointer(tmp_path / "ckpt", every=1) as ckpt:
    assert ckpt.latest_round() is None
    assert ckpt.restore({"w": jnp.zeros([2])}) is None


def test_round_trip_of_server_state_with_adam(tmp_path):
  tx = server_optimizer("fedadam", 0.01)
  agg = weighted_mean("clients")
  rng = np.random.default_rng(0)
  update = jax.jit(lambda g, s: tx.update(g, s, PARAMS)[1])  # one compile, not one per op
  opt_state = tx.init(PARAMS)
  for _ in range(2):  # two updates: nonzero first and second moments, count 2
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), PARAMS)
    opt_state = update(grads, opt_state)
  state = ServerState(params=PARAMS, opt_state=opt_state,
                      agg_state=agg.init(PARAMS)._replace(count=jnp.int32(7)),
                      round=jnp.int32(7), sim_time=jnp.float32(123.25),
                      key=jax.random.PRNGKey(42))
  with Checkpointer(tmp_path, every=1) as ckpt:
    assert ckpt.save(7, state)
  # A fresh Checkpointer (as after a restart) restores into an all-zero template.
  template = ServerState(jax.tree.map(jnp.zeros_like, PARAMS), tx.init(PARAMS), agg.init(PARAMS),
                         jnp.int32(0), jnp.float32(0.0), jax.random.PRNGKey(0))
  with Checkpointer(tmp_path, every=1) as ckpt:
    assert ckpt.latest_round() == 7
    restored = ckpt.restore(template)
  assert type(restored) is ServerState
  assert type(restored.opt_state[0]) is type(opt_state[0])  # ScaleByAdamState
  assert int(restored.opt_state[0].count) == 2
  assert restored.key.dtype == jnp.uint32 and restored.round.dtype == jnp.int32
  assert_bit_identical(restored, state)


def small_state(r):
  return {"w": jnp.full([3], r, jnp.float32), "r": jnp.int32(r)}


def test_save_interval_force_and_restore_by_round(tmp_path):
  with Checkpointer(tmp_path, every=2, max_to_keep=3) as ckpt:
    saved = [ckpt.save(r, small_state(r), force=r == 7) for r in range(2, 8)]
    assert saved == [True, False, True, False, True, True]  # on the interval, or forced
    assert ckpt.latest_round() == 7
    assert_bit_identical(ckpt.restore(small_state(0), round_=6), small_state(6))
    assert_bit_identical(ckpt.restore(small_state(0)), small_state(7))


def test_first_save_off_interval_is_ignored(tmp_path):
  with Checkpointer(tmp_path, every=2) as ckpt:
    assert ckpt.save(1, small_state(1)) is False
    assert ckpt.latest_round() is None


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path, setup):
  alg, clients, evaluate = setup
  key = jax.random.PRNGKey(3)
  kwargs = dict(evaluate=evaluate, eval_every=1, log=None)

  with Checkpointer(tmp_path / "a", every=2) as ckpt:
    full, full_history = run_rounds(alg, initial_state(alg, key), clients, num_rounds=6,
                                    checkpointer=ckpt, metrics_path=tmp_path / "a.jsonl", **kwargs)
  # Interrupted after round 3 (run_rounds force-saves its last round) ...
  with Checkpointer(tmp_path / "b", every=2) as ckpt:
    part, _ = run_rounds(alg, initial_state(alg, key), clients, num_rounds=3, checkpointer=ckpt,
                         metrics_path=tmp_path / "b.jsonl", **kwargs)
    assert ckpt.latest_round() == 3
  assert int(part.round) == 3
  # ... then restarted from a fresh initial state: it resumes at round 3 and runs 3 more.
  counting, lines = CountingRounds(alg), []
  with Checkpointer(tmp_path / "b", every=2) as ckpt:
    resumed, resumed_history = run_rounds(
        counting, initial_state(alg, key), clients, num_rounds=6, checkpointer=ckpt,
        metrics_path=tmp_path / "b.jsonl", **{**kwargs, "log": lines.append})
    assert ckpt.latest_round() == 6
  assert counting.calls == 3
  assert lines[0] == "resumed at round 3"

  assert int(full.round) == 6 and float(full.sim_time) > 0
  assert_bit_identical(resumed, full)  # params, opt state, agg state, round, sim_time, key
  # Histories agree except for wall time, in memory and on disk.
  assert [r["round"] for r in full_history] == [1, 2, 3, 4, 5, 6]
  strip = lambda h: [{k: r[k] for k in RECORD_KEYS} for r in h]
  assert strip(resumed_history) == strip(full_history)
  assert strip(read_jsonl(tmp_path / "b.jsonl")) == strip(read_jsonl(tmp_path / "a.jsonl"))
  assert strip(read_jsonl(tmp_path / "a.jsonl")) == strip(full_history)
  assert full_history[-1]["sim_time"] == float(full.sim_time)
  assert len({r["participants"] for r in full_history}) > 1  # availability < 1 did bite


def test_divergence_keeps_last_good_checkpoint(tmp_path, setup):
  alg, clients, evaluate = setup
  key = jax.random.PRNGKey(4)
  poisoned = clients._replace(x=jnp.full_like(clients.x, jnp.nan))
  with Checkpointer(tmp_path / "ckpt", every=1) as ckpt:
    good, _ = run_rounds(alg, initial_state(alg, key), clients, num_rounds=2, checkpointer=ckpt,
                         evaluate=evaluate, eval_every=1, metrics_path=tmp_path / "m.jsonl",
                         log=None)
    # Resume at round 2 with NaN inputs: round 3's training loss is NaN.
    with pytest.raises(DivergenceError, match="at round 3; last good checkpoint: round 2"):
      run_rounds(alg, initial_state(alg, key), poisoned, num_rounds=6, checkpointer=ckpt,
                 evaluate=evaluate, eval_every=1, metrics_path=tmp_path / "m.jsonl", log=None)
    assert ckpt.latest_round() == 2  # the NaN round was not saved
    last = ckpt.restore(initial_state(alg, key))
  assert_bit_identical(last, good)
  assert [r["round"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1, 2]


def test_divergence_checkpoint_is_usable(tmp_path, setup):
  _, clients, evaluate = setup
  # One local step at learning rate 1e30: round 1's loss is the loss at the initial parameters
  # (finite), but its update sends the parameters to ~1e29; round 2's loss is NaN.
  alg = FedAvg(softmax_cross_entropy(APPLY_FN), optax.sgd(1e30), server_optimizer("fedavg"),
               batch_size=4, clients_per_round=4, local_steps=1, profiles=setup[0].profiles)
  template = alg.init(PARAMS, jax.random.PRNGKey(4))
  with Checkpointer(tmp_path, every=1) as ckpt:
    with pytest.raises(DivergenceError) as e:
      run_rounds(alg, template, clients, num_rounds=4, checkpointer=ckpt, log=None)
    latest = ckpt.latest_round()
    last_good = ckpt.restore(template) if latest is not None else template
  # The checkpoint the error names as good must give a finite loss when evaluated.
  loss = float(evaluate(last_good).loss)
  assert math.isfinite(loss), f"{e.value}; evaluated loss of round {latest}: {loss}"


# -- damaged checkpoints: resume falls back to the newest readable one (issue 16, faults)


class Adder:
  """state = {"w": f32[400], "round"}: 1.6 kB of values, over orbax's 1 kB inline limit, so
  they get a value file of their own (the one a garbled byte changes silently)."""

  def round(self, state, inputs):
    new = {"w": state["w"] + inputs, "round": state["round"] + 1}
    return new, {"loss": jnp.float32(0.0)}


ADDER = Adder()
ADDER.jit_round = jax.jit(ADDER.round)
W0 = np.random.default_rng(1).normal(size=400).astype(np.float32)
STEP = jnp.asarray(np.random.default_rng(2).normal(size=400).astype(np.float32))


def adder_state():
  return jax.device_put({"w": jnp.asarray(W0), "round": jnp.int32(0)}, jax.devices()[0])


def _flip(path, at=None):
  data = bytearray(path.read_bytes())
  at = len(data) // 2 if at is None else at
  data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
  path.write_bytes(bytes(data))


def damage(step_dir, how):
  """Damage one saved round as a crash or a bad copy would."""
  files = sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  values = files[-1]  # the 1.6 kB value file; metadata and index nodes are smaller
  if how == "truncated values":
    values.write_bytes(values.read_bytes()[:values.stat().st_size // 2])
  elif how == "garbled values":  # orbax itself restores these without a word
    _flip(values)
  elif how == "truncated metadata":
    meta = step_dir / "default" / "_METADATA"
    meta.write_bytes(meta.read_bytes()[:50])
  elif how == "garbled index":
    _flip(step_dir / "default" / "manifest.ocdbt")
  elif how == "emptied":
    for p in files:
      p.write_bytes(b"")
  else:
    raise ValueError(how)


def adder_rounds(directory, num_rounds, log=None):
  with Checkpointer(directory, every=2) as ckpt:
    state, _ = run_rounds(ADDER, adder_state(), STEP, num_rounds=num_rounds, checkpointer=ckpt,
                          log=log)
    return state, ckpt.latest_round()


@pytest.fixture(scope="module")
def adder_run(tmp_path_factory):
  """A run's checkpoints of rounds 2 and 4 (each test damages a copy), and the states of
  an uninterrupted run after 4 and 6 rounds."""
  folder = tmp_path_factory.mktemp("adder") / "ckpt"
  adder_rounds(folder, 4)
  states = {n: run_rounds(ADDER, adder_state(), STEP, num_rounds=n, log=None)[0] for n in (4, 6)}
  return folder, states


# A failed orbax read leaves coroutines whose tracebacks Python prints whenever it collects
# them; jaxfl.checkpoint filters them out of sys.unraisablehook. One that got through fails:
NO_LEFTOVER_TRACEBACKS = pytest.mark.filterwarnings(
    "error::pytest.PytestUnraisableExceptionWarning")


def copy_of(adder_run, tmp_path):
  shutil.copytree(adder_run[0], tmp_path / "ckpt")
  return tmp_path / "ckpt"


@NO_LEFTOVER_TRACEBACKS
@pytest.mark.parametrize("how", ["truncated values", "garbled values", "truncated metadata",
                                 "garbled index", "emptied"])
def test_resume_falls_back_past_a_damaged_latest_checkpoint(tmp_path, caplog, adder_run, how):
  folder, states = copy_of(adder_run, tmp_path), adder_run[1]
  damage(folder / "4", how)
  lines = []
  caplog.clear()
  resumed, latest = adder_rounds(folder, 6, log=lines.append)
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
  moved = folder / "4.unreadable"
  assert lines[0].startswith("resumed at round 2: the checkpoint of round 4 is unreadable ("), lines
  assert lines[0].endswith(f"moved to {moved}"), lines
  assert_bit_identical(resumed, states[6])  # rounds 3-6 recomputed from round 2
  assert moved.is_dir() and latest == 6
  with Checkpointer(folder, every=2) as ckpt:  # round 4 saved again, readable
    assert_bit_identical(ckpt.restore(adder_state(), round_=4), states[4])


@NO_LEFTOVER_TRACEBACKS
def test_no_readable_checkpoint_restarts_from_scratch_with_one_line(tmp_path, adder_run):
  folder, states = copy_of(adder_run, tmp_path), adder_run[1]
  damage(folder / "4", "garbled values")
  damage(folder / "2", "truncated values")
  lines = []
  restarted, latest = adder_rounds(folder, 4, log=lines.append)
  assert len(lines) == 1 and lines[0].startswith(
      "no readable checkpoint, starting from round 0: the checkpoint of round 4 is unreadable ("
  ), lines
  assert "the checkpoint of round 2 is unreadable (" in lines[0]
  assert_bit_identical(restarted, states[4])
  assert latest == 4
  assert {p.name for p in folder.iterdir()} >= {"2", "4", "2.unreadable", "4.unreadable"}


@NO_LEFTOVER_TRACEBACKS
def test_explicit_round_with_garbled_values_is_refused_not_restored(tmp_path):
  from jaxfl import checkpoint

  with Checkpointer(tmp_path, every=1) as ckpt:
    ckpt.save(1, {"w": jnp.asarray(W0)})
  damage(tmp_path / "1", "garbled values")
  with Checkpointer(tmp_path, every=1) as ckpt:
    # Orbax alone restores these bytes as different numbers, without a word.
    with pytest.raises(RuntimeError, match="round 1 is unreadable .*do not match the checksum"
                       ) as e:
      ckpt.restore({"w": jnp.zeros(400)}, round_=1)
    assert isinstance(e.value, checkpoint.UnreadableCheckpoint)
    assert (tmp_path / "1").is_dir()  # an explicit round is reported, not moved


def test_a_checkpoint_of_another_state_is_not_taken_for_a_damaged_one(tmp_path):
  """A guard for the fallback: a state whose shapes changed (the code changed) raises as it
  did and keeps its checkpoint (this one passes on the code before the fallback as well)."""
  with Checkpointer(tmp_path, every=1) as ckpt:
    ckpt.save(1, {"w": jnp.zeros(3)})
  with Checkpointer(tmp_path, every=1) as ckpt, pytest.raises(ValueError):
    ckpt.restore({"w": jnp.zeros(4)})
  assert (tmp_path / "1").is_dir() and not (tmp_path / "1.unreadable").exists()


def test_a_stop_request_ends_run_rounds_before_its_next_round_keeping_its_checkpoints(
    tmp_path, adder_run):
  """Ctrl-C (a stop request) during round 5 of 6: Interrupted before round 6, the
  checkpoint of round 4 kept; running again resumes there and ends bit-identical."""
  from jaxfl import progress

  folder, states = tmp_path / "ckpt", adder_run[1]

  def stop_in_round_5(record):
    if record["round"] == 5:
      progress.request_stop()

  try:
    with Checkpointer(folder, every=2) as ckpt, pytest.raises(
        progress.Interrupted, match="stopped at round 5 of 6; last good checkpoint: round 4"):
      run_rounds(ADDER, adder_state(), STEP, num_rounds=6, checkpointer=ckpt, log=None,
                 evaluate=lambda s: {"w0": s["w"][0]}, eval_every=1, on_record=stop_in_round_5)
  finally:
    progress.clear_stop()
  lines = []
  resumed, latest = adder_rounds(folder, 6, log=lines.append)
  assert lines == ["resumed at round 4"] and latest == 6
  assert_bit_identical(resumed, states[6])
