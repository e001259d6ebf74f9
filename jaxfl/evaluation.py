"""Evaluation of a classifier on a held-out set."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class EvalMetrics(NamedTuple):
  accuracy: jax.Array
  loss: jax.Array


def make_evaluate(apply_fn: Callable, x, y, *, batch_size: int = 2048) -> Callable:
  """A jitted ``evaluate(params) -> EvalMetrics`` over ``(x, y)``.

  The set is split into equal batches (the remainder padded and masked) and scanned,
  so memory stays bounded for large test sets.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  n = x.shape[0]
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  xb = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  xb = xb.reshape(num_batches, batch_size, *x.shape[1:])
  yb = jnp.pad(y, (0, pad)).reshape(num_batches, batch_size)
  mb = (jnp.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)

  @jax.jit
  def _evaluate(params, xb, yb, mb) -> EvalMetrics:
    def body(totals, batch):
      xi, yi, mi = batch
      logits = apply_fn(params, xi)
      correct = jnp.sum((jnp.argmax(logits, -1) == yi) * mi)
      loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, yi) * mi)
      return (totals[0] + correct, totals[1] + loss), None

    (correct, loss), _ = jax.lax.scan(body, (0.0, 0.0), (xb, yb, mb))
    return EvalMetrics(correct / n, loss / n)

  def evaluate(params) -> EvalMetrics:
    # The set is an argument, not a closure: closed-over arrays compile in as constants.
    return _evaluate(params, xb, yb, mb)

  return evaluate
