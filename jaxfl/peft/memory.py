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

import jax
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
