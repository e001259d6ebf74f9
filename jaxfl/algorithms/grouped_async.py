"""Grouped asynchronous FL on a simulated clock: Air-FedGA and its baselines in one engine.

Air-FedGA (Ma et al., arXiv 2507.05704): workers form groups; a group's members train
from the global model the group last received, upload at once and are aggregated over
the air (AirComp, :mod:`jaxfl.transforms.aircomp`), so a group is synchronous; each
group's arrival updates the global model asynchronously, mixed in with a
staleness-aware weight. The update rule below is a **reconstruction** (the paper's
text was not available; ``shared/papers/air_fedga_and_cocodc.md`` §1.3, FedAsync-style):

.. math::
  w^{t+1} = (1 - \\beta_g) w^t + \\beta_g \\hat w_g,\\qquad
  \\beta_g = \\min\\big(1, \\beta_0 \\tfrac{D_g}{D} M (\\tau_g + 1)^{-a}\\big),

where :math:`\\hat w_g = w_{start,g} + \\widehat{\\Delta}_g` is the group's model
(its members' sample-weighted mean update, as the AirComp receiver estimates it),
:math:`\\tau_g` its staleness (global updates since the group received its model),
:math:`D_g / D` its share of the data and ``M`` the number of groups. A synchronous
method (one group) takes :math:`\\beta = 1`.

One engine covers every method of the comparison by its groups, its uplink and its
mixing:

=================  ==========================  ===============================  ========
method             groups                      uplink                           mixing
=================  ==========================  ===============================  ========
Air-FedGA          planned (grouping planner)  AirComp, optimal power control   async
Air-FedGA random   random, same sizes          AirComp, optimal power control   async
Air-FedAvg         one group of all workers    AirComp, optimal power control   sync
FedAsync           one group per worker        digital, bits / Shannon rate     async
FedAvg (digital)   one group of all workers    digital TDMA, noiseless          sync
=================  ==========================  ===============================  ========

Simulated clock. A group's round lasts its slowest member's compute time (expected
time times a fresh uniform jitter per round), plus its upload -- AirComp: one channel
use per parameter, whatever the group size; digital: the model's bits over the
worker's Shannon rate on this round's channel (TDMA: the members' times add up) --
plus the model's download. Every group starts at time 0 and restarts as soon as it
receives the new global model. Since neither timing nor channels depend on the model,
the whole event sequence is drawn first (:func:`schedule`), then training is one
``lax.scan`` over events; padding events past ``t_max`` change nothing.

Channel model per round: block fading :math:`h_k = \\sqrt{L_k}\\, \\tilde h_k` with
:math:`\\tilde h_k \\sim \\mathcal{CN}(0, 1)` (or Rician), large-scale gain :math:`L_k`
fixed per worker; the same draw sets a digital upload's rate and an AirComp round's
power control.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, LossFn, make_local_train
from jaxfl.planners.power import aggregation_mse, power_control
from jaxfl.runtime import ClientAxis
from jaxfl.sim.channel import fading_gain_sq, shannon_rate
from jaxfl.transforms import aircomp_mean, weighted_mean

UPLINKS = ("aircomp", "digital", "tdma", "ideal")
# Sub-keys of a run's key.
KEY_JITTER, KEY_CHANNEL, KEY_TRAIN, KEY_NOISE = range(4)


@dataclasses.dataclass(frozen=True)
class Comm:
  """Communication cost model (seconds; a parameter is one real channel use / ``bits`` bits).

  Attributes:
    bandwidth_hz: channel uses per second of the uplink (AirComp and digital alike).
    bits_per_param: bits of one parameter in a digital upload.
    noise_var: receiver noise power :math:`\\sigma^2` (``P / SNR``).
    max_power: transmit power limit :math:`P_k` (the same for every worker).
    download_time: seconds to broadcast the global model to a group.
    max_upload_time: cap on one digital upload (a deep fade would otherwise stall it).
    fading: ``rayleigh`` or ``rician`` block fading; ``rician_k`` its K-factor.
  """

  bandwidth_hz: float
  bits_per_param: float
  noise_var: float
  max_power: float = 1.0
  download_time: float = 0.0
  max_upload_time: float = float("inf")
  fading: str = "rayleigh"
  rician_k: float = 0.0


@dataclasses.dataclass(frozen=True)
class Method:
  """How one method aggregates and mixes (the groups are an input of :func:`run`).

  Attributes:
    uplink: ``aircomp`` (over the air, with ``policy``), ``digital`` (each member
      uploads alone; a group's upload ends with its slowest member's), ``tdma``
      (members upload one after another), ``ideal`` (digital TDMA timing, exact
      aggregation: the noiseless reference). Digital uplinks aggregate exactly.
    synchronous: mix with weight 1 (one group: FedAvg).
    beta0, staleness_exponent: :math:`\\beta_0` and ``a`` of the asynchronous mixing.
    policy: AirComp power control (:data:`jaxfl.planners.power.POLICIES`).
  """

  uplink: str
  synchronous: bool
  beta0: float = 0.6
  staleness_exponent: float = 0.5
  policy: str = "optimal"

  def __post_init__(self):
    if self.uplink not in UPLINKS:
      raise ConfigError("uplink", f"one of {list(UPLINKS)}", self.uplink)
    if not 0 < self.beta0 <= 1:
      raise ConfigError("beta0", "a mixing weight in (0, 1]", self.beta0)
    if self.staleness_exponent < 0:
      raise ConfigError("staleness_exponent", "a non-negative number", self.staleness_exponent)


class Schedule(NamedTuple):
  """The run's events in time order (``[E]`` each); events past ``t_max`` are invalid."""

  time: jax.Array  # arrival time at the server
  group: jax.Array  # int32 group index
  round: jax.Array  # int32, the group's round counter
  valid: jax.Array  # bool, arrives by t_max


