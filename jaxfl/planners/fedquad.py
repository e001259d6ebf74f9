r"""FedQuad's plan: each device's LoRA depth and number of activation-quantized blocks.

FedQuad (Li, Liu, Xu, Huang, arXiv 2506.01001) "adaptively adjusts the LoRA depth (the
number of consecutive tunable LoRA layers from the output) according to device
computational capabilities, while employing activation quantization to reduce memory
overhead"; it "first identifies the feasible and efficient combinations of LoRA depth and
the number of activation quantization layers based on device-specific resource constraints"
and then "employs a greedy strategy to select the optimal configurations for each device".
Its method text is not public: **the algorithm here is a reconstruction** (arXiv 2506.01001)
after the project's digest, with the structure the abstract names.

Costs (:class:`CostModel`, :func:`cost_model`). A configuration is :math:`(d, q)` with
:math:`1 \le d \le L` and :math:`0 \le q \le d`: adapters of the top :math:`d` blocks
train and the lowest :math:`q` of them store their activations in int8. Its memory
:math:`M(d, q)` is *measured* from JAX (:func:`jaxfl.peft.memory.depth_footprint`: every
parameter, the adapters' gradients and optimizer state, and the residuals reverse mode
saves); its round time :math:`t_i(d, q)` on device :math:`i` is *modelled*
(:mod:`jaxfl.sim.devices`: FLOPs from the model's shapes over the device's speed, adapter
bytes over its links).

Step 1, feasible and efficient pairs (:func:`feasible_configs`). For each depth :math:`d`
the least :math:`q` with :math:`M(d, q) \le M_i` (more quantization only adds time and
gradient noise), then drop a pair another one dominates: at least as deep, no more
quantized and no slower, better in one of them.

Step 2, greedy choice (:func:`plan`). The round waits for its slowest device, so the budget
is the time the slowest device needs at its cheapest pair,

.. math::
  T^* = \max_i \min_{(d, q) \in F_i} t_i(d, q),

and each device takes the deepest pair of :math:`F_i` with
:math:`t_i(d, q) \le T^*(1 + \epsilon)` (the least quantized, then the fastest, on ties):
deeper adapters at no cost to the round. The predicted round time is
:math:`\max_i t_i(d_i, q_i)`. A caller may give the budget :math:`T \ge T^*` instead. With
``search=True`` the budget is raised: every pair time :math:`t_i(d, q) \ge T` of every
device is a candidate budget, each gets the greedy choice above, and the candidate of the
largest predicted progress per second

.. math::
  \frac{U}{\max_i t_i(d_i, q_i)}, \qquad
  U = \frac{\sum_i w_i\,(1 - e^{-d_i/\kappa})}{\sum_i w_i},

is kept (the smallest on ties; :math:`w_i` the devices' sample counts). Every candidate is
scanned, rather than stopping at the first raise that does not improve the rate. The utility
is the project's surrogate (deeper adapters learn more per round, with diminishing returns;
the same form as HierFedLoRA's planner here), not the paper's, which is unknown.

Baseline (:func:`uniform_depth`): one depth for every device, the largest that every device
fits without quantization.

Examples:
  >>> from jaxfl.models import transformer
  >>> from jaxfl.sim.devices import device_tiers
  >>> cfg = transformer.LMConfig(num_layers=2, d_model=32, num_heads=2, d_ff=128,
  ...                            max_len=16).with_lora(4)
  >>> model = cost_model(cfg, batch_size=4, seq_len=16, local_steps=2)
  >>> memory = memory_tiers(model)  # depth 1 + 35%, 60%, 100% of the bytes up to depth L
  >>> bool(memory[0] < model.memory[2, 0])  # the weakest cannot fit all-layer LoRA ...
  True
  >>> feasible_configs(model, memory[0])  # ... but can with one block's activations int8
  [(1, 0), (2, 1)]
  >>> devices = device_tiers((1, 1, 1), speed=(4e9, 2e9, 1e9), memory=memory,
  ...                        uplink=(1e6, 1e6, 1e6))
  >>> p = plan(devices, model)  # T*: the slow device at depth 1; nobody fits deeper in it
  >>> p.depth.tolist(), p.quantized.tolist()
  ([1, 1, 1], [0, 0, 0])
  >>> p = plan(devices, model, search=True)  # a longer round: the fast weak device at depth 2
  >>> p.depth.tolist(), p.quantized.tolist()
  ([2, 1, 1], [1, 0, 0])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxfl.errors import ConfigError, check_number
from jaxfl.models import lora, transformer
from jaxfl.peft.memory import depth_footprint
from jaxfl.sim import tree_bytes
from jaxfl.sim.devices import DOWNLOADS, Devices, StepCosts, config_times, step_costs

#: Memory tiers as fractions of the bytes all-layer unquantized LoRA needs beyond depth 1's
#: (:func:`memory_tiers`; the digest's 35%, 60% and 100%): every tier fits uniform depth 1,
#: the weakest cannot fit all-layer LoRA without quantization.
TIER_FRACTIONS = (0.35, 0.6, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class CostModel:
  """What FedQuad's planner reads about a model (build with :func:`cost_model`).

  Attributes:
    config: the model (adapters in every block).
    costs: per-token FLOPs and adapter bytes (:func:`jaxfl.sim.devices.step_costs`).
    memory: float64 ``[L + 1, L + 1]``, ``memory[d, q]`` the measured bytes a device holds
      at ``(d, q)``; ``inf`` where ``d = 0`` or ``q > d``.
    param_bytes: bytes of every parameter (held at any configuration).
    local_steps: local steps per round.
    download: ``'tuned'`` or ``'all'`` (:func:`jaxfl.sim.devices.round_times`).
  """

  config: transformer.LMConfig
  costs: StepCosts
  memory: np.ndarray
  param_bytes: int
  local_steps: int
  download: str = "tuned"

  @property
  def num_layers(self) -> int:
    return self.config.num_layers

  def times(self, devices: Devices) -> np.ndarray:
    """``[N, L + 1, L + 1]`` round times (:func:`jaxfl.sim.devices.config_times`)."""
    return config_times(devices, self.costs, local_steps=self.local_steps,
                        download=self.download)


def cost_model(config: transformer.LMConfig, *, batch_size: int, seq_len: int,
               local_steps: int = 1, bits: int = 8, optimizer: str = "adam",
               download: str = "tuned") -> CostModel:
  """Measure every configuration's memory and derive the time model of ``config``.

  Args:
    config: the LM with ``lora_rank >= 1`` (its ``lora_layers`` is ignored: every block
      carries adapters, the top ``d`` train).
    batch_size, seq_len: one local step's batch.
    local_steps: local steps per round.
    bits: bits of the quantized blocks' stored input.
    optimizer: the local optimizer's name (:data:`jaxfl.peft.memory.OPTIMIZERS`).
    download: what a device downloads each round (:func:`jaxfl.sim.devices.round_times`).
  """
  check_number(local_steps, "local_steps", low=1, integer=True)
  if download not in DOWNLOADS:
    raise ConfigError("download", f"one of {list(DOWNLOADS)}", download)
  layers = config.num_layers
  memory = np.full((layers + 1, layers + 1), math.inf)
  for d in range(1, layers + 1):
    for q in range(d + 1):
      memory[d, q] = depth_footprint(config, d, q, batch_size=batch_size, seq_len=seq_len,
                                     bits=bits, optimizer=optimizer).device_bytes
  full = dataclasses.replace(config, lora_layers=None)
  params = jax.eval_shape(lambda: transformer.init(full, jax.random.key(0)))
  factors: dict[tuple, dict[str, tuple[int, ...]]] = {}
  for path, leaf in lora.leaf_paths(params):
    if lora.block_of(path) == 0 and lora.is_lora_path(path):
      factors.setdefault(path[:-1], {})[path[-1]] = leaf.shape
      itemsize = leaf.dtype.itemsize
  dims = [(f[lora.LORA_A][0], f[lora.LORA_B][1]) for f in factors.values()]
  costs = step_costs(num_layers=layers, d_model=config.d_model, d_ff=config.d_ff,
                     vocab_size=config.vocab_size, seq_len=seq_len, batch_size=batch_size,
                     lora_rank=config.lora_rank, lora_dims=dims, param_bytes=itemsize)
  return CostModel(full, costs, memory, tree_bytes(params), local_steps, download)


def memory_tiers(model: CostModel, fractions: Sequence[float] = TIER_FRACTIONS) -> np.ndarray:
  r"""Memory budgets (bytes) of tiers between LoRA depth 1 and all-layer LoRA, unquantized:

  .. math::
    M_k = M(1, 0) + f_k\,\big(M(L, 0) - M(1, 0)\big).

  :math:`f = 0` fits depth 1 and no more, :math:`f < 1` cannot fit :math:`(L, 0)`,
  :math:`f = 1` fits it exactly. The digest's tiers are 35%, 60% and 100% of all-layer
  LoRA's footprint; here the fractions apply to the bytes beyond depth 1's, so that every
  tier fits uniform-depth LoRA at depth 1: on a tiny LM the depth-independent share (the
  logits' saved activations, the frozen weights) is so large that 35% of the whole cannot
  hold even depth 1 unquantized.
  """
  fractions = np.asarray(fractions, np.float64)
  if fractions.ndim != 1 or fractions.size == 0 or not (np.isfinite(fractions) &
                                                        (fractions >= 0)).all():
    raise ConfigError("fractions", "a non-empty list of non-negative finite numbers",
                      fractions.tolist())
  low, high = model.memory[1, 0], model.memory[model.num_layers, 0]
  return np.floor(low + fractions * (high - low))


def feasible_configs(model: CostModel, memory_bytes: float,
                     times: np.ndarray | None = None) -> list[tuple[int, int]]:
  """Step 1 for one device: ``(d, q)`` pairs by increasing ``d`` (module docstring).

  Args:
    model: the cost model.
    memory_bytes: the device's budget.
    times: its ``[L + 1, L + 1]`` round times; without them only the least ``q`` per ``d``
      is kept (no dominance by time).

  Returns:
    The efficient pairs, possibly none.
  """
  pairs = []
  for d in range(1, model.num_layers + 1):
    fits = np.flatnonzero(model.memory[d, : d + 1] <= memory_bytes)
    if fits.size:
      pairs.append((d, int(fits[0])))
  if times is None:
    return pairs

  def dominated(a):
    return any(b != a and b[0] >= a[0] and b[1] <= a[1] and times[b] <= times[a]
               for b in pairs)

  return [a for a in pairs if not dominated(a)]


class FedQuadPlan(NamedTuple):
  """Each device's configuration and the predicted round."""

  depth: np.ndarray  # int [N], d_i in [1, L]
  quantized: np.ndarray  # int [N], q_i in [0, d_i]
  times: np.ndarray  # float [N], t_i(d_i, q_i) in seconds
  round_time: float  # max_i t_i(d_i, q_i)
  budget: float  # the budget T the choice was made under


def _weights(weights, n: int) -> np.ndarray:
  if weights is None:
    return np.ones(n)
  w = np.asarray(weights, np.float64)
  if w.shape != (n,) or not (np.isfinite(w) & (w >= 0)).all() or w.sum() <= 0:
    raise ConfigError("weights", f"{n} non-negative finite numbers, not all 0",
                      f"shape {w.shape}")
  return w


def _feasible(devices: Devices, model: CostModel, times: np.ndarray) -> list[list]:
  configs = []
  for i, budget in enumerate(devices.memory):
    f = feasible_configs(model, budget, times[i])
    if not f:
      least = float(np.min(model.memory[1:]))
      raise ConfigError("memory", f"at least {least:.0f} bytes on every device (the least "
                        "any configuration needs)",
                        f"{budget:.0f} on device {i}")
    configs.append(f)
  return configs


def plan(devices: Devices, model: CostModel, *, eps: float = 0.0, budget: float | None = None,
         search: bool = False, kappa: float = 2.0, weights=None) -> FedQuadPlan:
  """Step 1 and step 2 for every device (module docstring).

  Args:
    devices: the devices.
    model: :func:`cost_model` of the LM.
    eps: slack :math:`\\epsilon \\ge 0` on the budget.
    budget: the round-time budget :math:`T \\ge T^*` (default :math:`T^*`; ``inf``: every
      device takes its deepest feasible pair).
    search: raise the budget to the candidate of the best progress per second.
    kappa: the utility's depth scale (``search`` only).
    weights: ``[N]`` sample counts for the utility (default equal).

  Raises:
    ConfigError: ``memory`` when a device fits no configuration; ``budget`` below
      :math:`T^*`; bad ``eps``, ``kappa``, ``weights``.
  """
  check_number(eps, "eps", low=0)
  check_number(kappa, "kappa", low=0, strict=True)
  w = _weights(weights, devices.num_devices)
  times = model.times(devices)
  configs = _feasible(devices, model, times)
  pair_times = [np.array([times[i][c] for c in f]) for i, f in enumerate(configs)]
  t_star = float(max(t.min() for t in pair_times))
  if budget is None:
    budget = t_star
  else:
    check_number(budget, "budget", low=0, strict=True, finite=False, unit="seconds")
    if budget < t_star:
      raise ConfigError("budget", f"at least the slowest device's cheapest round, "
                        f"{t_star:.6g} s", budget)

  def choose(limit: float) -> FedQuadPlan:
    """Each device's deepest pair within ``limit (1 + eps)``: least q, then fastest, on ties."""
    picks = []
    for f, t in zip(configs, pair_times):
      ok = [k for k in range(len(f)) if t[k] <= limit * (1 + eps)]
      k = max(ok, key=lambda k: (f[k][0], -f[k][1], -t[k]))
      picks.append((*f[k], t[k]))
    d, q, t = (np.array(col) for col in zip(*picks))
    return FedQuadPlan(d.astype(np.int64), q.astype(np.int64), t, float(t.max()), float(limit))

  best = choose(budget)
  if search:
    utility = lambda p: float(np.sum(w * (1 - np.exp(-p.depth / kappa))) / np.sum(w))
    best_rate = utility(best) / best.round_time
    for limit in sorted({float(x) for t in pair_times for x in t if budget < x}):
      trial = choose(limit)
      rate = utility(trial) / trial.round_time
      if rate > best_rate * (1 + 1e-12):
        best, best_rate = trial, rate
  return best


class UniformPlan(NamedTuple):
  """Uniform-depth LoRA: every device at depth ``depth`` without quantization."""

  depth: int
  times: np.ndarray  # float [N]
  round_time: float


def uniform_depth(devices: Devices, model: CostModel) -> UniformPlan:
  """The baseline: the largest depth every device fits unquantized, and its round.

  Raises:
    ConfigError: ``memory`` when some device cannot fit depth 1 without quantization.
  """
  fits = model.memory[1:, 0][None, :] <= devices.memory[:, None]  # [N, L]
  every = np.flatnonzero(np.cumprod(fits.all(axis=0)))
  if not every.size:
    i = int(np.argmin(devices.memory))
    raise ConfigError("memory", f"at least {model.memory[1, 0]:.0f} bytes on every device "
                      "(LoRA depth 1 unquantized, for uniform-depth LoRA)",
                      f"{devices.memory[i]:.0f} on device {i}")
  d = int(every[-1]) + 1
  times = model.times(devices)[:, d, 0]
  return UniformPlan(d, times, float(times.max()))
