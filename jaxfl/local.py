"""Local training of one client: ``lax.scan`` over local steps on padded data.

Clients hold different numbers of samples. To train them in one compiled round,
each client's data is padded to a common length ``n_max`` and carries its valid
count ``n``. A client visits its own samples in a random order (drawn once per
round), ``batch_size`` at a time, wrapping around after an epoch, so a batch never
contains padding; a client with fewer samples than ``batch_size`` sees each of its
samples repeatedly in one batch, which weighs them equally.

Loss functions are ``loss_fn(params, x, y)`` or, for stochastic models (dropout, noise
injection), ``loss_fn(params, x, y, key)``: the key of local step ``s`` is
``fold_in(client key, s)`` (:func:`keyed_loss`), so it derives from the run seed and
never disturbs the batch order drawn from the client key itself.

The number of local steps can differ per client (``num_steps``, e.g. a fixed number
of local epochs ``ceil(E n / B)``); the scan runs to the round's maximum and a
step past a client's own count leaves its parameters and optimizer state unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfl import progress

#: ``loss_fn(params, x, y)`` or ``loss_fn(params, x, y, key)`` -> mean loss of a batch.
LossFn = Callable[..., jax.Array]


def keyed_loss(loss_fn: LossFn) -> Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]:
  """``loss_fn`` as ``(params, x, y, key) -> loss``.

  A loss that takes a fourth positional argument (or a ``key`` keyword) receives the key;
  a deterministic three-argument loss is wrapped to ignore it. Decided once, from the
  signature, when an algorithm is built.

  >>> f = keyed_loss(lambda w, x, y: (w * x - y) ** 2)
  >>> float(f(2.0, 1.0, 1.0, None))
  1.0
  >>> g = keyed_loss(lambda w, x, y, key: key)
  >>> g(0.0, 0.0, 0.0, 'k')
  'k'
  """
  try:
    params = inspect.signature(loss_fn).parameters.values()
  except (TypeError, ValueError):  # no signature (some builtins): assume deterministic
    params = []
  positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  takes_key = (len(positional) >= 4 or any(p.name == "key" for p in params)
               or any(p.kind == p.VAR_POSITIONAL for p in params))
  if takes_key:
    return loss_fn
  return lambda params_, x, y, key: loss_fn(params_, x, y)


class ClientData(NamedTuple):
  """One client's padded data; stacked over clients it gains a leading axis.

  Attributes:
    x: inputs ``[n_max, ...]`` (rows past ``count`` are padding).
    y: labels ``[n_max]``.
    count: number of valid rows, int32 scalar.
  """

  x: jax.Array
  y: jax.Array
  count: jax.Array


class LocalMetrics(NamedTuple):
  """Per-client training metrics of one round."""

  loss: jax.Array  # mean training loss over the client's active steps
  steps: jax.Array  # int32, steps actually taken
  samples: jax.Array  # int32, samples processed (steps * batch_size)


def visiting_order(key: jax.Array, count: jax.Array, n_max: int) -> jax.Array:
  """A random permutation of ``0..count-1`` in the first ``count`` places of ``[n_max]``."""
  u = jax.random.uniform(key, [n_max])
  return jnp.argsort(jnp.where(jnp.arange(n_max) < count, u, 2.0))


def batch_indices(order: jax.Array, count: jax.Array, step: jax.Array,
                  batch_size: int) -> jax.Array:
  """Indices of step ``step``'s batch: the next ``batch_size`` samples of ``order``, wrapping."""
  pos = (step * batch_size + jnp.arange(batch_size)) % jnp.maximum(count, 1)
  return order[pos]


def local_epochs_to_steps(count: jax.Array, epochs: float, batch_size: int) -> jax.Array:
  """Steps for ``epochs`` passes over ``count`` samples: ``ceil(epochs * count / batch_size)``.

  float32 rounding can push an exact integer quotient (0.3 * 50 / 5 = 3) just above it,
  so quotients within 1e-4 above an integer count as that integer.
  """
  return jnp.ceil(epochs * count / batch_size - 1e-4).astype(jnp.int32)


def make_local_train(loss_fn: LossFn, tx: optax.GradientTransformation, *, batch_size: int,
                     max_steps: int, mask_steps: bool = True,
                     progress_every: int = 0) -> Callable:
  """Build ``local_train(params, data, num_steps, key) -> (params, LocalMetrics)`` for one client.

  Args:
    loss_fn: ``loss_fn(params, x, y[, key])`` -> mean loss over the batch (step ``s``'s key
      is ``fold_in(key, s)``).
    tx: the client optimizer (its state starts fresh every round).
    batch_size: samples per local step.
    max_steps: length of the scan; clients with ``num_steps < max_steps`` idle for the rest.
    mask_steps: ``False`` when every client runs all ``max_steps`` (``num_steps`` is then
      only reported, and should be ``max_steps`` or 0 for a client whose result is
      discarded): skips the per-step select, about 6% of a small model's round on CPU.
    progress_every: a :func:`jaxfl.progress.tick` every this many steps and at the last
      (0: none), for one long training such as a centralized baseline; a client's local
      steps inside a federated round should not tick.
  """
  grad_fn = jax.value_and_grad(keyed_loss(loss_fn))

  def local_train(params, data: ClientData, num_steps: jax.Array, key: jax.Array):
    order = visiting_order(key, data.count, data.x.shape[0])
    opt_state = tx.init(params)

    def step(carry, s):
      params, opt_state = carry
      idx = batch_indices(order, data.count, s, batch_size)
      loss, grads = grad_fn(params, data.x[idx], data.y[idx], jax.random.fold_in(key, s))
      updates, new_opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      if progress_every:
        progress.tick_every(s, progress_every, max_steps, after=loss)
      if not mask_steps:
        return (new_params, new_opt_state), loss
      active = s < num_steps
      keep = lambda new, old: jnp.where(active, new, old)
      carry = (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state))
      return carry, jnp.where(active, loss, 0.0)

    (params, _), losses = jax.lax.scan(step, (params, opt_state), jnp.arange(max_steps))
    steps = jnp.minimum(num_steps, max_steps).astype(jnp.int32)
    if mask_steps:  # inactive steps contributed 0
      mean_loss = jnp.sum(losses) / jnp.maximum(steps, 1)
    else:
      mean_loss = jnp.where(steps > 0, jnp.mean(losses), 0.0)
    return params, LocalMetrics(mean_loss, steps, steps * batch_size)

  return local_train


def softmax_cross_entropy(apply_fn: Callable) -> LossFn:
  """Mean softmax cross-entropy loss of a classifier ``apply_fn(params, x) -> logits``."""

  def loss_fn(params, x, y):
    logits = apply_fn(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return loss_fn