class Trace(NamedTuple):
  """Per event (``[E]``): what the server saw and the global model's test metrics after it."""

  time: jax.Array
  valid: jax.Array
  group: jax.Array
  staleness: jax.Array  # int32 tau of the arriving group
  accuracy: jax.Array
  loss: jax.Array
  mse: jax.Array  # AirComp aggregation MSE (normalised signal domain); 0 when digital
  mse_by_policy: dict[str, jax.Array]  # the same channel under each power policy
  initial_accuracy: jax.Array  # scalar, before any update


def _member_gains(key, path_gain, members, round_, comm: Comm):
  """|h|² of a group's member slots on round ``round_`` (padding slots: whatever, masked later)."""
  k = jax.random.fold_in(key, round_)
  return fading_gain_sq(k, path_gain[jnp.maximum(members, 0)], fading=comm.fading,
                        rician_k=comm.rician_k)


def upload_time(gain_sq, mask, num_params: int, method: Method, comm: Comm) -> jax.Array:
  """Seconds a group's upload takes on this round's channel (``mask``: real members)."""
  if method.uplink == "aircomp":
    return jnp.float32(num_params / comm.bandwidth_hz)
  rate = shannon_rate(gain_sq, comm.max_power, comm.noise_var, comm.bandwidth_hz)
  each = jnp.minimum(num_params * comm.bits_per_param / jnp.maximum(rate, 1e-30),
                     comm.max_upload_time)
  each = jnp.where(mask, each, 0.0)
  return jnp.max(each) if method.uplink == "digital" else jnp.sum(each)


