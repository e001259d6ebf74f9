"""DiLoCo: M workers train locally for H steps, then synchronise through an outer optimizer.

One outer step (Douillard et al. 2023, arXiv 2311.08105, Algorithm 1):

.. math::
  \\theta_m \\leftarrow \\mathrm{Inner}^{H}(\\theta^{(t-1)};\\ \\mathcal D_m), \\qquad
  \\Delta^{(t)} = \\frac1M \\sum_m (\\theta^{(t-1)} - \\theta_m), \\qquad
  \\theta^{(t)} = \\mathrm{Outer}(\\theta^{(t-1)}, \\Delta^{(t)}),

with AdamW as the inner optimizer and Nesterov SGD as the outer one (``optax.sgd(lr,
momentum=0.9, nesterov=True)``, which takes :math:`\\Delta` as its gradient; arXiv
2311.08105's choices, its outer learning rate 0.7). The inner optimizer's state stays on
each worker from one outer step to the next (only parameters are communicated):
**assumed** (arXiv 2311.08105's text was not checked on this point). Synchronisation is
blocking: every worker waits for the all-reduce, priced on the simulated clock by a WAN model
(:class:`jaxfl.sim.WAN`), ``bytes / bandwidth + latency`` for an all-reduce of
:math:`2 (M-1)/M` times the model's bytes (the ring all-reduce volume); the clock is
**assumed** (this project's simulated clock, :mod:`jaxfl.sim.network`).

Workers are the client axis (:class:`jaxfl.runtime.ClientAxis`): the H inner steps are a
``lax.scan`` inside the per-worker function and the mean pseudo-gradient is a collective.
With one worker, one inner step and the outer ``optax.sgd(1.0)``, DiLoCo is plain
training with the inner optimizer (tested).

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> from jaxfl.local import ClientData
  >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
  >>> alg = DiLoCo(loss, optax.adamw(1e-2), optax.sgd(0.7, momentum=0.9, nesterov=True),
  ...              num_workers=2, inner_steps=5, batch_size=4)
  >>> x = jax.random.normal(jax.random.key(0), (2, 8, 3))
  >>> data = ClientData(x, x @ jnp.ones(3), jnp.array([8, 8]))
  >>> state = alg.init(jnp.zeros(3), jax.random.key(1))
  >>> state, metrics = alg.jit_round(state, data)
  >>> int(state.step), metrics.loss.shape
  (5, ())
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfl.algorithms.base import JitRound
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, LossFn, keyed_loss
from jaxfl.runtime import ClientAxis
from jaxfl.sim import WAN, tree_bytes
from jaxfl.transforms import weighted_mean


def inner_step(loss_fn: LossFn, tx: optax.GradientTransformation, batch_size: int, params,
               opt_state, data: ClientData, key: jax.Array):
  """One worker's inner step on ``batch_size`` examples drawn uniformly from its data;
  returns ``(params, opt_state, loss)``. A stochastic loss gets ``fold_in(key, 1)``."""
  idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(data.count, 1))
  loss, g = jax.value_and_grad(keyed_loss(loss_fn))(params, data.x[idx], data.y[idx],
                                                    jax.random.fold_in(key, 1))
  updates, opt_state = tx.update(g, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


class DiLoCoState(NamedTuple):
  """Everything a DiLoCo run needs to continue.

  Attributes:
    params: the global parameters :math:`\\theta^{(t)}`.
    outer_state: the outer optimizer's state.
    inner_state: each worker's inner optimizer state, stacked ``[M, ...]``.
    step: inner steps done (int32).
    sim_time: simulated seconds (compute plus blocking synchronisation).
    key: the run's root key; outer step ``t``'s key is ``fold_in(key, t)``.
  """

  params: Any
  outer_state: optax.OptState
  inner_state: Any
  step: jax.Array
  sim_time: jax.Array
  key: jax.Array


class DiLoCoMetrics(NamedTuple):
  loss: jax.Array  # mean inner training loss over workers and steps
  worker_loss: jax.Array  # [M], each worker's mean inner loss
  sync_time: jax.Array  # simulated seconds of this outer step's all-reduce


@dataclasses.dataclass(frozen=True, eq=False)
class DiLoCo(JitRound):
  """Blocking DiLoCo over a :class:`~jaxfl.runtime.ClientAxis` of workers.

  Attributes:
    loss_fn: ``loss_fn(params, x, y)`` -> mean loss of a batch; a stochastic model's loss
      takes a fourth argument, the step's key (:func:`jaxfl.local.keyed_loss`).
    inner_tx: the workers' optimizer (AdamW in DiLoCo); its state persists per worker.
    outer_tx: the outer optimizer on the mean pseudo-gradient (Nesterov SGD in DiLoCo).
    num_workers: ``M`` (a multiple of the axis' devices).
    inner_steps: ``H``, inner steps per outer step.
    batch_size: examples per inner step, drawn uniformly from the worker's own data.
    step_time: simulated seconds per inner step.
    wan: the link pricing the blocking all-reduce.
    axis: how workers are mapped (vmap, or shard_map over a mesh).
  """

  loss_fn: LossFn
  inner_tx: optax.GradientTransformation
  outer_tx: optax.GradientTransformation
  num_workers: int
  inner_steps: int
  batch_size: int
  step_time: float = 1.0
  wan: WAN = dataclasses.field(default_factory=WAN)
  axis: ClientAxis = dataclasses.field(default_factory=ClientAxis)

  def __post_init__(self):
    for name in ("num_workers", "inner_steps", "batch_size"):
      value = getattr(self, name)
      if not (isinstance(value, int) and value > 0):
        raise ConfigError(name, "a positive integer", value)
    self.axis.check_num_clients(self.num_workers, "num_workers")
    if not self.step_time >= 0:
      raise ConfigError("step_time", "a non-negative number of seconds", self.step_time)

  def init(self, params, key: jax.Array) -> DiLoCoState:
    """Every worker starts from ``params`` with a fresh inner optimizer state."""
    inner = self.inner_tx.init(params)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_workers, *jnp.shape(x))),
                           inner)
    return DiLoCoState(params, self.outer_tx.init(params), stacked, jnp.zeros([], jnp.int32),
                       jnp.zeros([], jnp.float32), key)

  def round(self, state: DiLoCoState, data: ClientData) -> tuple[DiLoCoState, DiLoCoMetrics]:
    """One outer step; ``data`` holds each worker's examples ``[M, n_max, ...]``."""
    key = jax.random.fold_in(state.key, state.step // self.inner_steps)
    worker_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        key, jnp.arange(self.num_workers))
    mean = weighted_mean(self.axis.axis_name)

    def worker(params, inner_state, data: ClientData, k):
      def step(carry, s):
        p, opt, loss = inner_step(self.loss_fn, self.inner_tx, self.batch_size, *carry, data,
                                  jax.random.fold_in(k, s))
        return (p, opt), loss

      (local, inner_state), losses = jax.lax.scan(step, (params, inner_state),
                                                  jnp.arange(self.inner_steps))
      delta = jax.tree.map(jnp.subtract, params, local)  # the outer "gradient"
      mean_delta, _ = mean.update(delta, mean.init(delta), weight=1.0)
      return mean_delta, inner_state, jnp.mean(losses)

    mapped = self.axis.map(worker, in_axes=(None, 0, 0, 0), out_axes=(None, 0, 0))
    outer_grad, inner_state, worker_loss = mapped(state.params, state.inner_state, data,
                                                  worker_keys)
    updates, outer_state = self.outer_tx.update(outer_grad, state.outer_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sync = jnp.asarray(self.wan.allreduce_time(tree_bytes(state.params), self.num_workers),
                       jnp.float32)
    sim_time = state.sim_time + self.inner_steps * self.step_time + sync
    new_state = DiLoCoState(params, outer_state, inner_state, state.step + self.inner_steps,
                            sim_time, state.key)
    return new_state, DiLoCoMetrics(jnp.mean(worker_loss), worker_loss, sync)
