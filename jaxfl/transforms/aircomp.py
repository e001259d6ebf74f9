r"""Over-the-air aggregation (AirComp): the weighted mean received through a noisy channel.

The members of one group transmit their updates at once on the same channel; the
server receives their sum, faded and noisy, and rescales it. Per model entry
(one channel use each), with the plan :math:`(p, \eta)` of
:func:`jaxfl.planners.power.power_control` and phase pre-compensation:

.. math::
  y = \sum_k |h_k| \sqrt{p_k}\; c\, u_k + n, \qquad n \sim N(0, \sigma^2), \qquad
  \hat u = \frac{y}{\sqrt\eta\; c} \approx \sum_k w_k u_k,

where :math:`u_k` is client ``k``'s update, :math:`w_k` its weight normalised to sum 1
over the members (clients with weight > 0), and :math:`c = 1 / \max_k \mathrm{rms}(u_k)`
a common scale (COTAF style, Sery et al., arXiv 2009.12787; assumed for Air-FedGA, arXiv
2507.05704, whose text was not available) that gives every transmitted signal
:math:`c\, u_k` at most unit power per entry, as the power budget :math:`p_k \le P_k`
assumes. The error of the estimate is

.. math::
  \hat u - \sum_k w_k u_k = \sum_k (a_k - w_k)\, u_k + \frac{n}{\sqrt\eta\, c}, \qquad
  a_k = \frac{|h_k| \sqrt{p_k}}{\sqrt\eta},

so in the normalised domain, with the clients' signals uncorrelated, its per-entry variance is
:math:`\sum_k (a_k - w_k)^2 \rho_k + \sigma^2/\eta` where :math:`\rho_k \le 1` is the power
of :math:`c\,u_k`. That is :func:`jaxfl.planners.power.aggregation_mse` when every member's
update has the same rms (:math:`\rho_k = 1`), and an upper bound otherwise; in the model
domain divide by :math:`c^2`. The noise term shrinks with the updates, as in COTAF.

Every client computes the same plan from the all-gathered weights, gains and powers,
and the receiver noise is drawn from a key shared by all clients, so the estimate is
identical on every client. Power control is from Cao, Zhu, Xu, Huang (IEEE TWC 2020);
the group upload is Air-FedGA's (arXiv 2507.05704).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.errors import ConfigError
from jaxfl.planners.power import POLICIES, PowerControl, aggregation_mse, power_control
from jaxfl.runtime import (
  AxisName,
  client_gather,
  client_index,
  client_weighted_sum,
  split_axis_name,
)
from jaxfl.transforms._hyper import check_hyperparam


class AirCompState(NamedTuple):
  """Round counter and the last round's channel quality.

  Attributes:
    count: int32 number of aggregation rounds.
    mse: the last round's analytic MSE per entry in the normalised signal domain
      (:func:`jaxfl.planners.power.aggregation_mse` with weights summing to 1; exact
      when the members' updates have equal rms, an upper bound otherwise).
    eta: the last round's denoising factor.
  """

  count: jax.Array
  mse: jax.Array
  eta: jax.Array


class _Plan(NamedTuple):
  amplitude: jax.Array  # [K] a_k = |h_k| sqrt(p_k) / sqrt(eta): the weight actually applied
  noise_std: jax.Array  # std of the noise in the estimate, model domain
  control: PowerControl
  mse: jax.Array


def _check_config(noise_var, policy, truncation_threshold):
  if policy not in POLICIES:
    raise ConfigError("policy", f"one of {sorted(POLICIES)}", policy)
  check_hyperparam(noise_var, "noise_var", lambda v: v >= 0, "a noise variance >= 0")
  if truncation_threshold is not None:
    check_hyperparam(truncation_threshold, "truncation_threshold", lambda v: v >= 0,
                     "None or a gain >= 0")


def _plan(weight, gain_sq, max_power, rms, noise_var, policy, truncation_threshold) -> _Plan:
  """The round's plan from the ``[K]`` vectors of every client; shared by both entry points."""
  weight = jnp.asarray(weight, dtype=float)
  gain_sq = jnp.asarray(gain_sq, dtype=float)
  member = weight > 0
  weight = jnp.where(member, weight, 0.0)
  total = jnp.sum(weight)
  # All-zero weights: no members, so no transmission and a zero estimate.
  weight = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 0.0)
  control = power_control(policy, gain_sq, max_power, weight, noise_var,
                          truncation_threshold=truncation_threshold)
  # MSE against the full target, so shares lost to truncation count.
  mse = aggregation_mse(gain_sq, control.power, control.eta, weight, noise_var)
  amplitude = jnp.sqrt(gain_sq * control.power / control.eta)
  # y / (sqrt(eta) c) = sum_k a_k u_k + (max_k rms_k / sqrt(eta)) n: c cancels in the
  # signal part, and an all-zero round (max rms = 0) gets no noise instead of 0 * inf.
  peak = jnp.max(jnp.where(member, rms, 0.0), initial=0.0)
  silent = jnp.all(control.power == 0)
  noise_std = jnp.where(silent, 0.0, jnp.sqrt(noise_var / control.eta) * peak)
  return _Plan(amplitude, noise_std, control, mse)


