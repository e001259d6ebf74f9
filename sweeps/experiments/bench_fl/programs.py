"""bench_fl's programs: the same FedAvg round written four ways, and its FLOP counts.

:func:`make_fedavg` (the client-axis runtime), :func:`make_client_loop_round` (a Python
loop over clients, each a jitted one-client ``local_train``), :func:`make_plain_vmap_round`
(a hand-written ``vmap`` of a ``lax.scan``, no jaxfl runtime) and :func:`make_centralized`
(the same samples in sequence on one client). From the same parameters and round key the
first three compute the same new parameters (tests check it to 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxfl.algorithms import FedAvg, server_optimizer
from jaxfl.local import ClientData, make_local_train, visiting_order
from jaxfl.models import SIZES
from jaxfl.runtime import make_client_axis
from jaxfl.sim import uniform_profiles

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
