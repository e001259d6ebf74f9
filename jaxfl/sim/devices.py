r"""Device cost model of LoRA fine-tuning at a depth, with activation-quantized blocks.

A device has a compute speed :math:`s` (FLOP/s), a memory budget :math:`M` (bytes), an
uplink :math:`u` and a downlink :math:`v` (bytes/s), and belongs to a tier
(:class:`Devices`, :func:`device_tiers`). Its configuration is FedQuad's pair
(arXiv 2506.01001) :math:`(d, q)`: LoRA on the top :math:`d` of the :math:`L` blocks and the
saved activations of the lowest :math:`q` of those blocks stored in int8.

Time of one round (:func:`round_times`), a reconstruction of FedQuad's cost model after the
project's digest (its equation is not public; arXiv 2506.01001 [R]):

.. math::
  t(d, q) = \frac{\tau\, n \left[L c_f + c_h + d\,(c_b + c_w) + q\,c_q\right]}{s}
          + \frac{S(d)}{u} + \frac{S_\downarrow}{v},

with :math:`\tau` local steps of :math:`n` = batch x sequence tokens, and per token
(:func:`step_costs`, matmul FLOPs counted as :math:`2\cdot` in :math:`\cdot` out, a block of
width :math:`h`, MLP width :math:`f`, sequence :math:`T`, adapters of rank :math:`r` on
layers of shapes :math:`(i_k, o_k)`, vocabulary :math:`V`):

* :math:`c_f = 8h^2 + 4hf + 4Th + 2r\sum_k (i_k + o_k)`: one block's forward -- query, key,
  value and output projections, the MLP's two layers, the scores :math:`QK^\top` and the
  mix :math:`PV` over all :math:`T` keys (the causal mask is applied after the product),
  and the adapters. (The digest's :math:`24h^2 + 4Th` is the case :math:`f = 4h`, no
  adapters.) Every block runs forward, tuned or not.
* :math:`c_b = 8h^2 + 4hf + 8Th + 2r\sum_k (i_k + o_k)`: one tuned block's backward for
  input gradients only (frozen :math:`W` needs no weight gradient): :math:`\bar y W^\top` per
  layer and through the adapters, but both operands of :math:`QK^\top` and :math:`PV` are
  activations, so attention costs twice its forward.
* :math:`c_w = 2r\sum_k (i_k + o_k)`: the adapters' weight gradients
  :math:`x^\top(\bar y B^\top)` and :math:`(xA)^\top \bar y`.
* :math:`c_q = c_f + \kappa h`: a quantized block (:func:`jaxfl.models.quant.quantized_remat`)
  recomputes its forward in the backward pass from the dequantized input, and quantizes and
  dequantizes that input (:math:`\kappa` = :data:`QDQ_OPS` elementwise operations).
* :math:`c_h = 4hV`: the frozen output head's forward and its input gradient (the same for
  every configuration).

Elementwise work (LayerNorm, GELU, softmax, residual adds) is left out: on the tiny LM it is
under a tenth of XLA's FLOP count of a block. So is the lowest tuned block's input gradient
at its own input, which autodiff skips (its input is ``stop_gradient``-ed): an overestimate
of about :math:`6h^2` (the query, key and value products) per token and local step.

:math:`S(d)` is the bytes of the top :math:`d` blocks' adapters, uploaded each round. The
download :math:`S_\downarrow` is the same :math:`S(d)` (``download='tuned'``: the device
refreshes the adapters it tunes; with the downlink at its default, the uplink's rate, the
communication term is the digest's :math:`2 S(d)/u`) or every block's, :math:`S(L)`
(``download='all'``: its forward also reads the lower blocks' adapters, which deeper devices
update). Memory is not modelled here: it is measured from JAX
(:func:`jaxfl.peft.memory.depth_footprint`).

Examples:
  >>> costs = step_costs(num_layers=2, d_model=32, d_ff=128, vocab_size=258, seq_len=16,
  ...                    batch_size=4, lora_rank=4, lora_dims=[(32, 32)] * 3 + [(32, 128)])
  >>> costs.forward  # 8*32^2 + 4*32*128 + 4*16*32 + 2*4*(3*64 + 160)
  29440.0
  >>> devices = device_tiers((1, 1), speed=(1e9, 4e9), memory=(1e6, 2e6), uplink=(1e6, 1e6))
  >>> costs.tokens * (2 * costs.forward + costs.head + 2 * (costs.backward + costs.lora_grad))
  10272768.0
  >>> [round(float(t), 6) for t in round_times(devices, costs, 2, 0, local_steps=1)]
  [0.032801, 0.025096]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxfl.errors import ConfigError, check_number

#: Elementwise operations per activation element of a quantized block's input: absmax,
#: divide, round, clip and cast to quantize; cast and multiply to dequantize; one spare
#: for stochastic rounding's added uniform.
QDQ_OPS = 8
DOWNLOADS = ("tuned", "all")


def _positive(values, field: str, n: int | None = None) -> np.ndarray:
  arr = np.asarray(values, np.float64)
  if arr.ndim != 1 or arr.size == 0 or (n is not None and arr.size != n):
    want = f"a 1-D array of {n}" if n is not None else "a non-empty 1-D array"
    raise ConfigError(field, f"{want} values", f"shape {arr.shape}")
  bad = ~(np.isfinite(arr) & (arr > 0))
  if bad.any():
    i = int(np.argmax(bad))
    raise ConfigError(field, f"positive finite values (device {i})", float(arr[i]))
  return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Devices:
  """Per-device resources, each a float64 array ``[N]`` (validated on construction).

  Attributes:
    speed: compute speed in FLOP/s.
    memory: memory budget in bytes for the model and its fine-tuning state.
    uplink: device-to-server bandwidth in bytes/s.
    downlink: server-to-device bandwidth in bytes/s (default: the uplink's).
    tier: int ``[N]``, the device's tier (default: all 0).
  """

  speed: np.ndarray
  memory: np.ndarray
  uplink: np.ndarray
  downlink: np.ndarray | None = None
  tier: np.ndarray | None = None

  def __post_init__(self):
    speed = _positive(self.speed, "speed")
    n = speed.size
    uplink = _positive(self.uplink, "uplink", n)
    downlink = uplink if self.downlink is None else _positive(self.downlink, "downlink", n)
    tier = np.zeros(n, np.int64) if self.tier is None else np.asarray(self.tier)
    if tier.shape != (n,) or not np.issubdtype(tier.dtype, np.integer) or (tier < 0).any():
      raise ConfigError("tier", f"{n} non-negative integers", self.tier)
    for name, value in (("speed", speed), ("memory", _positive(self.memory, "memory", n)),
                        ("uplink", uplink), ("downlink", downlink), ("tier", tier)):
      object.__setattr__(self, name, value)

  @property
  def num_devices(self) -> int:
    return int(self.speed.size)


def device_tiers(counts: Sequence[int], *, speed: Sequence[float], memory: Sequence[float],
                 uplink: Sequence[float], downlink: Sequence[float] | None = None) -> Devices:
  """``counts[k]`` devices of tier ``k`` with that tier's resources (one value per tier).

  Args:
    counts: devices per tier, each a positive integer.
    speed: FLOP/s per tier.
    memory: bytes per tier.
    uplink: bytes/s per tier.
    downlink: bytes/s per tier (default: the uplink's).

  Raises:
    ConfigError: naming the field: a count below 1, a per-tier list of another length, a
      value that is not positive and finite.

  Examples:
    >>> d = device_tiers((2, 1), speed=(1e9, 8e9), memory=(5e5, 2e6), uplink=(1e6, 1e7))
    >>> d.tier.tolist(), d.memory.tolist()
    ([0, 0, 1], [500000.0, 500000.0, 2000000.0])
  """
  counts = list(counts)
  if not counts:
    raise ConfigError("counts", "at least one tier", counts)
  for c in counts:
    check_number(c, "counts", low=1, integer=True)
  per_tier = {"speed": speed, "memory": memory, "uplink": uplink}
  if downlink is not None:
    per_tier["downlink"] = downlink
  arrays = {}
  for name, values in per_tier.items():
    arr = _positive(values, name)
    if arr.size != len(counts):
      raise ConfigError(name, f"one value per tier ({len(counts)})", list(arr))
    arrays[name] = np.repeat(arr, counts)
  return Devices(**arrays, tier=np.repeat(np.arange(len(counts)), counts))


class StepCosts(NamedTuple):
  """Per-token FLOPs of one local step's pieces, and adapter bytes (module docstring)."""

  forward: float  # c_f: one block's forward, adapters included
  backward: float  # c_b: one tuned block's input-gradient backward
  lora_grad: float  # c_w: one tuned block's adapter weight gradients
  requant: float  # c_q: one quantized block's recomputed forward + (de)quantization
  head: float  # c_h: the output head's forward and input gradient
  lora_bytes: int  # bytes of one block's adapters
  num_layers: int  # L
  tokens: int  # n = batch x sequence tokens per local step


def step_costs(*, num_layers: int, d_model: int, d_ff: int, vocab_size: int, seq_len: int,
               batch_size: int, lora_rank: int, lora_dims: Sequence[tuple[int, int]],
               param_bytes: int = 4, qdq_ops: int = QDQ_OPS) -> StepCosts:
  """:class:`StepCosts` of a pre-LN transformer from its shapes (module docstring).

  Args:
    num_layers, d_model, d_ff, vocab_size: the model's ``L``, ``h``, ``f``, ``V``.
    seq_len, batch_size: a local step's ``T`` and batch; ``n = batch_size * seq_len``.
    lora_rank: adapter rank ``r`` (at least 1).
    lora_dims: ``(in, out)`` of every layer of one block that carries an adapter.
    param_bytes: bytes per adapter parameter (4: float32).
    qdq_ops: elementwise operations per element to quantize and dequantize.
  """
  for name, value in (("num_layers", num_layers), ("d_model", d_model), ("d_ff", d_ff),
                      ("vocab_size", vocab_size), ("seq_len", seq_len),
                      ("batch_size", batch_size), ("lora_rank", lora_rank),
                      ("param_bytes", param_bytes)):
    check_number(value, name, low=1, integer=True)
  check_number(qdq_ops, "qdq_ops", low=0)
  dims = [tuple(int(v) for v in p) for p in lora_dims]
  if not dims or any(len(p) != 2 or min(p) < 1 for p in dims):
    raise ConfigError("lora_dims", "a non-empty list of positive (in, out) pairs", lora_dims)
  h, f, t, r = d_model, d_ff, seq_len, lora_rank
  adapters = 2.0 * r * sum(i + o for i, o in dims)
  dense = 8.0 * h * h + 4.0 * h * f
  forward = dense + 4.0 * t * h + adapters
  return StepCosts(forward=forward, backward=dense + 8.0 * t * h + adapters, lora_grad=adapters,
                   requant=forward + qdq_ops * h, head=4.0 * h * vocab_size,
                   lora_bytes=param_bytes * r * sum(i + o for i, o in dims),
                   num_layers=num_layers, tokens=batch_size * seq_len)


def _configs(costs: StepCosts, depth, num_quantized) -> tuple[np.ndarray, np.ndarray]:
  """Integer ``(d, q)`` arrays broadcast together, each pair a configuration, or ConfigError."""
  layers = costs.num_layers
  d, q = np.broadcast_arrays(np.asarray(depth), np.asarray(num_quantized))
  if not np.issubdtype(d.dtype, np.integer) or ((d < 1) | (d > layers)).any():
    raise ConfigError("depth", f"integers in [1, {layers}]", np.asarray(depth).tolist())
  if not np.issubdtype(q.dtype, np.integer) or ((q < 0) | (q > d)).any():
    raise ConfigError("num_quantized", "integers in [0, depth]",
                      np.asarray(num_quantized).tolist())
  return d.astype(np.int64), q.astype(np.int64)


def step_flops(costs: StepCosts, depth, num_quantized) -> np.ndarray:
  r"""FLOPs of one local step at ``(depth, num_quantized)`` (arrays broadcast together):
  :math:`n\,[L c_f + c_h + d (c_b + c_w) + q c_q]`."""
  d, q = _configs(costs, depth, num_quantized)
  return costs.tokens * (costs.num_layers * costs.forward + costs.head +
                         d * (costs.backward + costs.lora_grad) + q * costs.requant)


def round_times(devices: Devices, costs: StepCosts, depth, num_quantized, *, local_steps: int,
                download: str = "tuned") -> np.ndarray:
  """Seconds of each device's round at its ``(depth, num_quantized)`` (module docstring).

  Args:
    devices: the devices (``[N]``).
    costs: :func:`step_costs` of the model.
    depth: LoRA depth per device (``[N]`` or a scalar for all), in ``[1, L]``.
    num_quantized: int8-stored blocks per device, in ``[0, depth]``.
    local_steps: local steps per round, ``tau >= 1``.
    download: ``'tuned'`` (the ``depth`` blocks' adapters) or ``'all'`` (every block's).

  Returns:
    float64 ``[N]``: compute + upload + download.
  """
  check_number(local_steps, "local_steps", low=1, integer=True)
  if download not in DOWNLOADS:
    raise ConfigError("download", f"one of {list(DOWNLOADS)}", download)
  n = devices.num_devices
  d, q = _configs(costs, depth, num_quantized)
  if d.ndim > 1 or d.size not in (1, n):
    raise ConfigError("depth", f"a scalar or {n} values, one per device", f"shape {d.shape}")
  compute = local_steps * step_flops(costs, d, q) / devices.speed
  down = d if download == "tuned" else costs.num_layers
  return (compute + costs.lora_bytes * d / devices.uplink +
          costs.lora_bytes * down / devices.downlink)


def config_times(devices: Devices, costs: StepCosts, *, local_steps: int,
                 download: str = "tuned") -> np.ndarray:
  """Every device's round time at every configuration: ``[N, L + 1, L + 1]`` indexed
  ``[i, d, q]``, ``inf`` where the pair is not a configuration (``d = 0`` or ``q > d``)."""
  layers = costs.num_layers
  n = devices.num_devices
  out = np.full((n, layers + 1, layers + 1), math.inf)
  for d in range(1, layers + 1):
    for q in range(d + 1):
      out[:, d, q] = round_times(devices, costs, d, q, local_steps=local_steps,
                                 download=download)
  return out