def _add_noise(tree: Any, noise_std: jax.Array, key: jax.Array) -> Any:
  """Receiver noise: one N(0, 1) draw over every entry of the update, split over the leaves.

  One random-number program per round whatever the number of leaves (one per leaf would
  compile a generator for each).
  """
  leaves, treedef = jax.tree.flatten(tree)
  sizes = [x.size for x in leaves]
  z = jax.random.normal(key, (sum(sizes),), jnp.float32)
  ends = np.cumsum(sizes)
  noisy = [x + noise_std.astype(x.dtype) * z[end - x.size:end].reshape(x.shape).astype(x.dtype)
           for x, end in zip(leaves, ends, strict=True)]
  return jax.tree.unflatten(treedef, noisy)


def _sum_sq_and_size(tree: Any, batch_dims: int) -> tuple[jax.Array, int]:
  leaves = jax.tree.leaves(tree)
  total = sum(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(batch_dims, x.ndim)))
              for x in leaves)
  size = sum(x[(0,) * batch_dims].size if batch_dims else x.size for x in leaves)
  return jnp.asarray(total, jnp.float32), size


def _rms(tree: Any, batch_dims: int = 0) -> jax.Array:
  """Root mean square over every entry of a client's update (per client if batched)."""
  total, size = _sum_sq_and_size(tree, batch_dims)
  return jnp.sqrt(total / max(size, 1))


