"""FedAvg and its server-optimizer family (FedAvgM, FedAdam, FedYogi, FedAdagrad).

One round (McMahan et al. 2017, arXiv 1602.05629; Reddi et al. 2021, arXiv 2003.00295):

1. sample ``m`` clients among those online (:func:`jaxfl.sampling.sample_clients`);
2. each trains locally from the server parameters :math:`x_t`
   (:func:`jaxfl.local.make_local_train`) and returns :math:`\\Delta_k = x_k - x_t`;
3. an aggregator reduces the deltas over the client axis (default: the mean weighted
   by sample counts, :func:`jaxfl.transforms.weighted_mean`);
4. a server optimizer (optax) takes the pseudo-gradient :math:`g_t = -\\bar\\Delta`:
   SGD with learning rate 1 is FedAvg (:math:`x_{t+1} = x_t + \\bar\\Delta`), SGD with
   momentum FedAvgM, Adam/Yogi/Adagrad FedAdam/FedYogi/FedAdagrad.

The whole round is one pure function of the server state and the (padded) client
data; keys come from ``fold_in(root, round)`` so a resumed run replays exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfl.algorithms.base import JitRound, is_traced
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, LocalMetrics, LossFn, local_epochs_to_steps, make_local_train
from jaxfl.runtime import ClientAxis
from jaxfl.sampling import sample_clients
from jaxfl.sim import DeviceProfiles, round_time, tree_bytes
from jaxfl.transforms import weighted_mean

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def server_optimizer(name: str, learning_rate: float = 1.0, *, momentum: float = 0.9,
                     b1: float = 0.9, b2: float = 0.99,
                     eps: float = 1e-3) -> optax.GradientTransformation:
  """The server optimizer of a FedOpt algorithm, applied to the pseudo-gradient.

  ``learning_rate`` may be an optax schedule (a function of the server step, e.g.
  ``optax.cosine_decay_schedule``) or a traced scalar (a vmapped sweep over it).
  ``eps`` is the adaptivity :math:`\\tau` of Reddi et al. (arXiv 2003.00295; their range
  1e-3..1e-1). Two departures from their pseudo-code, both optax's: FedAdam and FedYogi
  use bias-corrected moments, and FedAdagrad divides by :math:`\\sqrt{v_t}` with
  :math:`v_{-1} = \\tau^2` (their :math:`\\sqrt{v_t} + \\tau` differs from it by a factor
  of at most 2, since :math:`v_t \\geq \\tau^2`).
  """
  if not callable(learning_rate) and not is_traced(learning_rate) and not learning_rate >= 0:
    raise ConfigError("server_lr", "a non-negative number or an optax schedule", learning_rate)
  if name == "fedavg":
    return optax.sgd(learning_rate)
  if name == "fedavgm":
    return optax.sgd(learning_rate, momentum=momentum)
  if name == "fedadam":
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "fedyogi":
    return optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "fedadagrad":
    return optax.adagrad(learning_rate, initial_accumulator_value=eps**2, eps=0.0)
  raise ConfigError("server_optimizer", f"one of {list(SERVER_OPTIMIZERS)}", name)


class ServerState(NamedTuple):
  """Everything a federated run needs to continue: checkpoint this, nothing else."""

  params: Any
  opt_state: optax.OptState
  agg_state: optax.OptState
  round: jax.Array  # int32, rounds completed
  sim_time: jax.Array  # float32, simulated seconds elapsed
  key: jax.Array  # uint32[2], the run's root key; round keys are fold_in(key, round)


class RoundMetrics(NamedTuple):
  loss: jax.Array  # mean local training loss, weighted by samples
  participants: jax.Array  # int32, clients that trained
  round_time: jax.Array  # simulated seconds of this round
  client_ids: jax.Array  # int32 [m], sampled clients
  client: LocalMetrics  # per sampled client


@dataclasses.dataclass(frozen=True, eq=False)
class FedAvg(JitRound):
  """FedAvg-family algorithm over a :class:`~jaxfl.runtime.ClientAxis`.

  Attributes:
    loss_fn: ``loss_fn(params, x, y)`` -> mean loss of a batch; a stochastic model's loss
      takes a fourth argument, the step's key (:func:`jaxfl.local.keyed_loss`).
    client_tx: client optimizer (fresh state every round).
    server_tx: server optimizer on the pseudo-gradient (:func:`server_optimizer`).
    batch_size: local batch size.
    clients_per_round: ``m``, clients sampled per round (a multiple of the devices).
    local_steps: local steps per client, or ``None`` to use ``local_epochs``.
    local_epochs: epochs over each client's own data (steps vary per client), used
      when ``local_steps`` is ``None``; capped at ``max_local_steps``.
    max_local_steps: scan length when ``local_epochs`` is used.
    profiles: device profiles of all clients (availability and the simulated clock).
    axis: how clients are mapped (vmap on one device, or shard_map over a mesh).
    aggregator: reducing transform; default: mean weighted by sample counts.
  """

  loss_fn: LossFn
  client_tx: optax.GradientTransformation
  server_tx: optax.GradientTransformation
  batch_size: int
  clients_per_round: int
  profiles: DeviceProfiles
  local_steps: int | None = 5
  local_epochs: float | None = None
  max_local_steps: int = 0
  axis: ClientAxis = dataclasses.field(default_factory=ClientAxis)
  aggregator: optax.GradientTransformationExtraArgs | None = None

  def __post_init__(self):
    self.axis.check_num_clients(self.clients_per_round)
    if self.clients_per_round > self.profiles.num_clients:
      raise ConfigError("clients_per_round", f"at most num_clients={self.profiles.num_clients}",
                        self.clients_per_round)
    if self.batch_size <= 0:
      raise ConfigError("batch_size", "a positive integer", self.batch_size)
    if self.local_steps is None:
      if self.local_epochs is None or self.local_epochs <= 0 or self.max_local_steps <= 0:
        raise ConfigError("local_epochs", "a positive number (with max_local_steps > 0) "
                          "when local_steps is None", self.local_epochs)
    elif self.local_steps <= 0:
      raise ConfigError("local_steps", "a positive integer", self.local_steps)

  @property
  def _aggregator(self):
    return self.aggregator or weighted_mean(self.axis.axis_name)

  @property
  def _scan_length(self) -> int:
    return self.local_steps if self.local_steps is not None else self.max_local_steps

  def init(self, params, key: jax.Array) -> ServerState:
    """Initial server state from model parameters and the run's root key."""
    return ServerState(params=params, opt_state=self.server_tx.init(params),
                       agg_state=self._aggregator.init(params), round=jnp.zeros([], jnp.int32),
                       sim_time=jnp.zeros([], jnp.float32), key=key)

  @staticmethod
  def round_keys(state: ServerState) -> tuple[jax.Array, jax.Array]:
    """``(k_sample, k_train)`` of the state's round: the participants are drawn with
    ``k_sample``, client ``k`` trains with ``fold_in(k_train, k)`` (exposed so a benchmark
    or a reference implementation can replay a round's randomness)."""
    k_sample, k_train = jax.random.split(jax.random.fold_in(state.key, state.round))
    return k_sample, k_train

  def round(self, state: ServerState, clients: ClientData) -> tuple[ServerState, RoundMetrics]:
    """One synchronous round; ``clients`` holds every client's padded data ``[N, n_max, ...]``."""
    k_sample, k_train = self.round_keys(state)
    ids, participating = sample_clients(k_sample, self.profiles.availability,
                                        self.clients_per_round)
    batch = jax.tree.map(lambda a: a[ids], clients)
    if self.local_steps is not None:
      steps = jnp.full([self.clients_per_round], self.local_steps, jnp.int32)
    else:
      steps = jnp.minimum(local_epochs_to_steps(batch.count, self.local_epochs, self.batch_size),
                          self.max_local_steps)
    steps = jnp.where(participating, steps, 0)
    weights = jnp.where(participating, batch.count, 0).astype(jnp.float32)
    # A client's key depends on its id, not its slot, so it is the same under any mapping.
    client_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_train, ids)

    # With a fixed number of local steps every client runs the whole scan; a non-participant's
    # work is discarded below instead of masked step by step.
    local_train = make_local_train(self.loss_fn, self.client_tx, batch_size=self.batch_size,
                                   max_steps=self._scan_length,
                                   mask_steps=self.local_steps is None)
    aggregator = self._aggregator

    def client(params, agg_state, data, num_steps, weight, k):
      new_params, metrics = local_train(params, data, num_steps, k)
      # where, not multiply: a discarded client's delta may be non-finite and 0 * inf is nan.
      delta = jax.tree.map(lambda new, old: jnp.where(weight > 0, new - old, 0), new_params, params)
      mean_delta, agg_state = aggregator.update(delta, agg_state, params, weight=weight)
      return mean_delta, agg_state, metrics

    mapped = self.axis.map(client, in_axes=(None, None, 0, 0, 0, 0), out_axes=(None, None, 0))
    mean_delta, agg_state, local = mapped(state.params, state.agg_state, batch, steps, weights,
                                          client_keys)

    pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
    updates, opt_state = self.server_tx.update(pseudo_grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    nbytes = tree_bytes(state.params)
    sampled = jax.tree.map(lambda a: a[ids], self.profiles)
    dt = round_time(sampled, local.samples, participating, bytes_up=nbytes, bytes_down=nbytes)
    sample_w = local.samples.astype(jnp.float32)
    loss = jnp.sum(local.loss * sample_w) / jnp.maximum(jnp.sum(sample_w), 1.0)
    new_state = ServerState(params, opt_state, agg_state, state.round + 1, state.sim_time + dt,
                            state.key)
    metrics = RoundMetrics(loss, jnp.sum(participating).astype(jnp.int32), dt, ids, local)
    return new_state, metrics
