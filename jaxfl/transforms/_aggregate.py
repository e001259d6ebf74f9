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
from jaxfl.runtime import AxisName, client_sum, client_weighted_sum


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

  Reduces the client axis: call it inside the client map with one client's update. In
  your own ``jax.shard_map`` (either ``check_vma``, JAX's default ``True`` included) name
  every axis the clients are spread over, mesh axes first: ``('devices', 'clients')``
  with a vmap inside each device, ``'devices'`` with one client per device (the
  ``check_vma`` rule: :mod:`jaxfl.runtime`).

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

    The same clients in a ``jax.shard_map`` over every device (here each device holds a
    copy of both, which leaves the mean as it is), vmapped on each device:

    >>> import numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> agg = weighted_mean(('devices', 'clients'))  # the one `client` now calls
    >>> sharded = jax.jit(jax.shard_map(
    ...     jax.vmap(client, axis_name='clients', out_axes=None),
    ...     mesh=mesh, in_specs=P('devices'), out_specs=P()))  # check_vma=True: the default
    >>> sharded(jnp.tile(jnp.array([1.0, 4.0]), mesh.size),
    ...         jnp.tile(jnp.array([3.0, 1.0]), mesh.size))
    Array(1.75, dtype=float32)
  """

  def init_fn(params):
    del params
    return WeightedMeanState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, weight=1.0, **extra_args):
    del params, extra_args
    weight = jnp.asarray(weight, jnp.float32)
    total = client_sum(weight, axis_name)
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

  Works wherever ``param_aggregator`` does: in ``ClientAxis``'s client map or your own
  ``jax.vmap`` / ``jax.shard_map``, with the axis names ``param_aggregator`` was built with.

  Args:
    param_aggregator: a reducing transform called with one client's parameters, its
      state, the server's parameters and extra args (``weight``...).

  Returns:
    A transform whose ``update(delta, state, params, **extra)`` takes one client's delta
    and returns the aggregate delta (the same on every client).

  Raises:
    ConfigError: no ``params`` (the server's tree), or an aggregate of another shape.

  Examples:
    FedIT's mean of the clients' parameters as a mean delta, in your own
    ``jax.shard_map`` (``check_vma=True``, the default; the server's tree enters
    replicated, ``P()``, and unmapped by the vmap); every device holds a copy of two
    clients with weights 3:1, so the aggregate is :math:`(3 (1, 0) + (-3, 4)) / 4`:

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> from jaxfl.transforms import fedit_mean
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> agg = delta_aggregator(fedit_mean(('devices', 'clients')))
    >>> def client(delta, w, server):
    ...   return agg.update(delta, agg.init(server), server, weight=w)[0]
    >>> per_device = jax.vmap(client, in_axes=(0, 0, None), axis_name='clients', out_axes=None)
    >>> sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, out_specs=P(),
    ...                                 in_specs=(P('devices'), P('devices'), P())))
    >>> deltas = {'head': jnp.tile(jnp.array([[1.0, 0.0], [-3.0, 4.0]]), (mesh.size, 1))}
    >>> sharded(deltas, jnp.tile(jnp.array([3.0, 1.0]), mesh.size),
    ...         {'head': jnp.array([10.0, 20.0])})
    {'head': Array([0., 1.], dtype=float32)}
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
