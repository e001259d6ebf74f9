"""scan_rounds: the evaluation grid, the initial evaluation, remainders; known answers on a
counting algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.loop import DivergenceError, eval_rounds, run_rounds, scan_rounds


class Counter:
  """state = (x, round); a round adds its inputs to x; metrics: the new x and a loss."""

  def init(self, params, key):
    del key
    return {"x": jnp.asarray(params, jnp.float32), "round": jnp.int32(0)}

  def round(self, state, inputs):
    new = {"x": state["x"] + inputs, "round": state["round"] + 1}
    return new, {"x": new["x"], "loss": new["x"] * 0.0}


def test_eval_rounds():
  assert eval_rounds(10, 4) == [4, 8, 10]
  assert eval_rounds(8, 4) == [4, 8]
  assert eval_rounds(3, 5) == [3]
  assert eval_rounds(2, 1, initial=True) == [0, 1, 2]
  with pytest.raises(ValueError, match="eval_every"):
    eval_rounds(3, 0)


@pytest.mark.parametrize("num_rounds, every, initial", [(10, 4, False), (8, 4, True),
                                                        (3, 5, True), (5, 1, False)])
def test_scan_rounds_evaluates_on_the_grid(num_rounds, every, initial):
  alg = Counter()
  state, metrics, evals = jax.jit(lambda s: scan_rounds(
      alg, s, 2.0, num_rounds=num_rounds, evaluate=lambda st: {"x": st["x"], "r": st["round"]},
      eval_every=every, evaluate_initial=initial))(alg.init(1.0, None))
  rounds = eval_rounds(num_rounds, every, initial=initial)
  np.testing.assert_array_equal(evals["r"], rounds)
  np.testing.assert_array_equal(evals["x"], [1.0 + 2.0 * r for r in rounds])
  np.testing.assert_array_equal(metrics["x"], 1.0 + 2.0 * np.arange(1, num_rounds + 1))
  assert int(state["round"]) == num_rounds


def test_scan_rounds_without_evaluation_and_under_vmap():
  alg = Counter()
  run = lambda x0, inc: scan_rounds(alg, alg.init(x0, None), inc, num_rounds=3)
  state, metrics, evals = jax.vmap(run)(jnp.array([0.0, 10.0]), jnp.array([1.0, -1.0]))
  assert evals == {}
  np.testing.assert_array_equal(state["x"], [3.0, 7.0])
  np.testing.assert_array_equal(metrics["x"], [[1, 2, 3], [9, 8, 7]])


def test_scan_rounds_ticks_every_n_evaluations_and_the_last_under_vmap(ticks):
  """10 rounds evaluated every 2 (5 evaluations), a tick every 2 evaluations and at the
  last: 2, 4, 5 of 5, once each for a batch of 3; the values are those without ticks."""
  from jaxfl import progress

  alg = Counter()
  run = lambda every: jax.jit(jax.vmap(lambda x0: scan_rounds(
      alg, alg.init(x0, None), 1.0, num_rounds=10, evaluate=lambda st: {"x": st["x"]},
      eval_every=2, progress_every=every)))
  x0 = jnp.arange(3.0)
  seen = []
  with progress.reporting(lambda done, total: seen.append((done, total))):
    ticked = jax.block_until_ready(run(2)(x0))
  assert seen == [(2, 5), (4, 5), (5, 5)]
  for a, b in zip(jax.tree.leaves(ticked), jax.tree.leaves(run(0)(x0)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_run_rounds_records_and_stops_on_a_non_finite_loss():
  alg = Counter()
  lines = []
  state, history = run_rounds(alg, alg.init(0.0, None), 1.0, num_rounds=5, eval_every=2,
                              evaluate=lambda st: {"x": st["x"]}, log=lines.append)
  assert [r["round"] for r in history] == [2, 4, 5]
  assert [r["x"] for r in history] == [2.0, 4.0, 5.0]
  assert history[0]["train_loss"] == 0.0 and "sim_time" not in history[0]
  assert lines[0].startswith("round    2/5 | train loss 0.0000 | x 2.0000 | wall")
  with pytest.raises(DivergenceError, match="training loss nan at round 1; no checkpoint"):
    run_rounds(alg, alg.init(0.0, None), jnp.float32(jnp.inf), num_rounds=2, log=None)