def aircomp_mean(axis_name: AxisName, *, noise_var: float, policy: str = "optimal",
                 truncation_threshold: float | None = None
                 ) -> optax.GradientTransformationExtraArgs:
  r"""The clients' weighted mean update, received over the air (one AirComp group).

  See the module docstring for the channel model. Per round the transform all-gathers
  every client's weight, :math:`|h_k|^2`, :math:`P_k` and update rms over the client axis,
  plans :math:`(p, \eta)` with ``policy``, and returns

  .. math::
    \hat u = \frac{1}{\sqrt\eta\, c} \Big( \sum_k |h_k| \sqrt{p_k}\, c\, u_k + n \Big),

  the same on every client. With ``noise_var = 0`` and ``"optimal"`` or
  ``"zero_forcing"`` it is the exact weighted mean. A client with weight 0 (not in this
  group, not participating, padding) sends nothing and does not change the output; if
  every weight is 0 the output is 0 (the server keeps its parameters).

  Reduces the client axis: call it inside the client map with one client's update.
  Under ``shard_map`` (``ClientAxis``'s, or your own with either ``check_vma``, JAX's
  default ``True`` included) name every axis the clients are spread over, mesh axes
  first: ``('devices', 'clients')`` with a vmap inside each device, ``'devices'`` with one
  client per device. The small per-client vectors are all-gathered over every name, so
  the plan covers every client, and the weighted sum is reduced over all of them
  (:func:`jaxfl.runtime.client_weighted_sum`; the ``check_vma`` rule: :mod:`jaxfl.runtime`).

  Args:
    axis_name: the client axis name(s): ``ClientAxis.axis_name``.
    noise_var: receiver noise variance :math:`\sigma^2` per entry, relative to unit
      signal power (e.g. :func:`jaxfl.sim.noise_var_from_snr_db`); a float (checked
      here), or a scalar array or tracer (built inside ``jit``, or swept with
      ``optax.inject_hyperparams``; taken as it is), as is ``truncation_threshold``.
    policy: a key of :data:`jaxfl.planners.power.POLICIES`.
    truncation_threshold: if set, members with :math:`|h_k|^2` below it stay silent and
      their share is lost (with ``"zero_forcing"``: truncated channel inversion).

  Returns:
    A transform whose ``update(updates, state, params=None, *, weight, gain_sq,
    noise_key, max_power=1.0)`` takes one client's update, its scalar weight,
    :math:`|h|^2` this round and power budget :math:`P_k`, and the receiver's noise key
    (the same on every client: pass it unmapped). The state is :class:`AirCompState`.

  Raises:
    ConfigError: unknown policy, negative ``noise_var`` or threshold, a non-scalar
      array for either, bad axis name.

  Examples:
    Without noise the optimal plan delivers the exact weighted mean,
    (3 * 1 + 1 * 4) / 4 = 1.75, whatever the channels:

    >>> import jax, jax.numpy as jnp
    >>> def received(agg, u, w, g):
    ...   def client(u, w, g):
    ...     return agg.update(u, agg.init(u), weight=w, gain_sq=g,
    ...                       noise_key=jax.random.key(0))
    ...   return jax.vmap(client, axis_name='clients', out_axes=None)(u, w, g)
    >>> u, w, g = jnp.array([1.0, 4.0]), jnp.array([3.0, 1.0]), jnp.array([0.5, 2.0])
    >>> est, state = received(aircomp_mean('clients', noise_var=0.0), u, w, g)
    >>> round(float(est), 4), round(float(state.mse), 6)
    (1.75, 0.0)

    At 10 dB SNR the estimate is noisy and the state reports the analytic MSE. With
    normalised weights (0.75, 0.25), :math:`Q/w^2 = (0.89, 32)`: the weak client sends
    at full power, :math:`\eta = (0.6 / (0.75 \sqrt{0.5}))^2 = 1.28`, and
    :math:`\mathrm{MSE} = (0.75 - \sqrt{0.5/1.28})^2 + 0.1/1.28 = 0.09375`, below
    zero-forcing's :math:`\sigma^2 / \min_k(Q_k/w_k^2) = 0.1125`:

    >>> est, state = received(aircomp_mean('clients', noise_var=0.1), u, w, g)
    >>> round(float(state.eta), 4), round(float(state.mse), 5)
    (1.28, 0.09375)
    >>> _, state = received(aircomp_mean('clients', noise_var=0.1, policy='zero_forcing'),
    ...                     u, w, g)
    >>> round(float(state.mse), 4)
    0.1125

    In your own ``jax.shard_map`` over every device (``check_vma=True``, the default),
    vmapped on each device; each device holds a copy of both clients here, so the
    weights stay 3:1 and the estimate is the exact mean again:

    >>> import numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> agg = aircomp_mean(('devices', 'clients'), noise_var=0.0)
    >>> def client(u, w, g):
    ...   return agg.update(u, agg.init(u), weight=w, gain_sq=g, noise_key=jax.random.key(0))
    >>> sharded = jax.jit(jax.shard_map(jax.vmap(client, axis_name='clients', out_axes=None),
    ...                                 mesh=mesh, in_specs=P('devices'), out_specs=P()))
    >>> est, state = sharded(*(jnp.tile(x, mesh.size) for x in (u, w, g)))
    >>> round(float(est), 4)
    1.75
  """
  _check_config(noise_var, policy, truncation_threshold)
  split_axis_name(axis_name)

  def init_fn(params):
    del params
    return AirCompState(count=jnp.zeros([], jnp.int32), mse=jnp.zeros([], jnp.float32),
                        eta=jnp.ones([], jnp.float32))

  def update_fn(updates, state, params=None, *, weight=None, gain_sq=None, noise_key=None,
                max_power=1.0, **extra_args):
    del params, extra_args
    for name, value in (("weight", weight), ("gain_sq", gain_sq), ("noise_key", noise_key)):
      if value is None:
        raise ConfigError(name, "a value passed to aircomp_mean's update", None)
    # A non-member's update (weight 0) may be non-finite: masked, never multiplied by 0.
    updates = jax.tree.map(lambda u: jnp.where(jnp.asarray(weight) > 0, u, jnp.zeros_like(u)),
                           updates)
    local = jnp.stack([jnp.asarray(weight, jnp.float32), jnp.asarray(gain_sq, jnp.float32),
                       jnp.asarray(max_power, jnp.float32), _rms(updates)])
    everyone = client_gather(local, axis_name)  # [K, 4], the same on every client
    index = client_index(axis_name)
    plan = _plan(everyone[:, 0], everyone[:, 1], everyone[:, 2], everyone[:, 3], noise_var,
                 policy, truncation_threshold)
    received = client_weighted_sum(updates, plan.amplitude[index], axis_name)
    estimate = _add_noise(received, plan.noise_std, noise_key)
    return estimate, AirCompState(state.count + 1, plan.mse.astype(jnp.float32),
                                  plan.control.eta.astype(jnp.float32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def aircomp_aggregate(updates_stacked: Any, weights, gain_sq, max_power, noise_var, key,
                      policy: str = "optimal", *, truncation_threshold=None
                      ) -> tuple[Any, PowerControl, jax.Array]:
  """:func:`aircomp_mean` over a leading client axis, without a client map.

  Args:
    updates_stacked: pytree whose leaves are ``[K, ...]`` (client ``k``'s update in row k).
    weights: ``[K]`` client weights (0: not in the group).
    gain_sq: ``[K]`` channel power gains :math:`|h_k|^2` this round.
    max_power: :math:`P_k`, scalar or ``[K]``.
    noise_var: receiver noise variance per entry.
    key: the receiver noise key; the same key gives the same noise as :func:`aircomp_mean`.
    policy: a key of :data:`jaxfl.planners.power.POLICIES`.
    truncation_threshold: as in :func:`aircomp_mean`.

  Returns:
    ``(estimate, control, mse)``: the received weighted mean (leaves ``[...]``), the plan
    for the normalised weights, and its analytic MSE in the signal domain.
  """
  _check_config(noise_var, policy, truncation_threshold)
  member = jnp.asarray(weights) > 0
  updates_stacked = jax.tree.map(
      lambda u: jnp.where(member.reshape(-1, *[1] * (u.ndim - 1)), u, jnp.zeros_like(u)),
      updates_stacked)
  gain_sq = jnp.asarray(gain_sq, dtype=float)
  max_power = jnp.broadcast_to(jnp.asarray(max_power, dtype=float), gain_sq.shape)
  plan = _plan(weights, gain_sq, max_power, _rms(updates_stacked, batch_dims=1), noise_var,
               policy, truncation_threshold)

  def reduce(x):
    return jnp.tensordot(plan.amplitude.astype(x.dtype), x, axes=1)

  estimate = _add_noise(jax.tree.map(reduce, updates_stacked), plan.noise_std, key)
  return estimate, plan.control, plan.mse
