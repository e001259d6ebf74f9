r"""Power control for one over-the-air computation (AirComp) group.

Channel model. ``K`` workers (a fixed-size axis, so everything here jits and vmaps)
share one block-fading uplink to a single-antenna server. Worker ``k`` belongs to the
group iff its weight :math:`w_k > 0`; the server wants the weighted sum
:math:`f = \sum_k w_k s_k` of unit-power signals :math:`s_k` (one model entry per
channel use). Each member pre-compensates its channel phase and scales its signal by
:math:`\sqrt{p_k}`, with :math:`0 \le p_k \le P_k`; the server receives and denoises

.. math::
  y = \sum_k |h_k| \sqrt{p_k}\, s_k + n, \quad n \sim N(0, \sigma^2), \qquad
  \hat f = y / \sqrt{\eta}.

(A real-valued simulation: after phase compensation every gain is the real number
:math:`|h_k|\sqrt{p_k}`.) For independent unit-power signals the error is

.. math::
  \mathrm{MSE}(p, \eta) = E(\hat f - f)^2
    = \sum_k \Big( \frac{|h_k| \sqrt{p_k}}{\sqrt\eta} - w_k \Big)^2 + \frac{\sigma^2}{\eta}.

Optimal policy (Cao, Zhu, Xu, Huang, "Optimized power control for over-the-air
computation in fading channels", IEEE TWC 2020; here with weights). Write
:math:`Q_k = P_k |h_k|^2` and :math:`u = 1/\sqrt\eta`. For a fixed :math:`\eta`, worker
``k`` can cancel its own error term exactly (channel inversion,
:math:`p_k = w_k^2 \eta / |h_k|^2`) iff that fits its budget, i.e. iff
:math:`\eta \le Q_k / w_k^2`; otherwise the error is smallest at full power
:math:`p_k = P_k`. So

.. math::
  \min_p \mathrm{MSE} = F(u) = \sum_k \max(0,\, w_k - \sqrt{Q_k}\, u)^2 + \sigma^2 u^2,

which is convex in :math:`u` (and strictly so for :math:`\sigma^2 > 0`). Its full-power
set :math:`S = \{k : Q_k / w_k^2 < \eta\}` is a prefix of the members sorted by
:math:`Q_k / w_k^2` (the weakest first). On a fixed prefix :math:`S_i` the stationary
point of the quadratic is

.. math::
  u_i = \frac{\sum_{k \in S_i} w_k \sqrt{Q_k}}{\sigma^2 + \sum_{k \in S_i} Q_k},
  \qquad \eta_i = 1 / u_i^2,

and the minimiser of :math:`F` is the :math:`u_i` whose prefix is self-consistent. Rather
than test the interval conditions (fragile at ties), :func:`optimal_power` evaluates
the true :math:`F(u_i)` of every candidate (``O(K^2)``) and takes the argmin; the
global minimiser is one of the candidates, so this is exact. With :math:`w_k = 1` it is
Cao et al.'s threshold policy. Baselines: zero-forcing (every member inverts its
channel, :math:`\mathrm{MSE} = \sigma^2 / \min_k (Q_k/w_k^2)`: the weakest channel sets
the noise), full power with the best :math:`\eta`, and truncated inversion (deep-faded
members stay silent; Zhu, Wang, Huang, broadband analog aggregation). Used by
Air-FedGA (arXiv 2507.05704) for its group uploads: the threshold policy is **assumed**
for Air-FedGA (Cao et al., TWC 2020), whose text was not available; so is the
real-valued channel (one model entry per channel use).

Degenerate inputs stay finite. A member with :math:`Q_k = 0` (a channel in a null, or no
power) cannot contribute: it gets :math:`p_k = 0` under every policy and its share
:math:`w_k^2` stays in the MSE. If no member can transmit, :math:`\eta` is the guard
value ``1e30`` (the limit :math:`\eta \to \infty`: the estimate is 0). :math:`\eta` is
always clipped to ``[1e-30, 1e30]``.

Examples:
  Two equally weighted workers at 10 dB SNR (:math:`\sigma^2 = 0.1`, :math:`P = 1`), one
  in a deep fade: :math:`Q = (0.1, 2)`, :math:`Q/w^2 = (0.4, 8)`. The first candidate,
  :math:`S_1 = \{1\}`, gives :math:`u_1 = 0.5\sqrt{0.1}/(0.1 + 0.1)`, so
  :math:`\eta = 1.6`: the weak worker sends at full power, the strong one inverts with
  :math:`p_2 = 0.5^2 \cdot 1.6 / 2 = 0.2`, and
  :math:`\mathrm{MSE} = (0.5 - \sqrt{0.1/1.6})^2 + 0.1/1.6 = 0.125`. Zero-forcing is held
  to :math:`\eta = 0.4` by the weak worker, with twice the error:

  >>> import jax.numpy as jnp
  >>> gain, w = jnp.array([0.1, 2.0]), jnp.array([0.5, 0.5])
  >>> pc = optimal_power(gain, 1.0, w, 0.1)
  >>> [round(float(p), 4) for p in pc.power], round(float(pc.eta), 4)
  ([1.0, 0.2], 1.6)
  >>> round(float(aggregation_mse(gain, pc.power, pc.eta, w, 0.1)), 4)
  0.125
  >>> zf = zero_forcing(gain, 1.0, w, 0.1)
  >>> round(float(zf.eta), 4), round(float(aggregation_mse(gain, zf.power, zf.eta, w, 0.1)), 4)
  (0.4, 0.25)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfl.errors import ConfigError, check

# Numerical guard for the denoising factor: finite and positive whatever the channels.
ETA_MIN, ETA_MAX = 1e-30, 1e30


class PowerControl(NamedTuple):
  """One group's AirComp transmit plan.

  Attributes:
    power: ``[K]`` transmit powers :math:`p_k` (0 for non-members and silent members).
    eta: scalar denoising factor :math:`\\eta` applied by the server (``y / sqrt(eta)``).
  """

  power: jax.Array
  eta: jax.Array


class _Group(NamedTuple):
  """Inputs in common form: float ``[K]`` arrays and member masks."""

  gain: jax.Array  # |h_k|^2
  max_power: jax.Array  # P_k
  weight: jax.Array  # w_k, 0 for non-members
  q: jax.Array  # Q_k = P_k |h_k|^2 for members, 0 otherwise
  member: jax.Array  # w_k > 0
  live: jax.Array  # member with Q_k > 0: able to contribute


def _group(gain_sq, max_power, weights) -> _Group:
  gain = jnp.asarray(gain_sq, dtype=float)
  check(gain.ndim == 1, "gain_sq", "a [K] vector", gain.shape)
  weight = jnp.asarray(weights, dtype=float)
  check(weight.shape == gain.shape, "weights", f"shape {gain.shape} like gain_sq", weight.shape)
  max_power = jnp.broadcast_to(jnp.asarray(max_power, dtype=float), gain.shape)
  # Negative (or NaN) weights cannot be targets: such workers are treated as non-members.
  member = weight > 0
  weight = jnp.where(member, weight, 0.0)
  q = jnp.where(member, jnp.maximum(max_power * gain, 0.0), 0.0)
  return _Group(gain, max_power, weight, q, member, member & (q > 0))


def _clip_eta(eta):
  return jnp.clip(eta, ETA_MIN, ETA_MAX)


def _eta_from_u(u):
  """eta = 1/u^2; u = 0 (nothing receivable) maps to the guard ETA_MAX."""
  positive = u > 0
  return _clip_eta(jnp.where(positive, 1.0 / jnp.where(positive, u, 1.0) ** 2, ETA_MAX))


def _inversion_ratio(grp: _Group):
  """Q_k / w_k^2: the largest eta at which member k can still invert its channel."""
  return grp.q / jnp.where(grp.live, grp.weight, 1.0) ** 2


def _inversion_power(grp: _Group, eta):
  """min(P_k, w_k^2 eta / |h_k|^2) for live members, 0 otherwise: the best p for this eta."""
  safe_gain = jnp.where(grp.live, grp.gain, 1.0)
  return jnp.where(grp.live, jnp.minimum(grp.max_power, grp.weight ** 2 * eta / safe_gain), 0.0)


def aggregation_mse(gain_sq, power, eta, weights, noise_var) -> jax.Array:
  r"""The AirComp estimate's mean squared error for unit-power independent signals.

  .. math::
    \mathrm{MSE} = \sum_k \Big( \frac{|h_k| \sqrt{p_k}}{\sqrt\eta} - w_k \Big)^2
                   + \frac{\sigma^2}{\eta}

  Args:
    gain_sq: ``[K]`` channel power gains :math:`|h_k|^2`.
    power: ``[K]`` transmit powers :math:`p_k`.
    eta: scalar denoising factor :math:`\eta > 0`.
    weights: ``[K]`` target weights :math:`w_k` (0 for non-members).
    noise_var: receiver noise variance :math:`\sigma^2` per entry.

  Returns:
    Scalar MSE per model entry, in the signal domain.
  """
  gain = jnp.asarray(gain_sq, dtype=float)
  power = jnp.asarray(power, dtype=float)
  eta = jnp.asarray(eta, dtype=float)
  weight = jnp.asarray(weights, dtype=float)
  amplitude = jnp.sqrt(gain * power / eta)
  return jnp.sum((amplitude - weight) ** 2) + noise_var / eta


def optimal_power(gain_sq, max_power, weights, noise_var) -> PowerControl:
  r"""The MSE-minimising powers and denoising factor (threshold policy, weighted).

  Sorts members by :math:`Q_k / w_k^2`, forms the candidate :math:`u_i` of every prefix
  (see the module docstring), evaluates :math:`F(u_i)` and keeps the argmin; members
  with :math:`Q_k/w_k^2 < \eta` then transmit at full power and the rest invert their
  channel exactly.

  Args:
    gain_sq: ``[K]`` channel power gains :math:`|h_k|^2 \ge 0`.
    max_power: :math:`P_k`, scalar or ``[K]``.
    weights: ``[K]`` target weights; :math:`w_k > 0` marks the group's members.
    noise_var: :math:`\sigma^2 \ge 0`.

  Returns:
    :class:`PowerControl`; jittable, ``O(K^2)`` work.
  """
  grp = _group(gain_sq, max_power, weights)
  ratio = jnp.where(grp.member, _inversion_ratio(grp), jnp.inf)
  # Members first (weakest first), then non-members: every valid prefix is members only.
  order = jnp.lexsort((ratio, (~grp.member).astype(jnp.int32)))
  sqrt_q = jnp.sqrt(grp.q)
  num = jnp.cumsum((grp.weight * sqrt_q)[order])
  den = noise_var + jnp.cumsum(grp.q[order])
  u = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
  # F(u_i) = min_p MSE at eta_i, i.e. the MSE of the clipped-inversion powers.
  shortfall = jnp.maximum(0.0, grp.weight[None, :] - sqrt_q[None, :] * u[:, None])
  cost = jnp.sum(shortfall ** 2, axis=1) + noise_var * u ** 2
  cost = jnp.where(grp.member[order], cost, jnp.inf)
  eta = _eta_from_u(u[jnp.argmin(cost)])
  return PowerControl(_inversion_power(grp, eta), eta)


def zero_forcing(gain_sq, max_power, weights, noise_var) -> PowerControl:
  r"""Channel inversion for every member: :math:`\eta = \min_k Q_k / w_k^2`.

  Then :math:`p_k = w_k^2 \eta / |h_k|^2 \le P_k` aligns every member exactly and
  :math:`\mathrm{MSE} = \sigma^2 / \eta`: the weakest member sets the noise. Members with
  :math:`Q_k = 0` cannot invert; they stay silent (their :math:`w_k^2` adds to the MSE)
  instead of driving :math:`\eta` to 0. Same arguments as :func:`optimal_power`
  (``noise_var`` is unused).
  """
  del noise_var
  grp = _group(gain_sq, max_power, weights)
  ratio = jnp.where(grp.live, _inversion_ratio(grp), jnp.inf)
  eta = _clip_eta(jnp.min(ratio, initial=jnp.inf))
  return PowerControl(_inversion_power(grp, eta), eta)


def full_power(gain_sq, max_power, weights, noise_var) -> PowerControl:
  r"""Every member at full power :math:`P_k`, with the best :math:`\eta` for that.

  .. math::
    u = \frac{1}{\sqrt\eta} = \frac{\sum_k w_k \sqrt{Q_k}}{\sigma^2 + \sum_k Q_k}

  minimises :math:`\sum_k (\sqrt{Q_k} u - w_k)^2 + \sigma^2 u^2`. Members with
  :math:`Q_k = 0` send nothing. Same arguments as :func:`optimal_power`.
  """
  grp = _group(gain_sq, max_power, weights)
  num = jnp.sum(grp.weight * jnp.sqrt(grp.q))
  den = noise_var + jnp.sum(grp.q)
  u = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
  return PowerControl(jnp.where(grp.live, grp.max_power, 0.0), _eta_from_u(u))


def truncated_inversion(gain_sq, max_power, weights, noise_var, threshold) -> PowerControl:
  r"""Deep-fade truncation: members with :math:`|h_k|^2 < \text{threshold}` stay silent.

  The scheduled members invert their channels with
  :math:`\eta = \min_{k\ \text{scheduled}} Q_k / w_k^2`; the silent members' target share
  is lost (it stays in the MSE, :math:`\sum_{silent} w_k^2`). Same arguments as
  :func:`optimal_power`, plus the gain ``threshold``.
  """
  gain = jnp.asarray(gain_sq, dtype=float)
  scheduled = jnp.where(gain >= threshold, jnp.asarray(weights, dtype=float), 0.0)
  return zero_forcing(gain, max_power, scheduled, noise_var)


POLICIES: dict[str, Callable[..., PowerControl]] = {
    "optimal": optimal_power,
    "zero_forcing": zero_forcing,
    "full_power": full_power,
}


def power_control(policy: str, gain_sq, max_power, weights, noise_var, *,
                  truncation_threshold=None) -> PowerControl:
  """The named policy's :class:`PowerControl` (a key of :data:`POLICIES`).

  Args:
    policy: ``"optimal"``, ``"zero_forcing"`` or ``"full_power"``.
    gain_sq, max_power, weights, noise_var: as in :func:`optimal_power`.
    truncation_threshold: if set, members with ``gain_sq < truncation_threshold`` are not
      scheduled (``p = 0``, their share is lost) and the policy plans the rest; with
      ``"zero_forcing"`` this is :func:`truncated_inversion`. Evaluate the MSE with the
      original weights, so that the lost shares count.

  Raises:
    ConfigError: unknown policy.
  """
  if policy not in POLICIES:
    raise ConfigError("policy", f"one of {sorted(POLICIES)}", policy)
  if truncation_threshold is not None:
    gain = jnp.asarray(gain_sq, dtype=float)
    weights = jnp.where(gain >= truncation_threshold, jnp.asarray(weights, dtype=float), 0.0)
  return POLICIES[policy](gain_sq, max_power, weights, noise_var)
