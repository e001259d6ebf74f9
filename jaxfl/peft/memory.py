"""Memory accounting of a fine-tuning configuration, measured from JAX.

For one training step of the LM with a given trainable set, optimizer and
:class:`~jaxfl.models.transformer.Plan`, :func:`footprint` reports

* ``trainable_bytes``: the parameters that receive gradients (and as many gradient bytes);
* ``optimizer_bytes``: the optimizer state of those parameters (``tx.init`` shapes);
* ``activation_bytes``: residuals reverse-mode differentiation saves between the forward
  and backward pass, excluding the caller's own arrays (weights, batch): measured with
  :func:`jaxfl.models.quant.saved_residual_bytes` from the traced VJP;
* ``frozen_bytes``: parameters held but not trained (the same for every PEFT method).

Nothing is computed or allocated: everything is traced with ``jax.eval_shape``. These are
the bytes FedQuad (arXiv 2506.01001) and DropPEFT (arXiv 2503.10217) trade against time:
LoRA depth ``d`` makes ``activation_bytes`` grow linearly in ``d`` (nothing below block
``L - d`` is differentiated), and int8 storage of a block's saved activations (only its
int8 input, :func:`jaxfl.models.quant.quantized_remat`) cuts that block's share by about
two orders of magnitude.

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> from jaxfl.models import transformer
  >>> from jaxfl.models import lora
  >>> cfg = transformer.VARIANTS['tiny'].with_lora(4)
  >>> params = transformer.init(cfg, jax.random.key(0))
  >>> x = jnp.zeros((2, 16), jnp.int32)
  >>> fp = footprint(cfg, params, lora.is_lora_path, optax.adam(1e-3), x, x)
  >>> fp.trainable_bytes  # 2 blocks x r=4 x (3 x (32 + 32) + (32 + 128)) x 4 bytes
  11264
  >>> fp.optimizer_bytes  # Adam's mu and nu, and its int32 step count
  22532
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
import optax

from jaxfl.errors import ConfigError
from jaxfl.models import lora, transformer
from jaxfl.models.quant import saved_residual_bytes
from jaxfl.sim import tree_bytes


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes of one training step's state (see the module docstring)."""

  trainable_bytes: int
  optimizer_bytes: int
  activation_bytes: int
  frozen_bytes: int

  @property
  def total_bytes(self) -> int:
    """What fine-tuning adds on top of holding the model: trainable params, their
    gradients, optimizer state and saved activations."""
    return 2 * self.trainable_bytes + self.optimizer_bytes + self.activation_bytes

  @property
  def device_bytes(self) -> int:
    """What a device holds to take the step: every parameter (frozen and trainable) plus
    :attr:`total_bytes`."""
    return self.frozen_bytes + self.total_bytes


def footprint(config: transformer.LMConfig, params: dict, rule: lora.PathRule,
              tx: optax.GradientTransformation, inputs, targets, *,
              plan: transformer.Plan | None = None) -> Footprint:
  """Measure one step's bytes for the leaves ``rule`` selects, trained by ``tx``.

  Args:
    config: the model shape.
    params: its parameters (arrays or ``jax.ShapeDtypeStruct``-compatible arrays).
    rule: which parameter paths train (:mod:`jaxfl.models.lora`).
    tx: the optimizer of the trainable leaves.
    inputs: a batch of token windows ``[B, T]``.
    targets: its next tokens ``[B, T]``.
    plan: layer keep mask, gradient floor, quantized blocks (default: none of them).
  """
  plan = transformer.Plan() if plan is None else plan
  trainable, frozen = lora.split(params, lora.path_labels(params, rule))
  if plan.quantized and plan.quant_trainable == "lora":
    wrong = [p for p, _ in lora.leaf_paths(trainable)
             if lora.block_of(p) in plan.quantized and not lora.is_lora_path(p)]
    if wrong:  # a quantized 'lora' block gives those leaves zero gradients
      raise ConfigError("quant_trainable", "'all' when non-adapter leaves of quantized "
                        "blocks train", f"'lora' with {wrong[0]} trainable")
  found = []

  def probe(t, f, x, y):  # everything abstract: params may be ShapeDtypeStructs
    loss = lambda t: transformer.lm_loss(config, lora.combine(t, f), x, y, plan=plan)
    found.append(saved_residual_bytes(loss, t, exclude=(f, x, y)))

  jax.eval_shape(probe, trainable, frozen, inputs, targets)
  residuals = found[0]
  opt_state = jax.eval_shape(tx.init, trainable)
  return Footprint(trainable_bytes=tree_bytes(trainable), optimizer_bytes=tree_bytes(opt_state),
                   activation_bytes=residuals.activation_bytes,
                   frozen_bytes=tree_bytes(frozen))


