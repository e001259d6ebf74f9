"""The one loop that drives every algorithm (:mod:`jaxfl.algorithms.base`).

Two drivers over the same ``round``:

* :func:`scan_rounds` is pure: ``num_rounds`` rounds as a ``lax.scan``, evaluating the
  state every ``eval_every`` rounds (and after the last). It jits, and vmaps over seeds and
  over traced hyperparameters, so a method's seeds x tuning grid is one program
  (purejaxrl's ``jit(vmap(train))``).
* :func:`run_rounds` is the impure shell for long runs: one jitted round at a time, a
  divergence check, evaluation, orbax checkpoints of the whole state, resume, JSON-lines
  metrics and progress lines. A run resumed from its checkpoint ends bit-identical to one
  that never stopped, because every key derives from the state's root key and counters.

Both take ``evaluate(state) -> {name: scalar}`` (a mapping or a NamedTuple).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl import progress
from jaxfl.checkpoint import Checkpointer


class DivergenceError(RuntimeError):
  """The training loss became NaN or Inf; the last good checkpoint is kept."""


def eval_rounds(num_rounds: int, eval_every: int, *, initial: bool = False) -> list[int]:
  """Rounds after which :func:`scan_rounds` evaluates: every ``eval_every``-th and the last
  (and round 0, the initial state, with ``initial``).

  >>> eval_rounds(10, 4), eval_rounds(3, 1, initial=True)
  ([4, 8, 10], [0, 1, 2, 3])
  """
  if not (isinstance(num_rounds, int) and num_rounds > 0):
    raise ValueError(f"num_rounds: expected a positive integer, got {num_rounds!r}")
  if not (isinstance(eval_every, int) and eval_every > 0):
    raise ValueError(f"eval_every: expected a positive integer, got {eval_every!r}")
  rounds = sorted({*range(eval_every, num_rounds + 1, eval_every), num_rounds})
  return [0, *rounds] if initial else rounds


def as_dict(values: Any) -> dict[str, Any]:
  """An evaluation's values as a dict (from a mapping or a NamedTuple)."""
  if isinstance(values, Mapping):
    return dict(values)
  if hasattr(values, "_asdict"):
    return dict(values._asdict())
  raise TypeError(f"evaluate must return a mapping or a NamedTuple of scalars, got "
                  f"{type(values).__name__}")


def scan_rounds(algorithm, state, inputs, *, num_rounds: int,
                evaluate: Callable[[Any], Any] | None = None, eval_every: int = 1,
                evaluate_initial: bool = False, progress_every: int = 0
                ) -> tuple[Any, Any, dict[str, jax.Array]]:
  """``num_rounds`` rounds of ``algorithm`` as one ``lax.scan``; pure (jit and vmap it).

  Args:
    algorithm: follows the protocol (``round(state, inputs) -> (state, metrics)``).
    state: the state to start from (``algorithm.init(params, key)``).
    inputs: what every round reads (client data...).
    num_rounds: rounds to run (static).
    evaluate: ``evaluate(state) -> {name: scalar}``, traced inside the scan.
    eval_every: evaluation interval in rounds (static); the last round is always evaluated.
    evaluate_initial: also evaluate ``state`` before the first round.
    progress_every: with an ``evaluate``, a :func:`jaxfl.progress.tick` every this many
      evaluations and at the last (static; 0: none). Ticks count the evaluations done.

  Returns:
    ``(state, metrics, evals)``: the final state, every round's metrics stacked
    ``[num_rounds, ...]``, and ``{name: [E]}`` at :func:`eval_rounds` (empty without
    ``evaluate``).
  """
  def advance(st, n: int):
    return jax.lax.scan(lambda s, _: algorithm.round(s, inputs), st, None, length=n)

  if evaluate is None:
    state, metrics = advance(state, num_rounds)
    return state, metrics, {}

  lengths = np.diff([0, *eval_rounds(num_rounds, eval_every)])
  total = len(lengths)

  def stretch(st, n: int, i):
    st, metrics = advance(st, n)
    evals = as_dict(evaluate(st))
    if progress_every:  # i is the evaluation's index: unbatched under vmap, so one report
      progress.tick_every(i, progress_every, total, after=evals)
    return st, (metrics, evals)

  full = int(np.sum(lengths == eval_every))  # the leading stretches of eval_every rounds
  parts = []
  if evaluate_initial:
    parts.append((None, jax.tree.map(lambda v: jnp.asarray(v)[None], as_dict(evaluate(state)))))
  if full:
    state, (metrics, evals) = jax.lax.scan(lambda st, i: stretch(st, eval_every, i), state,
                                           jnp.arange(full))
    metrics = jax.tree.map(lambda v: v.reshape(full * eval_every, *v.shape[2:]), metrics)
    parts.append((metrics, evals))
  for n in lengths[full:]:  # a last, shorter stretch when eval_every does not divide
    state, (metrics, evals) = stretch(state, int(n), total - 1)
    parts.append((metrics, jax.tree.map(lambda v: v[None], evals)))
  metrics = [m for m, _ in parts if m is not None]
  metrics = (metrics[0] if len(metrics) == 1 else
             jax.tree.map(lambda *xs: jnp.concatenate(xs), *metrics))
  evals = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[e for _, e in parts])
  return state, metrics, evals


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def _get(values, name: str):
  """``values.name`` or ``values[name]`` (``None`` when absent)."""
  if isinstance(values, Mapping):
    return values.get(name)
  return getattr(values, name, None)


