"""The driver of a federated run: rounds, evaluation, checkpoints, progress.

The round itself is pure and jitted (``algorithm.jit_round``); this loop is the
impure shell around it: it checks for divergence, evaluates every few rounds, saves
checkpoints, appends metrics to a JSON-lines file and prints progress.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxfl.checkpoint import Checkpointer


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _last_good(checkpointer) -> str:
  last = checkpointer.latest_round() if checkpointer is not None else None
  return "no checkpoint kept" if last is None else f"last good checkpoint: round {last}"


class DivergenceError(RuntimeError):
  """The training loss became NaN or Inf; the last good checkpoint is kept."""


def run_rounds(algorithm, state, clients, *, num_rounds: int, evaluate: Callable | None = None,
               eval_every: int = 10, checkpointer: Checkpointer | None = None,
               metrics_path: str | os.PathLike | None = None,
               on_record: Callable[[dict], Any] | None = None,
               log: Callable[[str], Any] | None = print, log_prefix: str = "") -> tuple[Any, list[dict]]:
  """Run rounds until ``state.round == num_rounds``, resuming from a checkpoint if any.

  Args:
    algorithm: has ``jit_round(state, clients) -> (state, metrics)`` with
      ``metrics.loss``, ``metrics.round_time`` and ``metrics.participants``.
    state: the initial state (also the template a checkpoint is restored into).
    clients: the padded client data passed to every round.
    num_rounds: total rounds of the run (not additional rounds).
    evaluate: ``evaluate(params) -> (accuracy, loss)``, called every ``eval_every``
      rounds and after the last.
    eval_every: evaluation interval in rounds.
    checkpointer: saves the state of each round on its interval (and the last round)
      once the following round has trained from it with a finite loss, so a saved state
      is always one that trains.
    metrics_path: JSON-lines file of per-evaluation records; on resume, records past
      the restored round are dropped.
    on_record: called with each evaluation record (e.g. to write it to a database).
    log: progress printer (``None`` for silence).
    log_prefix: text before each progress line (e.g. the seed).

  Returns:
    ``(state, history)`` where history holds one dict per evaluated round:
    ``round, sim_time, wall_time, train_loss, participants, accuracy, loss``.
  """
  history: list[dict] = []
  if checkpointer is not None and checkpointer.latest_round() is not None:
    state = checkpointer.restore(state)
    if metrics_path is not None and os.path.exists(metrics_path):
      with open(metrics_path) as f:
        history = [r for r in map(json.loads, f) if r["round"] <= int(state.round)]
    if log:
      log(f"{log_prefix}resumed at round {int(state.round)}")
  if metrics_path is not None:
    with open(metrics_path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in history)

  wall0 = time.perf_counter() - (history[-1]["wall_time"] if history else 0.0)
  pending = None  # (round, state) to save once the next round shows it trains finitely
  for r in range(int(state.round), num_rounds):
    state, metrics = algorithm.jit_round(state, clients)
    done = r + 1
    train_loss = float(metrics.loss)
    participants = int(metrics.participants)
    finite_params = bool(_all_finite(state.params))
    if not (math.isfinite(train_loss) and finite_params):
      what = (f"training loss {train_loss}" if not math.isfinite(train_loss) else
              "non-finite parameters")
      raise DivergenceError(f"{what} at round {done}; {_last_good(checkpointer)}")
    # Finite parameters can still be garbage (one huge step overflows the logits); the round
    # that trains from a state with a finite loss is what shows the state is good.
    if pending is not None:
      checkpointer.save(*pending, force=True)
      pending = None
    if evaluate is not None and (done % eval_every == 0 or done == num_rounds):
      accuracy, loss = (float(v) for v in evaluate(state.params))
      if not math.isfinite(loss):
        raise DivergenceError(f"evaluation loss {loss} at round {done}; "
                              f"{_last_good(checkpointer)}")
      record = dict(round=done, sim_time=float(state.sim_time),
                    wall_time=time.perf_counter() - wall0, train_loss=train_loss,
                    participants=participants, accuracy=accuracy, loss=loss)
      history.append(record)
      if on_record is not None:
        on_record(record)
      if metrics_path is not None:
        with open(metrics_path, "a") as f:
          f.write(json.dumps(record) + "\n")
      if log:
        log(f"{log_prefix}round {done:4d}/{num_rounds} | train loss {train_loss:.4f} | "
            f"test acc {accuracy:.4f} | sim {record['sim_time']:8.1f} s | "
            f"wall {record['wall_time']:6.1f} s")
    if checkpointer is not None and (checkpointer.due(done) or done == num_rounds):
      pending = (done, state)
  # The last round has no successor: finite parameters (and evaluation, if any) must do.
  if pending is not None:
    checkpointer.save(*pending, force=True)
  jax.block_until_ready(state)
  return state, history
