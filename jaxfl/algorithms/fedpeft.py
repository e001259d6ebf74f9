"""Federated fine-tuning of a part of a model: FedIT (federated LoRA) and full fine-tuning.

FedIT (Zhang et al., "Towards Building the Federated GPT", arXiv 2305.05644) is FedAvg in
which clients train only the LoRA factors of a frozen pre-trained model and the server
averages ``A`` and ``B`` separately:

.. math::
  A \\leftarrow \\sum_k p_k A_k, \\qquad B \\leftarrow \\sum_k p_k B_k
  \\qquad (p_k = n_k / \\textstyle\\sum_j n_j),

which FedAvg's weighted mean of the trainable tree computes (with a server learning rate
of 1). FedIT's method text was not read here: the rule is that of its public code (a
data-size-weighted average of every adapter tensor), and the server step 1, plain
averaging, is assumed from FedAvg (McMahan et al., arXiv 1602.05629).
:class:`FederatedPEFT` runs :class:`~jaxfl.algorithms.FedAvg` on the *trainable*
part of the parameters chosen by a path rule (:mod:`jaxfl.models.lora`): ``is_lora_path`` is
FedIT, ``everything`` federated full fine-tuning, a depth or block rule FedQuad-, HierFedLoRA-
or FedBE-style training (reconstructions from their abstracts: arXiv 2506.01001,
2503.21213, 2506.05977). The frozen part and the device profiles enter each round through
its inputs (:class:`PEFTInputs`, arguments rather than compile-time constants), so one
compiled round serves every seed, and FedAvg's uplink bytes and simulated clock count the
trainable tree only. Only the trainable leaves are
differentiated, so nothing below the lowest trainable block stores activations.

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> from jaxfl.local import ClientData
  >>> from jaxfl.models import transformer
  >>> from jaxfl.models import lora
  >>> from jaxfl.sim import uniform_profiles
  >>> cfg = transformer.VARIANTS['tiny'].with_lora(2)
  >>> fed = FederatedPEFT(cfg, lora.is_lora_path, optax.adam(1e-3), batch_size=2,
  ...                     clients_per_round=2, local_steps=1)
  >>> trainable, frozen = fed.split(transformer.init(cfg, jax.random.key(0)))
  >>> x = jnp.zeros((2, 4, 8), jnp.int32)  # 2 clients x 4 windows x 8 tokens
  >>> clients = ClientData(x, x, jnp.array([4, 4]))
  >>> state = fed.init(trainable, jax.random.key(1))
  >>> state, metrics = fed.jit_round(state, PEFTInputs(clients, frozen, uniform_profiles(2)))
  >>> int(metrics.participants), lora.count(state.params)
  (2, 1408)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import optax

from jaxfl.algorithms.base import JitRound
from jaxfl.algorithms.fedavg import FedAvg, RoundMetrics, ServerState
from jaxfl.local import ClientData
from jaxfl.models import lora, transformer
from jaxfl.runtime import ClientAxis
from jaxfl.sim import DeviceProfiles, uniform_profiles


class PEFTInputs(NamedTuple):
  """What every round of :class:`FederatedPEFT` reads.

  Attributes:
    clients: every client's padded token windows ``[N, n_max, T]`` with counts.
    frozen: the frozen part of the model (:meth:`FederatedPEFT.split`).
    profiles: the clients' device profiles (availability and the simulated clock).
  """

  clients: ClientData
  frozen: dict
  profiles: DeviceProfiles


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedPEFT(JitRound):
  """FedAvg over the leaves of an LM that ``rule`` selects; the rest stays frozen.

  Attributes:
    config: the LM's shape (with adapters if the rule trains them).
    rule: which parameter paths train (e.g. ``lora.is_lora_path`` for FedIT).
    client_tx: client optimizer (fresh state every round).
    server_tx: server optimizer on the pseudo-gradient; SGD(1) averages (FedAvg).
    batch_size: windows per local step.
    clients_per_round: clients sampled per round.
    local_steps: local steps per client per round.
    axis: how clients are mapped (vmap, or shard_map over a mesh).
    aggregator: reducing transform of the clients' *deltas* over the client axis (default:
      the weighted mean, which is FedIT for LoRA factors); a parameter-mode LoRA
      aggregator (FlexLoRA's :func:`jaxfl.transforms.flex_svd`, FFA-LoRA's) plugs in
      through :func:`jaxfl.transforms.delta_aggregator`.
  """

  config: transformer.LMConfig
  rule: lora.PathRule
  client_tx: optax.GradientTransformation
  server_tx: optax.GradientTransformation = dataclasses.field(
      default_factory=lambda: optax.sgd(1.0))
  batch_size: int = 8
  clients_per_round: int = 8
  local_steps: int = 4
  axis: ClientAxis = dataclasses.field(default_factory=ClientAxis)
  aggregator: optax.GradientTransformationExtraArgs | None = None

  def split(self, params: dict) -> tuple[dict, dict]:
    """``(trainable, frozen)`` parts of full model parameters."""
    return lora.split(params, lora.path_labels(params, self.rule))

  def fedavg(self, frozen: dict, profiles: DeviceProfiles) -> FedAvg:
    """The FedAvg algorithm on the trainable tree, its loss closing over ``frozen``."""
    config = self.config

    def loss_fn(trainable, x, y):
      return transformer.lm_loss(config, lora.combine(trainable, frozen), x, y)

    return FedAvg(loss_fn, self.client_tx, self.server_tx, batch_size=self.batch_size,
                  clients_per_round=self.clients_per_round, profiles=profiles,
                  local_steps=self.local_steps, axis=self.axis, aggregator=self.aggregator)

  def init(self, trainable: dict, key: jax.Array) -> ServerState:
    """Server state over the trainable tree (profiles do not enter the state)."""
    # Any profiles of the right size do for init: it reads none of them.
    return self.fedavg({}, uniform_profiles(self.clients_per_round)).init(trainable, key)

  def round(self, state: ServerState, inputs: PEFTInputs) -> tuple[ServerState, RoundMetrics]:
    """One FedAvg round (see :meth:`FedAvg.round`) over the inputs' token windows."""
    return self.fedavg(inputs.frozen, inputs.profiles).round(state, inputs.clients)