def _last_good(checkpointer) -> str:
  last = checkpointer.latest_round() if checkpointer is not None else None
  return "no checkpoint kept" if last is None else f"last good checkpoint: round {last}"


def _resume_line(restored, start_round: int) -> str:
  """One line on where a run resumed: the round, and any unreadable checkpoint passed over
  (each moved aside), or a restart when none was readable."""
  skipped = "; ".join(f"the checkpoint of round {r} is unreadable ({why}), moved to {moved}"
                      for r, why, moved in restored.unreadable)
  if restored.round is None:
    return f"no readable checkpoint, starting from round {start_round}: {skipped}"
  return f"resumed at round {restored.round}" + (f": {skipped}" if skipped else "")


def _scalar(value) -> float:
  return float(np.mean(np.asarray(value)))


def run_rounds(algorithm, state, inputs, *, num_rounds: int,
               evaluate: Callable[[Any], Any] | None = None, eval_every: int = 10,
               checkpointer: Checkpointer | None = None, start_round: int = 0,
               metrics_path: str | os.PathLike | None = None,
               on_record: Callable[[dict], Any] | None = None,
               log: Callable[[str], Any] | None = print,
               log_prefix: str = "",
               log_resume: Callable[[str], Any] | None = None) -> tuple[Any, list[dict]]:
  """Run rounds until round ``num_rounds``, resuming from the newest readable checkpoint.

  Args:
    algorithm: follows the protocol; its ``jit_round`` is used when it has one (compiled
      once per algorithm object), else ``jax.jit(algorithm.round)``.
    state: the initial state (also the template a checkpoint is restored into).
    inputs: what every round reads.
    num_rounds: total rounds of the run (not additional rounds).
    evaluate: ``evaluate(state) -> {name: scalar}``, called every ``eval_every`` rounds
      and after the last; a non-finite ``loss`` among its values is a divergence.
    eval_every: evaluation interval in rounds.
    checkpointer: saves the state of each round on its interval (and the last round)
      once the following round has trained from it with a finite loss, so a saved state
      is always one that trains.
    start_round: the round ``state`` is at (when no checkpoint is restored).
    metrics_path: JSON-lines file of per-evaluation records; on resume, records past
      the restored round are dropped.
    on_record: called with each evaluation record (e.g. to write it to a database).
    log: progress printer (``None`` for silence).
    log_prefix: text before each progress line (e.g. the seed).
    log_resume: where the one line on resuming goes (default: ``log``): the round resumed
      at, and any checkpoint passed over as unreadable (a damaged one is moved aside and the
      run falls back to the one before), or that none was readable and the run restarts
      from ``start_round``.

  Returns:
    ``(state, history)`` where history holds one dict per evaluated round: ``round``,
    ``wall_time``, ``sim_time`` (when the state keeps a clock), ``train_loss`` and
    ``participants`` (when the round's metrics have them), and the evaluation's values.

  Raises:
    DivergenceError: a non-finite training loss, parameters or evaluation loss; the
      message names the last good checkpoint.
    jaxfl.progress.Interrupted: a stop was requested (:func:`jaxfl.progress.request_stop`,
      Ctrl-C in :func:`jaxfl.progress.stop_on_signals`); checked before every round. The
      checkpoints saved so far are kept, so running again resumes.
  """
  round_fn = getattr(algorithm, "jit_round", None) or jax.jit(algorithm.round)
  log_resume = log if log_resume is None else log_resume
  history: list[dict] = []
  done = start_round
  restored = checkpointer.restore_latest(state) if checkpointer is not None else None
  if restored is not None and restored.round is not None:
    done, state = restored.round, restored.state
    if metrics_path is not None and os.path.exists(metrics_path):
      with open(metrics_path) as f:
        history = [r for r in map(json.loads, f) if r["round"] <= done]
  if log_resume and restored is not None and (restored.round is not None or restored.unreadable):
    log_resume(log_prefix + _resume_line(restored, start_round))
  if metrics_path is not None:
    with open(metrics_path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in history)

  wall0 = time.perf_counter() - (history[-1]["wall_time"] if history else 0.0)
  pending = None  # (round, state) to save once the next round shows it trains finitely
  while done < num_rounds:
    if progress.stop_requested():  # Ctrl-C: the saved rounds are kept; a round not yet
      # saved (its successor has not shown it trains) is recomputed on resume.
      raise progress.Interrupted(f"stopped at round {done} of {num_rounds}; "
                                 f"{_last_good(checkpointer)}", progress.first_signal())
    state, metrics = round_fn(state, inputs)
    done += 1
    loss = _get(metrics, "loss")
    train_loss = None if loss is None else _scalar(loss)
    finite_loss = loss is None or bool(np.all(np.isfinite(np.asarray(loss))))
    if not (finite_loss and bool(_all_finite(getattr(state, "params", state)))):
      what = f"training loss {train_loss}" if not finite_loss else "non-finite parameters"
      raise DivergenceError(f"{what} at round {done}; {_last_good(checkpointer)}")
    # Finite parameters can still be garbage (one huge step overflows the logits); the round
    # that trains from a state with a finite loss is what shows the state is good.
    if pending is not None:
      checkpointer.save(*pending, force=True)
      pending = None
    if evaluate is not None and (done % eval_every == 0 or done == num_rounds):
      values = {k: _scalar(v) for k, v in as_dict(evaluate(state)).items()}
      if "loss" in values and not math.isfinite(values["loss"]):
        raise DivergenceError(f"evaluation loss {values['loss']} at round {done}; "
                              f"{_last_good(checkpointer)}")
      record = dict(round=done)
      if getattr(state, "sim_time", None) is not None:
        record["sim_time"] = float(state.sim_time)
      record["wall_time"] = time.perf_counter() - wall0
      if train_loss is not None:
        record["train_loss"] = train_loss
      if _get(metrics, "participants") is not None:
        record["participants"] = int(_get(metrics, "participants"))
      record.update(values)
      history.append(record)
      if on_record is not None:
        on_record(record)
      if metrics_path is not None:
        with open(metrics_path, "a") as f:
          f.write(json.dumps(record) + "\n")
      if log:
        shown = " | ".join(f"{k} {v:.4f}" for k, v in values.items())
        sim = f" | sim {record['sim_time']:8.1f} s" if "sim_time" in record else ""
        loss_text = "" if train_loss is None else f" | train loss {train_loss:.4f}"
        log(f"{log_prefix}round {done:4d}/{num_rounds}{loss_text} | {shown}{sim} | "
            f"wall {record['wall_time']:6.1f} s")
    if checkpointer is not None and (checkpointer.due(done) or done == num_rounds):
      pending = (done, state)
  # The last round has no successor: finite parameters (and evaluation, if any) must do.
  if pending is not None:
    checkpointer.save(*pending, force=True)
  jax.block_until_ready(state)
  return state, history
