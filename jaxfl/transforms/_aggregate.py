"""Aggregators: reduce per-client updates over the named client axis.

An aggregator is an optax ``GradientTransformationExtraArgs`` called *inside* the
client map (:class:`jaxfl.runtime.ClientAxis`) with one client's update. Its output
is the aggregate, identical on every client (a collective reduced the axis), so the
runtime can return it with ``out_axes=None`` and a server optimizer can follow.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfl.runtime import AxisName, client_weighted_sum


class WeightedMeanState(NamedTuple):
  """Running count of aggregation rounds (int32 scalar), for logging."""

  count: jax.Array


def weighted_mean(axis_name: AxisName) -> optax.GradientTransformationExtraArgs:
  r"""Weighted mean of the clients' updates over the client axis.

  .. math::
    \bar u = \frac{\sum_k w_k u_k}{\sum_k w_k}

  With :math:`w_k = n_k` (client sample counts) this is FedAvg's aggregation
  (McMahan et al. 2017, arXiv 1602.05629). A client with weight 0 (not sampled, or
  padding) contributes nothing, even a non-finite update (it is masked, not multiplied
  by 0); if every weight is 0 the aggregate is 0, so the server keeps its parameters.

  Reduces the client axis: call it inside the client map with one client's update.
  The innermost axis name must be a vmap axis (:func:`jaxfl.runtime.client_weighted_sum`).

  Args:
    axis_name: the client axis name(s): ``ClientAxis.axis_name`` (required, since under
      ``shard_map`` the client axis is two names and a partial reduction would be silent).

  Returns:
    A transform whose ``update(updates, state, params=None, *, weight=1.0)`` takes one
    client's update and scalar weight and returns the aggregate (same on every client).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> agg = weighted_mean('clients')
    >>> def client(u, w):
    ...   out, _ = agg.update(u, agg.init(u), weight=w)
    ...   return out
    >>> jax.vmap(client, axis_name='clients', out_axes=None)(
    ...     jnp.array([1.0, 4.0]), jnp.array([3.0, 1.0]))
    Array(1.75, dtype=float32)
  """

  def init_fn(params):
    del params
    return WeightedMeanState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, weight=1.0, **extra_args):
    del params, extra_args
    weight = jnp.asarray(weight, jnp.float32)
    total = jax.lax.psum(weight, axis_name)
    # Guard the all-zero round: the mean of nothing is taken to be no update.
    scale = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 0.0)
    # where, not multiply: 0 * inf is nan, and a dropped client's update may be anything.
    updates = jax.tree.map(lambda u: jnp.where(weight > 0, u, jnp.zeros_like(u)), updates)
    mean = client_weighted_sum(updates, scale, axis_name)
    return mean, WeightedMeanState(count=state.count + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
