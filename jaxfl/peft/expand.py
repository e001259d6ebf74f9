"""Block expansion: insert transformer blocks that are the exact identity at initialisation.

LLaMA Pro (Wu et al. 2024, arXiv 2401.02415) grows a pre-trained model by copying a block
and zeroing its two output projections. In a pre-LN block

.. math::
  h = x + \\mathrm{Attn}(\\mathrm{LN}_1(x))\\,W_O + b_O, \\qquad
  y = h + \\mathrm{GELU}(\\mathrm{LN}_2(h) W_{up} + b_{up})\\,W_{down} + b_{down},

so :math:`W_O = b_O = W_{down} = b_{down} = 0` gives :math:`y = x` whatever the other
weights are: the expanded model computes exactly the pre-trained function, yet the new
block's gradients are non-zero (through :math:`W_O` and :math:`W_{down}`), so it can learn.
FedBE (arXiv 2506.05977) trains only such new blocks in federated fine-tuning and keeps
every original block frozen, which structurally protects the general knowledge.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from jaxfl.models import transformer
  >>> cfg = transformer.VARIANTS['tiny']
  >>> params = transformer.init(cfg, jax.random.key(0))
  >>> big_cfg, big, new = expand(cfg, params, after=(1,))
  >>> big_cfg.num_layers, new
  (3, (2,))
  >>> x = jnp.arange(8)[None]
  >>> bool(jnp.allclose(transformer.apply(cfg, params, x), transformer.apply(big_cfg, big, x)))
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp

from jaxfl.errors import ConfigError
from jaxfl.models import lora
from jaxfl.models.transformer import LMConfig, Params

#: The projections whose zeroing makes a block the identity.
ZEROED = (("out", "kernel"), ("out", "bias"), ("down", "kernel"), ("down", "bias"))


def uniform_positions(num_layers: int, num_new: int) -> tuple[int, ...]:
  """LLaMA Pro's interleaving: one new block after every ``num_layers / num_new`` originals."""
  if not (isinstance(num_new, int) and 1 <= num_new <= num_layers):
    raise ConfigError("num_new_blocks", f"an integer in [1, {num_layers}]", num_new)
  split = num_layers / num_new
  return tuple(int(round(split * (j + 1))) - 1 for j in range(num_new))


def expand(config: LMConfig, params: Params,
           after: Sequence[int]) -> tuple[LMConfig, Params, tuple[int, ...]]:
  """Insert an identity block after each original block in ``after``.

  Args:
    config: the pre-trained model's shape.
    params: its parameters.
    after: original block indices (repeats allowed: two new blocks after the same one).

  Returns:
    ``(new_config, new_params, new_blocks)``: the expanded model, whose blocks are the
    originals in order with copies of block ``p`` (output projections zeroed) right after
    ``p``, and the indices of the new blocks in it. Adapters of original blocks move with
    them; a new block gets adapters if its source has them.
  """
  after = sorted(int(p) for p in after)
  if not after or any(not 0 <= p < config.num_layers for p in after):
    raise ConfigError("expand_after", f"block indices in [0, {config.num_layers})", after)
  blocks, new, mapping = [], [], {}
  for i in range(config.num_layers):
    mapping[i] = len(blocks)
    blocks.append(params["blocks"][i])
    for _ in range(after.count(i)):
      new.append(len(blocks))
      blocks.append(_identity_copy(params["blocks"][i]))
  lora_layers = config.lora_layers
  if lora_layers is not None:
    lora_layers = tuple(sorted([mapping[i] for i in lora_layers] +
                               [n for n, p in zip(new, after) if p in config.lora_layers]))
  new_config = dataclasses.replace(config, num_layers=len(blocks), lora_layers=lora_layers)
  new_params = dict(params, blocks=dict(enumerate(blocks)))
  return new_config, new_params, tuple(new)


def _identity_copy(block: dict) -> dict:
  copy = {name: dict(layer) if isinstance(layer, dict) else layer for name, layer in block.items()}
  for layer, leaf in ZEROED:
    copy[layer][leaf] = jnp.zeros_like(block[layer][leaf])
  for layer in ("out", "down"):  # a trained adapter there would break the identity
    if "lora_b" in copy[layer]:
      copy[layer]["lora_b"] = jnp.zeros_like(block[layer]["lora_b"])
  return copy


def new_block_rule(new_blocks: Sequence[int]) -> lora.PathRule:
  """Train every leaf of the new blocks (FedBE's trainable set), nothing else."""
  return lora.in_blocks(new_blocks)
