"""Grouped asynchronous FL on a simulated clock: Air-FedGA and its baselines in one engine.

Air-FedGA (Ma et al., arXiv 2507.05704): workers form groups; a group's members train
from the global model the group last received, upload at once and are aggregated over
the air (AirComp, :mod:`jaxfl.transforms.aircomp`), so a group is synchronous; each
group's arrival updates the global model asynchronously, mixed in with a
staleness-aware weight. The update rule below is a **reconstruction** (arXiv 2507.05704's
text was not available; assumed FedAsync-style, after Xie et al., arXiv 1903.03934):

.. math::
  w^{t+1} = (1 - \\beta_g) w^t + \\beta_g \\hat w_g,\\qquad
  \\beta_g = \\min\\big(1, \\beta_0 \\tfrac{D_g}{D} M (\\tau_g + 1)^{-a}\\big),

where :math:`\\hat w_g = w_{start,g} + \\widehat{\\Delta}_g` is the group's model
(its members' sample-weighted mean update, as the AirComp receiver estimates it),
:math:`\\tau_g` its staleness (global updates since the group received its model),
:math:`D_g / D` its share of the data and ``M`` the number of groups. A synchronous
method (one group) takes :math:`\\beta = 1`.

One engine, :class:`GroupedAsync`, covers every method of the comparison by its groups,
its uplink and its mixing (:class:`AirFedGA` is the engine with Air-FedGA's uplink and
mixing as defaults):

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
the whole event sequence is drawn by ``init`` (:func:`schedule`) and kept in the state;
a round (the protocol of :mod:`jaxfl.algorithms.base`) is one server event, so a run is
:func:`jaxfl.loop.scan_rounds` over ``events`` rounds (:meth:`GroupedAsync.simulate`);
padding events past ``t_max`` change nothing.

Upload and channel costs are :mod:`jaxfl.sim.channel`'s. Channel model per round: block
fading :math:`h_k = \\sqrt{L_k}\\, \\tilde h_k` with
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

from jaxfl.algorithms.base import JitRound
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, LossFn, make_local_train
from jaxfl.loop import scan_rounds
from jaxfl.planners.power import aggregation_mse, power_control
from jaxfl.runtime import ClientAxis
from jaxfl.sim.channel import UPLINKS, Comm, fading_gain_sq, group_upload_time
from jaxfl.transforms import aircomp_mean, weighted_mean

# Sub-keys of a run's key.
KEY_JITTER, KEY_CHANNEL, KEY_TRAIN, KEY_NOISE = range(4)


@dataclasses.dataclass(frozen=True)
class Method:
  """How one method aggregates and mixes (its groups are the engine's ``members``).

  Attributes:
    uplink: ``aircomp`` (over the air, with ``policy``), ``digital`` (each member
      uploads alone; a group's upload ends with its slowest member's), ``tdma``
      (members upload one after another), ``ideal`` (digital TDMA timing, exact
      aggregation: the noiseless reference). Digital uplinks aggregate exactly.
    synchronous: mix with weight 1 (one group: FedAvg), or with the engine's ``beta0``
      override as a server step size.
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


def schedule(key, members, compute_time, path_gain, *, num_params: int, uplink: str,
             comm: Comm, t_max: float, jitter: tuple[float, float], rounds: int,
             events: int) -> Schedule:
  """Every group's round ends, merged in time order (first ``events`` of them).

  Args:
    key: the run's key (jitter and channels come from its sub-keys).
    members: ``[M, S]`` worker indices per group, ``-1`` padding (an all-padding group
      never arrives).
    compute_time: ``[N]`` expected compute seconds per local round.
    path_gain: ``[N]`` large-scale gains.
    uplink: one of :data:`jaxfl.sim.channel.UPLINKS` (its upload time).
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
    return jax.vmap(lambda h: group_upload_time(h, mask[g], num_params, uplink, comm))(gains)

  up = jax.vmap(group_uploads)(jnp.arange(m))  # [M, R]
  duration = jnp.max(comp, -1) + up + comm.download_time
  duration = jnp.where(jnp.any(mask, -1)[:, None], duration, jnp.inf)
  arrive = jnp.cumsum(duration, axis=1).reshape(-1)
  order = jnp.argsort(arrive)[:events]
  time = arrive[order]
  return Schedule(time, (order // rounds).astype(jnp.int32), (order % rounds).astype(jnp.int32),
                  time <= t_max)


class GroupedState(NamedTuple):
  """Everything a grouped asynchronous run needs to continue.

  Attributes:
    params: the global model.
    starts: ``[M, ...]`` the model each group trains from (the one it last received).
    start_version: ``[M]`` int32, global updates before each group's model.
    version: int32, global updates so far.
    event: int32, server events processed (the round counter).
    sim_time: float32, arrival time of the last valid event.
    schedule: every event of the run, drawn by ``init``.
    key: the run's root key.
  """

  params: Any
  starts: Any
  start_version: jax.Array
  version: jax.Array
  event: jax.Array
  sim_time: jax.Array
  schedule: Schedule
  key: jax.Array


class EventMetrics(NamedTuple):
  """What one server event did (the round's metrics)."""

  time: jax.Array  # arrival time
  valid: jax.Array  # bool, arrived by t_max (else a padding event that changed nothing)
  group: jax.Array  # int32
  staleness: jax.Array  # int32 tau of the arriving group
  mse: jax.Array  # AirComp aggregation MSE (normalised signal domain); 0 when digital
  mse_by_policy: dict[str, jax.Array]  # the same channel under each power policy


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class GroupedAsync(JitRound):
  """Grouped asynchronous FL on a simulated clock (keyword arguments only).

  A round is one server event: the next group's arrival in the pre-drawn schedule.
  ``members``, ``compute_time``, ``path_gain`` and ``beta0`` may be traced (build the
  engine inside a function vmapped over seeds or a grid); the rest is static.

  Attributes:
    loss_fn: ``loss_fn(params, x, y)`` -> mean loss of a batch; a stochastic model's loss
      takes a fourth argument, the step's key (:func:`jaxfl.local.keyed_loss`).
    learning_rate: every member's local SGD step size.
    batch_size, local_steps: every member's local training.
    method: uplink and mixing (:class:`Method`).
    comm: the wireless uplink's costs (:class:`jaxfl.sim.Comm`).
    members: ``[M, S]`` int32 worker indices per group, ``-1`` padding.
    compute_time: ``[N]`` expected compute seconds per local round.
    path_gain: ``[N]`` large-scale channel gains.
    t_max: simulated seconds of the run.
    jitter: ``(low, high)`` of each round's uniform compute-time factor.
    rounds, events: static bounds of the schedule (:func:`bounds`).
    policies: power policies whose MSE on each AirComp round's channel is also reported.
    beta0: overrides ``method.beta0`` (may be traced, e.g. vmapped over a grid); for a
      synchronous method, the server step size ``min(1, beta0)`` (default 1: FedAvg).
    axis: how a group's member slots are mapped (vmap on one device by default;
      shard_map needs member slots divisible by the devices).
  """

  loss_fn: LossFn
  learning_rate: Any
  batch_size: int
  local_steps: int
  method: Method
  comm: Comm
  members: Any
  compute_time: Any
  path_gain: Any
  t_max: float
  jitter: tuple[float, float]
  rounds: int
  events: int
  policies: tuple[str, ...] = ()
  beta0: Any = None
  axis: ClientAxis = dataclasses.field(default_factory=ClientAxis)

  def __post_init__(self):
    for name in ("batch_size", "local_steps", "rounds", "events"):
      value = getattr(self, name)
      if not (isinstance(value, int) and value > 0):
        raise ConfigError(name, "a positive integer", value)
    if np.ndim(self.members) != 2:
      raise ConfigError("members", "an [M, S] array of worker indices (-1 padding)",
                        np.shape(self.members))
    self.axis.check_num_clients(np.shape(self.members)[1], "members")

  @property
  def _aggregator(self):
    if self.method.uplink == "aircomp":
      return aircomp_mean(self.axis.axis_name, noise_var=self.comm.noise_var,
                          policy=self.method.policy)
    return weighted_mean(self.axis.axis_name)

  def init(self, params, key: jax.Array) -> GroupedState:
    """Every group starts from ``params`` at time 0; the run's events are drawn from ``key``."""
    num_params = sum(x.size for x in jax.tree.leaves(params))
    sched = schedule(key, self.members, self.compute_time, self.path_gain,
                     num_params=num_params, uplink=self.method.uplink, comm=self.comm,
                     t_max=self.t_max, jitter=self.jitter, rounds=self.rounds,
                     events=self.events)
    m = np.shape(self.members)[0]
    starts = jax.tree.map(lambda p: jnp.broadcast_to(p, (m, *p.shape)), params)
    return GroupedState(params, starts, jnp.zeros([m], jnp.int32), jnp.int32(0), jnp.int32(0),
                        jnp.float32(0.0), sched, key)

  def round(self, state: GroupedState,
            clients: ClientData) -> tuple[GroupedState, EventMetrics]:
    """The next event: its group trains from its start model, uploads, and is mixed in.

    ``clients`` holds every worker's padded data ``[N, n_max, ...]`` with counts.
    """
    members, comm, method = self.members, self.comm, self.method
    sched = state.schedule
    time, g, r, valid = (sched.time[state.event], sched.group[state.event],
                         sched.round[state.event], sched.valid[state.event])
    k_chan = jax.random.fold_in(state.key, KEY_CHANNEL)
    k_train = jax.random.fold_in(state.key, KEY_TRAIN)
    k_noise = jax.random.fold_in(state.key, KEY_NOISE)
    local_train = make_local_train(self.loss_fn, optax.sgd(self.learning_rate),
                                   batch_size=self.batch_size, max_steps=self.local_steps,
                                   mask_steps=False)
    aggregator = self._aggregator
    num_groups = jnp.sum(jnp.any(members >= 0, -1))
    total = jnp.sum(clients.count).astype(jnp.float32)
    max_power = jnp.full([members.shape[1]], comm.max_power, jnp.float32)

    ids = members[g]
    mask = ids >= 0
    safe = jnp.maximum(ids, 0)
    data = jax.tree.map(lambda a: a[safe], clients)
    start = jax.tree.map(lambda a: a[g], state.starts)
    k_round = jax.random.fold_in(jax.random.fold_in(k_train, g), r)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_round, safe)
    counts = jnp.where(mask, data.count, 0).astype(jnp.float32)
    group_size = jnp.sum(counts)
    weights = counts / jnp.maximum(group_size, 1.0)
    gains = _member_gains(jax.random.fold_in(k_chan, g), self.path_gain, ids, r, comm)
    gains = jnp.where(mask, gains, 0.0)
    k_n = jax.random.fold_in(jax.random.fold_in(k_noise, g), r)

    def member(data, key, weight, gain):
      """One member slot: train, then send its update through the group's uplink."""
      new, _ = local_train(start, data, jnp.int32(self.local_steps), key)
      delta = jax.tree.map(lambda n, s: jnp.where(weight > 0, n - s, 0.0), new, start)
      extra = (dict(gain_sq=gain, noise_key=k_n, max_power=comm.max_power)
               if method.uplink == "aircomp" else {})
      mean, agg_state = aggregator.update(delta, aggregator.init(start), weight=weight, **extra)
      # Digital uploads are decoded exactly: no aggregation error.
      return mean, getattr(agg_state, "mse", jnp.float32(0.0))

    delta, mse = self.axis.map(member, in_axes=(0, 0, 0, 0), out_axes=(None, None))(
        data, keys, weights, gains)
    by_policy = {}
    for name in self.policies:
      pc = power_control(name, gains, max_power, weights, comm.noise_var)
      by_policy[name] = aggregation_mse(gains, pc.power, pc.eta, weights, comm.noise_var)
    model = jax.tree.map(lambda s, d: s + d, start, delta)
    tau = state.version - state.start_version[g]
    if method.synchronous:  # the server step size: 1 (FedAvg) unless beta0 is given
      beta = jnp.float32(1.0) if self.beta0 is None else jnp.minimum(1.0, self.beta0)
    else:
      beta0 = method.beta0 if self.beta0 is None else self.beta0
      beta = jnp.minimum(1.0, beta0 * group_size / total * num_groups
                         * (tau + 1.0) ** -method.staleness_exponent)
    beta = jnp.where(valid, beta, 0.0)
    params = jax.tree.map(lambda w, m: (1 - beta) * w + beta * m, state.params, model)
    version = state.version + valid.astype(jnp.int32)
    starts = jax.tree.map(lambda a, p: a.at[g].set(jnp.where(valid, p, a[g])), state.starts,
                          params)
    start_version = state.start_version.at[g].set(
        jnp.where(valid, version, state.start_version[g]))
    new_state = GroupedState(params, starts, start_version, version, state.event + 1,
                             jnp.where(valid, time, state.sim_time), sched, state.key)
    return new_state, EventMetrics(time, valid, g, tau, mse, by_policy)

  def simulate(self, params, key: jax.Array, clients: ClientData, evaluate, *,
               progress_every: int = 0) -> Trace:
    """Every event of a run as one scan (:func:`jaxfl.loop.scan_rounds`), the global model
    evaluated after each: a pure function (jit/vmap it).

    ``evaluate(params) -> (accuracy, loss)`` on the test set; ``progress_every``: a
    :func:`jaxfl.progress.tick` every this many events (0: none).
    """
    metric = lambda st: dict(zip(("accuracy", "loss"), evaluate(st.params), strict=True))
    _, m, ev = scan_rounds(self, self.init(params, key), clients, num_rounds=self.events,
                           evaluate=metric, eval_every=1, evaluate_initial=True,
                           progress_every=progress_every)
    return Trace(m.time, m.valid, m.group, m.staleness, ev["accuracy"][1:], ev["loss"][1:],
                 m.mse, m.mse_by_policy, ev["accuracy"][0])


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class AirFedGA(GroupedAsync):
  """Air-FedGA (arXiv 2507.05704): :class:`GroupedAsync` with over-the-air aggregation inside
  groups (optimal power control) and staleness-aware asynchronous mixing across them; pass
  the planned groups (:func:`jaxfl.planners.grouping.plan_groups`) as ``members``."""

  method: Method = Method("aircomp", synchronous=False)


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