def schedule(key, members, compute_time, path_gain, *, num_params: int, method: Method,
             comm: Comm, t_max: float, jitter: tuple[float, float], rounds: int,
             events: int) -> Schedule:
  """Every group's round ends, merged in time order (first ``events`` of them).

  Args:
    key: the run's key (jitter and channels come from its sub-keys).
    members: ``[M, S]`` worker indices per group, ``-1`` padding (an all-padding group
      never arrives).
    compute_time: ``[N]`` expected compute seconds per local round.
    path_gain: ``[N]`` large-scale gains.
    rounds: rounds simulated per group (enough that the fastest group passes ``t_max``).
    events: how many of the earliest arrivals to keep.
  """
  mask = members >= 0
  m, s = members.shape
  k_jit = jax.random.fold_in(key, KEY_JITTER)
  k_chan = jax.random.fold_in(key, KEY_CHANNEL)
  lo, hi = jitter
  jit = jax.random.uniform(k_jit, [m, rounds, s], minval=lo, maxval=hi)
  comp = jnp.where(mask[:, None], compute_time[jnp.maximum(members, 0)][:, None] * jit, 0.0)

  def group_uploads(g):
    kg = jax.random.fold_in(k_chan, g)
    gains = jax.vmap(lambda r: _member_gains(kg, path_gain, members[g], r, comm))(
        jnp.arange(rounds))
    return jax.vmap(lambda h: upload_time(h, mask[g], num_params, method, comm))(gains)

  up = jax.vmap(group_uploads)(jnp.arange(m))  # [M, R]
  duration = jnp.max(comp, -1) + up + comm.download_time
  duration = jnp.where(jnp.any(mask, -1)[:, None], duration, jnp.inf)
  arrive = jnp.cumsum(duration, axis=1).reshape(-1)
  order = jnp.argsort(arrive)[:events]
  time = arrive[order]
  return Schedule(time, (order // rounds).astype(jnp.int32), (order % rounds).astype(jnp.int32),
                  time <= t_max)


class _Carry(NamedTuple):
  params: Any
  starts: Any  # [M, ...] the model each group trains from
  start_version: jax.Array  # [M] int32
  version: jax.Array  # int32 global updates so far


def run(key, params0, clients: ClientData, members, compute_time, path_gain, evaluate, *,
        loss_fn: LossFn, learning_rate: float, batch_size: int, local_steps: int,
        method: Method, comm: Comm, t_max: float, jitter: tuple[float, float], rounds: int,
        events: int, policies: tuple[str, ...] = (), beta0: jax.Array | None = None,
        axis: ClientAxis | None = None) -> Trace:
  """Simulate one method to ``t_max`` seconds: a pure function of its inputs (jit/vmap it).

  Args:
    key: the run's key.
    params0: initial global model.
    clients: every worker's padded data ``[N, n_max, ...]`` with counts.
    members: ``[M, S]`` groups (``-1`` padding).
    compute_time, path_gain: ``[N]`` per worker (see :func:`schedule`).
    evaluate: ``evaluate(params) -> (accuracy, loss)`` on the test set.
    loss_fn, learning_rate, batch_size, local_steps: local SGD of every member.
    method, comm: see :class:`Method` and :class:`Comm`.
    t_max, jitter, rounds, events: see :func:`schedule`.
    policies: power policies whose MSE on each AirComp round's channel is also
      reported (``Trace.mse_by_policy``).
    beta0: overrides ``method.beta0`` (may be traced, e.g. vmapped over a grid).
    axis: how a group's member slots are mapped (default: vmap on one device).

  Returns:
    The :class:`Trace` of every event.
  """
  num_params = sum(x.size for x in jax.tree.leaves(params0))
  sched = schedule(key, members, compute_time, path_gain, num_params=num_params, method=method,
                   comm=comm, t_max=t_max, jitter=jitter, rounds=rounds, events=events)
  k_chan = jax.random.fold_in(key, KEY_CHANNEL)
  k_train = jax.random.fold_in(key, KEY_TRAIN)
  k_noise = jax.random.fold_in(key, KEY_NOISE)
  local_train = make_local_train(loss_fn, optax.sgd(learning_rate), batch_size=batch_size,
                                 max_steps=local_steps, mask_steps=False)
  # A group's member slots are the client axis: training and the uplink's collective run
  # through the runtime (vmap here; shard_map needs member slots divisible by devices).
  axis = axis or ClientAxis()
  axis.check_num_clients(members.shape[1], "members")
  aggregator = (aircomp_mean(axis.axis_name, noise_var=comm.noise_var, policy=method.policy)
                if method.uplink == "aircomp" else weighted_mean(axis.axis_name))
  num_groups = jnp.sum(jnp.any(members >= 0, -1))
  total = jnp.sum(clients.count).astype(jnp.float32)
  max_power = jnp.full([members.shape[1]], comm.max_power, jnp.float32)

  def step(carry: _Carry, event):
    time, g, r, valid = event
    ids = members[g]
    mask = ids >= 0
    safe = jnp.maximum(ids, 0)
    data = jax.tree.map(lambda a: a[safe], clients)
    start = jax.tree.map(lambda a: a[g], carry.starts)
    k_round = jax.random.fold_in(jax.random.fold_in(k_train, g), r)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_round, safe)
    counts = jnp.where(mask, data.count, 0).astype(jnp.float32)
    group_size = jnp.sum(counts)
    weights = counts / jnp.maximum(group_size, 1.0)
    gains = _member_gains(jax.random.fold_in(k_chan, g), path_gain, ids, r, comm)
    gains = jnp.where(mask, gains, 0.0)
    k_n = jax.random.fold_in(jax.random.fold_in(k_noise, g), r)

    def member(data, key, weight, gain):
      """One member slot: train, then send its update through the group's uplink."""
      new, _ = local_train(start, data, jnp.int32(local_steps), key)
      delta = jax.tree.map(lambda n, s: jnp.where(weight > 0, n - s, 0.0), new, start)
      extra = (dict(gain_sq=gain, noise_key=k_n, max_power=comm.max_power)
               if method.uplink == "aircomp" else {})
      mean, agg_state = aggregator.update(delta, aggregator.init(start), weight=weight, **extra)
      # Digital uploads are decoded exactly: no aggregation error.
      return mean, getattr(agg_state, "mse", jnp.float32(0.0))

    delta, mse = axis.map(member, in_axes=(0, 0, 0, 0), out_axes=(None, None))(
        data, keys, weights, gains)
    by_policy = {}
    for name in policies:
      pc = power_control(name, gains, max_power, weights, comm.noise_var)
      by_policy[name] = aggregation_mse(gains, pc.power, pc.eta, weights, comm.noise_var)
    model = jax.tree.map(lambda s, d: s + d, start, delta)
    tau = carry.version - carry.start_version[g]
    if method.synchronous:
      beta = jnp.float32(1.0)
    else:
      beta = jnp.minimum(1.0, (method.beta0 if beta0 is None else beta0) * group_size / total
                         * num_groups
                         * (tau + 1.0) ** -method.staleness_exponent)
    beta = jnp.where(valid, beta, 0.0)
    params = jax.tree.map(lambda w, m: (1 - beta) * w + beta * m, carry.params, model)
    version = carry.version + valid.astype(jnp.int32)
    starts = jax.tree.map(lambda a, p: a.at[g].set(jnp.where(valid, p, a[g])), carry.starts, params)
    start_version = carry.start_version.at[g].set(
        jnp.where(valid, version, carry.start_version[g]))
    accuracy, loss = evaluate(params)
    out = (tau, accuracy, loss, mse, by_policy)
    return _Carry(params, starts, start_version, version), out

  m = members.shape[0]
  carry = _Carry(params0, jax.tree.map(lambda p: jnp.broadcast_to(p, (m, *p.shape)), params0),
                 jnp.zeros([m], jnp.int32), jnp.int32(0))
  _, (tau, acc, loss, mse, by_policy) = jax.lax.scan(
      step, carry, (sched.time, sched.group, sched.round, sched.valid))
  acc0, _ = evaluate(params0)
  return Trace(sched.time, sched.valid, sched.group, tau, acc, loss, mse, by_policy, acc0)