#: Optimizers :func:`depth_footprint` knows by name (only their state's shapes matter).
OPTIMIZERS = {"sgd": lambda: optax.sgd(1e-3), "momentum": lambda: optax.sgd(1e-3, momentum=0.9),
              "adam": lambda: optax.adam(1e-3)}


def depth_footprint(config: transformer.LMConfig, depth: int, num_quantized: int, *,
                    batch_size: int, seq_len: int, bits: int = 8,
                    optimizer: str = "adam") -> Footprint:
  """:func:`footprint` of LoRA depth ``depth`` with ``num_quantized`` int8-stored blocks.

  FedQuad's configuration :math:`(d, q)` (arXiv 2506.01001): ``config`` carries adapters in
  every block (``lora_layers`` is ignored: the global LoRA of layer-coverage aggregation),
  the adapters of the top ``d`` blocks train (:func:`jaxfl.models.lora.lora_depth_rule`),
  nothing below block ``L - d`` is differentiated (``Plan.grad_floor``) and the lowest ``q``
  tuned blocks, ``L - d .. L - d + q - 1``, save only their ``bits``-bit input
  (``Plan.quantized``; which blocks the paper quantizes is unknown, the lowest hold their
  activations longest: a reconstruction after the project's digest, arXiv 2506.01001).
  Measured from JAX on abstract parameters and a ``[batch_size, seq_len]`` batch, and cached
  per arguments (``config`` is a frozen dataclass, so the key is its value; defaults and
  explicit values share an entry): FedQuad's planner asks for every pair of every device.

  Args:
    config: the model, with ``lora_rank >= 1``.
    depth: ``d`` in ``[1, L]``.
    num_quantized: ``q`` in ``[0, d]``.
    batch_size, seq_len: a local step's batch (``seq_len <= config.max_len``).
    bits: 8, 4 or 2 bits per stored activation.
    optimizer: a name in :data:`OPTIMIZERS` (its state's bytes are counted).

  Raises:
    ConfigError: naming the field.
  """
  layers = config.num_layers
  integer = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
  if config.lora_rank < 1:
    raise ConfigError("lora_rank", "at least 1 (LoRA depth needs adapters)", config.lora_rank)
  if not (integer(depth) and 1 <= depth <= layers):
    raise ConfigError("depth", f"an integer in [1, {layers}]", depth)
  if not (integer(num_quantized) and 0 <= num_quantized <= depth):
    raise ConfigError("num_quantized", f"an integer in [0, depth={depth}]", num_quantized)
  for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
    if not (integer(value) and value >= 1):
      raise ConfigError(name, "a positive integer", value)
  if seq_len > config.max_len:
    raise ConfigError("seq_len", f"at most max_len={config.max_len}", seq_len)
  if optimizer not in OPTIMIZERS:
    raise ConfigError("optimizer", f"one of {sorted(OPTIMIZERS)}", optimizer)
  return _measure(dataclasses.replace(config, lora_layers=None), int(depth), int(num_quantized),
                  int(batch_size), int(seq_len), bits, optimizer)


@functools.lru_cache(maxsize=4096)
def _measure(config: transformer.LMConfig, depth: int, num_quantized: int, batch_size: int,
             seq_len: int, bits: int, optimizer: str) -> Footprint:
  layers = config.num_layers
  floor = layers - depth
  plan = transformer.Plan(grad_floor=floor, quantized=tuple(range(floor, floor + num_quantized)),
                          quant_bits=bits)
  plan.check(layers)
  params = _abstract_params(config)
  batch = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
  return footprint(config, params, lora.lora_depth_rule(layers, depth), OPTIMIZERS[optimizer](),
                   batch, batch, plan=plan)


@functools.lru_cache(maxsize=64)
def _abstract_params(config: transformer.LMConfig):
  return jax.eval_shape(lambda: transformer.init(config, jax.random.key(0)))
