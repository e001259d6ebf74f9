"""Evaluation: a classifier on a held-out set, and time to a target that holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class EvalMetrics(NamedTuple):
  accuracy: jax.Array
  loss: jax.Array


def make_evaluate(apply_fn: Callable, x, y, *, mask=None, batch_size: int = 2048) -> Callable:
  """A jitted ``evaluate(params) -> EvalMetrics`` over ``(x, y)``.

  The set is split into equal batches (the remainder padded and masked) and scanned,
  so memory stays bounded for large test sets. ``mask`` (``[N]``, 1 for a real sample,
  0 for padding) averages over the real samples only, so a validation and a test split
  padded to one length (:func:`eval_sets`) run through one compiled program; ``x``,
  ``y`` and ``mask`` may be traced.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  n = x.shape[0]
  mask = jnp.ones([n], jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  xb = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  xb = xb.reshape(num_batches, batch_size, *x.shape[1:])
  yb = jnp.pad(y, (0, pad)).reshape(num_batches, batch_size)
  mb = jnp.pad(mask, (0, pad)).reshape(num_batches, batch_size)

  @jax.jit
  def _evaluate(params, xb, yb, mb) -> EvalMetrics:
    def body(totals, batch):
      xi, yi, mi = batch
      logits = apply_fn(params, xi)
      correct = jnp.sum((jnp.argmax(logits, -1) == yi) * mi)
      loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, yi) * mi)
      return (totals[0] + correct, totals[1] + loss), None

    (correct, loss), _ = jax.lax.scan(body, (0.0, 0.0), (xb, yb, mb))
    count = jnp.sum(mb)
    return EvalMetrics(correct / count, loss / count)

  def evaluate(params) -> EvalMetrics:
    # The set is an argument, not a closure: closed-over arrays compile in as constants.
    return _evaluate(params, xb, yb, mb)

  return evaluate


class EvalSet(NamedTuple):
  """An evaluation split padded to a common length: ``mask`` is 1 on its real samples."""

  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray


def eval_sets(ds) -> dict[str, EvalSet]:
  """A dataset's ``"validation"`` and ``"test"`` splits (:class:`jaxfl.data.Dataset`,
  loaded with a validation fraction) padded to one length, for :func:`make_evaluate`'s
  ``mask``: tuning runs evaluate on the first, reported runs on the second, with one
  compiled program.

  Raises:
    ValueError: the dataset has no validation split.
  """
  if ds.x_val is None:
    raise ValueError(f"{ds.name} has no validation split: load it with validation > 0")
  n = max(len(ds.y_val), len(ds.y_test))

  def padded(x, y):
    extra = n - len(y)
    return EvalSet(np.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1)), np.pad(y, (0, extra)),
                   (np.arange(n) < len(y)).astype(np.float32))

  return {"validation": padded(ds.x_val, ds.y_val), "test": padded(ds.x_test, ds.y_test)}


def time_to_held_target(times, values, target, *, window: int = 3,
                        higher: bool = True) -> jax.Array:
  """The first time from which a curve meets ``target`` and keeps meeting it.

  ``values[i]`` is the metric at ``times[i]``, on an evaluation grid common to the methods
  compared (e.g. :func:`jaxfl.algorithms.grouped_async.accuracy_at` on fixed times). The
  answer is ``times[i]`` for the least ``i`` with ``values[i], ..., values[i + window]``
  all at or beyond ``target`` (``>=`` if ``higher``, else ``<=``); ``inf`` if there is
  none. A curve sampled often crosses a threshold early by chance, once; requiring it to
  hold for ``window`` more grid points makes the figure a property of the method rather
  than of its sampling rate (the evaluation protocol of DESIGN.md, contract 11). The last
  ``window`` points cannot start a hold: the window must be seen whole. ``window=0`` is
  the first passage. Pure; batches over leading axes of ``values`` (``times`` shared).

  >>> t = jnp.arange(8.0)
  >>> acc = jnp.array([.1, .9, .2, .8, .85, .9, .95, .9])  # crosses at t=1, falls back
  >>> float(time_to_held_target(t, acc, 0.8)), float(time_to_held_target(t, acc, 0.8, window=0))
  (3.0, 1.0)
  >>> float(time_to_held_target(t, acc, 0.99))
  inf
  """
  if not isinstance(window, int) or window < 0:
    raise ValueError(f"window: expected a non-negative integer, got {window!r}")
  times, values = jnp.asarray(times), jnp.asarray(values)
  n = values.shape[-1]
  if times.shape != (n,):
    raise ValueError(f"times: expected shape ({n},) to match values' last axis, "
                     f"got {times.shape}")
  if window >= n:
    return jnp.full(values.shape[:-1], jnp.inf)
  ok = values >= target if higher else values <= target
  # misses[..., j] = number of grid points before j that miss the target.
  misses = jnp.concatenate([jnp.zeros((*values.shape[:-1], 1), jnp.int32),
                            jnp.cumsum(~ok, axis=-1, dtype=jnp.int32)], axis=-1)
  held = misses[..., window + 1:] == misses[..., :n - window]  # [..., n - window]
  first = jnp.argmax(held, axis=-1)
  return jnp.where(jnp.any(held, axis=-1), times[first], jnp.inf)