def time_to_target(trace: Trace, target: float) -> jax.Array:
  """Simulated time of the first update after which accuracy reaches ``target`` (``inf``: never)."""
  hit = trace.valid & (trace.accuracy >= target)
  return jnp.where(trace.initial_accuracy >= target, 0.0,
                   jnp.min(jnp.where(hit, trace.time, jnp.inf)))


def accuracy_at(trace: Trace, times: jax.Array) -> jax.Array:
  """The global model's accuracy at each of ``times``: after the last update before it."""
  t = jnp.where(trace.valid, trace.time, jnp.inf)
  idx = jnp.searchsorted(t, times, side="right") - 1
  return jnp.where(idx >= 0, trace.accuracy[jnp.maximum(idx, 0)], trace.initial_accuracy)


def bounds(compute_time, groups_per_seed, *, t_max: float, jitter_low: float) -> tuple[int, int]:
  """Static ``(rounds, events)`` for :func:`schedule`, enough for every seed's grouping.

  A group's round lasts at least its slowest member's compute time at the lowest jitter,
  so by ``t_max`` a group arrives at most ``t_max / that + 1`` times.
  """
  compute_time = np.asarray(compute_time, float)
  rounds, events = 1, 1
  for groups in groups_per_seed:
    per_group = [int(t_max / (compute_time[g].max() * jitter_low)) + 2 for g in groups]
    rounds = max(rounds, max(per_group))
    events = max(events, sum(per_group))
  return rounds, events
