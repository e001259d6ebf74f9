"""Aggregators: reduce per-client updates over the named client axis.

:func:`weighted_mean` is FedAvg's; :func:`delta_aggregator` turns any aggregator of
parameters (the LoRA aggregators) into one of deltas.

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

from jaxfl.errors import ConfigError
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


def delta_aggregator(param_aggregator: optax.GradientTransformation
                     ) -> optax.GradientTransformationExtraArgs:
  r"""A parameter aggregator as a delta aggregator, so it plugs into FedAvg-style rounds.

  The LoRA aggregators (:func:`~jaxfl.transforms.fedit_mean`,
  :func:`~jaxfl.transforms.ffa_mean`, :func:`~jaxfl.transforms.flex_svd`) take each
  client's *parameters* after local training and return the new global parameters;
  :class:`jaxfl.algorithms.FedAvg` (and so :class:`jaxfl.algorithms.FederatedPEFT`)
  reduces *deltas*. With the server's parameters :math:`x` (optax's ``params``,
  unmapped) this computes

  .. math::
    \bar\Delta = \mathrm{agg}(\{x + \Delta_k\}, x) - x,

  so FedAvg's server step SGD(1) lands on the aggregator's tree (up to float rounding of
  :math:`x + (y - x)`). The aggregate must keep the parameters' shapes: FLoRA's stacking
  (:func:`~jaxfl.transforms.stack_merge`) grows the rank and is refused; merge it into the
  kernels instead.

  Args:
    param_aggregator: a reducing transform called with one client's parameters, its
      state, the server's parameters and extra args (``weight``...).

  Returns:
    A transform whose ``update(delta, state, params, **extra)`` takes one client's delta
    and returns the aggregate delta (the same on every client).

  Raises:
    ConfigError: no ``params`` (the server's tree), or an aggregate of another shape.
  """

  def init_fn(params):
    return param_aggregator.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ConfigError("params", "the server's parameters (the tree the clients started "
                        "from), passed unmapped to a delta_aggregator's update", None)
    client = jax.tree.map(jnp.add, params, updates)
    new, state = param_aggregator.update(client, state, params, **extra_args)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new)[0],
                            jax.tree.leaves(params), strict=True):
      if jnp.shape(a) != jnp.shape(b):
        raise ConfigError("aggregator", "a parameter aggregator that keeps the parameters' "
                          "shapes (FLoRA's stacking grows the rank: merge it instead)",
                          f"{jax.tree_util.keystr(path)} {jnp.shape(a)} for {jnp.shape(b)}")
    return jax.tree.map(jnp.subtract, new, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
