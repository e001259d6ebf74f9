"""A small decoder-only transformer language model with LoRA-ready layers and a KV cache.

Pre-LN GPT blocks (Radford et al. 2019): for block input :math:`x`,

.. math::
  h = x + \\mathrm{Attn}(\\mathrm{LN}_1(x)), \\qquad y = h + \\mathrm{MLP}(\\mathrm{LN}_2(h)),

with causal multi-head self-attention, a GELU MLP, learned position embeddings, a final
LayerNorm and an untied output head over a byte-level vocabulary.

Every dense layer is a :class:`jaxfl.models.lora.LoRALinear`:
``y = x W + b + (alpha / r) (x A) B`` with
``A`` ``[in, r]`` Kaiming-uniform and ``B`` ``[r, out]`` zero (Hu et al. 2021,
arXiv 2106.09685; the HF PEFT defaults), so a model with adapters computes exactly the
function of the model without them until ``B`` is trained. Adapters are created on the
layers named by :attr:`LMConfig.lora_targets` in the blocks :attr:`LMConfig.lora_layers`.

The model is an NNX module inside; jaxfl code handles it as ``(config, params)`` with
``params`` a plain nested dict (``nnx.to_pure_dict``), through :func:`init`, :func:`apply`,
:func:`decode` and :func:`generate`. Block ``i``'s parameters sit at ``params['blocks'][i]``
and adapters at ``...[name]['lora_a' | 'lora_b']``, so trainability is a function of the
parameter path (see :mod:`jaxfl.models.lora`).

Training-time structure is a static :class:`Plan`: the blocks kept in this step (layer
dropout), the lowest block that receives gradients (LoRA depth), and the blocks whose saved
activations are stored in int8 (activation quantization).

| variant | layers | d_model | heads | d_ff | context | params  |
|---------|--------|---------|-------|------|---------|---------|
| tiny    | 2      | 32      | 2     | 128  | 64      | 44,290    |
| small   | 6      | 128     | 4     | 512  | 128     | 1,272,578 |

(vocabulary 258: 256 bytes, EOS and BOS; counts without adapters.)

Examples:
  >>> import jax, jax.numpy as jnp
  >>> cfg = VARIANTS['tiny']
  >>> params = init(cfg, jax.random.key(0))
  >>> tokens = jnp.zeros((2, 16), jnp.int32)
  >>> apply(cfg, params, tokens).shape
  (2, 16, 258)
  >>> num_params(params)
  44290
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxfl.errors import ConfigError
from jaxfl.models import lora, quant
from jaxfl.models.lora import LoRALinear

Params = dict[str, Any]

#: Byte-level vocabulary: the 256 byte values, EOS and BOS (jaxfl.data.corpus.ByteTokenizer).
VOCAB_SIZE = 258
LINEAR_NAMES = ("query", "key", "value", "out", "up", "down")


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Shape of a :class:`TransformerLM` and where it carries LoRA adapters.

  Attributes:
    num_layers: transformer blocks ``L``.
    d_model: residual width.
    num_heads: attention heads (must divide ``d_model``).
    d_ff: MLP hidden width.
    max_len: longest sequence (position embeddings, KV cache).
    vocab_size: tokens.
    lora_rank: adapter rank ``r``; 0 means no adapters.
    lora_alpha: adapter scale numerator, ``scale = lora_alpha / lora_rank``.
    lora_targets: which dense layers of a block get adapters (names in ``LINEAR_NAMES``).
    lora_layers: blocks that get adapters; ``None`` means all (LoRA depth ``d`` is
      ``range(L - d, L)``).
  """

  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  max_len: int
  vocab_size: int = VOCAB_SIZE
  lora_rank: int = 0
  lora_alpha: float = 8.0
  lora_targets: tuple[str, ...] = ("query", "value", "out", "up")
  lora_layers: tuple[int, ...] | None = None

  def __post_init__(self):
    for name in ("num_layers", "d_model", "num_heads", "d_ff", "max_len", "vocab_size"):
      value = getattr(self, name)
      if not (isinstance(value, int) and value > 0):
        raise ConfigError(f"{name}", "a positive integer", value)
    if self.d_model % self.num_heads:
      raise ConfigError("num_heads", f"a divisor of d_model={self.d_model}", self.num_heads)
    if not (isinstance(self.lora_rank, int) and self.lora_rank >= 0):
      raise ConfigError("lora_rank", "an integer >= 0", self.lora_rank)
    if not (isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha) and
            self.lora_alpha > 0):
      raise ConfigError("lora_alpha", "a positive number", self.lora_alpha)
    unknown = [t for t in self.lora_targets if t not in LINEAR_NAMES]
    if unknown:
      raise ConfigError("lora_targets", f"names among {LINEAR_NAMES}", unknown)
    if self.lora_layers is not None and any(
        not 0 <= i < self.num_layers for i in self.lora_layers):
      raise ConfigError("lora_layers", f"block indices in [0, {self.num_layers})",
                        self.lora_layers)

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def has_lora(self, layer: int, name: str) -> bool:
    return (self.lora_rank > 0 and name in self.lora_targets and
            (self.lora_layers is None or layer in self.lora_layers))

  def with_lora(self, rank: int, *, alpha: float | None = None,
                targets: Sequence[str] | None = None, depth: int | None = None) -> LMConfig:
    """This shape with adapters of ``rank`` on ``targets`` in the top ``depth`` blocks."""
    if depth is not None and not (isinstance(depth, int) and 1 <= depth <= self.num_layers):
      raise ConfigError("lora_depth", f"an integer in [1, {self.num_layers}]", depth)
    layers = None if depth is None else tuple(range(self.num_layers - depth, self.num_layers))
    return dataclasses.replace(
        self, lora_rank=rank, lora_alpha=self.lora_alpha if alpha is None else alpha,
        lora_targets=self.lora_targets if targets is None else tuple(targets),
        lora_layers=layers)


VARIANTS = {
    "tiny": LMConfig(num_layers=2, d_model=32, num_heads=2, d_ff=128, max_len=64),
    "small": LMConfig(num_layers=6, d_model=128, num_heads=4, d_ff=512, max_len=128),
}


def get_variant(name: str, field: str = "variant") -> LMConfig:
  if name not in VARIANTS:
    raise ConfigError(field, f"one of {sorted(VARIANTS)}", name)
  return VARIANTS[name]


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static training-time structure of one forward pass (hashable: a jit static argument).

  Attributes:
    keep: per-block keep mask for layer dropout; a dropped block is the identity.
      ``None`` keeps all. (A traced mask goes to :func:`apply`'s ``keep`` instead.)
    grad_floor: the hidden state entering this block is ``stop_gradient``-ed, so blocks
      below it are neither differentiated nor store activations for backward (LoRA depth
      ``d`` is ``grad_floor = L - d``).
    quantized: blocks whose activations are saved for backward as int8 rows
      (:func:`jaxfl.models.quant.quantized_remat`); the block recomputes its VJP from them.
    quant_bits: bits of that storage.
    quant_trainable: which leaves of a quantized block receive gradients: ``'lora'`` (the
      adapters; its other leaves get an exact zero gradient, as frozen base weights) or
      ``'all'`` (full fine-tuning, block expansion). :func:`jaxfl.peft.memory.footprint`
      rejects ``'lora'`` when non-adapter leaves of a quantized block train.
  """

  keep: tuple[bool, ...] | None = None
  grad_floor: int = 0
  quantized: tuple[int, ...] = ()
  quant_bits: int = 8
  quant_trainable: str = "lora"

  def check(self, num_layers: int) -> None:
    """ConfigError naming the field unless this plan fits a model of ``num_layers`` blocks."""
    if self.keep is not None and (len(self.keep) != num_layers or
                                  not all(isinstance(k, bool) for k in self.keep)):
      raise ConfigError("keep", f"None or {num_layers} Python bools", self.keep)
    if not (isinstance(self.grad_floor, int) and 0 <= self.grad_floor <= num_layers):
      raise ConfigError("grad_floor", f"an integer in [0, {num_layers}]", self.grad_floor)
    if any(not (isinstance(i, int) and 0 <= i < num_layers) for i in self.quantized):
      raise ConfigError("quantized", f"block indices in [0, {num_layers})", self.quantized)
    if self.quant_bits not in (2, 4, 8):
      raise ConfigError("quant_bits", "2, 4 or 8", self.quant_bits)
    if self.quant_trainable not in ("lora", "all"):
      raise ConfigError("quant_trainable", "'lora' or 'all'", self.quant_trainable)


class KVCache(NamedTuple):
  """Keys and values of every block, ``[L, batch, heads, max_len, head_dim]`` each."""

  k: jax.Array
  v: jax.Array


class Block(nnx.Module):
  """Pre-LN transformer block: causal self-attention then a GELU MLP, each residual."""

  def __init__(self, config: LMConfig, layer: int, *, rngs: nnx.Rngs):
    d, f = config.d_model, config.d_ff
    self.num_heads = config.num_heads

    def linear(name, a, b):
      rank = config.lora_rank if config.has_lora(layer, name) else 0
      return LoRALinear(a, b, rank=rank, scale=config.lora_scale, rngs=rngs)

    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.query, self.key, self.value = linear("query", d, d), linear("key", d, d), linear(
        "value", d, d)
    self.out = linear("out", d, d)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.up, self.down = linear("up", d, f), linear("down", f, d)

  def attention(self, x, kv=None, start=0):
    """Causal attention of ``x`` ``[B, S, d]`` at positions ``start..start+S-1``.

    With ``kv = (k_all, v_all, layer)`` (every block's cache, ``[L, B, H, max_len, dh]``,
    and this block's index), the new keys and values are written into the cache at those
    positions (an in-place update of the whole cache, not a copy of this layer's slice) and
    queries attend to every cached position up to their own; returns the output and the
    updated ``(k_all, v_all)``.
    """
    b, s, d = x.shape
    h = self.num_heads
    split = lambda t: t.reshape(b, s, h, d // h).transpose(0, 2, 1, 3)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    if kv is not None:
      k_all, v_all, layer = kv
      k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype),
                                           (layer, 0, 0, start, 0))
      v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype),
                                           (layer, 0, 0, start, 0))
      k, v, kv = k_all[layer], v_all[layer], (k_all, v_all)
    qpos = start + jnp.arange(s)
    kpos = jnp.arange(k.shape[2])
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d // h)
    scores = jnp.where((kpos[None, :] <= qpos[:, None])[None, None], scores, -jnp.inf)
    attn = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(scores, axis=-1), v)
    return self.out(attn.transpose(0, 2, 1, 3).reshape(b, s, d)), kv

  def __call__(self, x, kv=None, start=0):
    a, kv = self.attention(self.ln1(x), kv, start)
    x = x + a
    x = x + self.down(jax.nn.gelu(self.up(self.ln2(x))))
    return x if kv is None else (x, kv)


class TransformerLM(nnx.Module):
  """Decoder-only LM: token + position embeddings, ``L`` blocks, final LN, output head."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(),
                                                        (config.max_len, config.d_model)))
    self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(config.num_layers)])
    self.ln_f = nnx.LayerNorm(config.d_model, rngs=rngs)
    self.head = LoRALinear(config.d_model, config.vocab_size, rngs=rngs)

  def __call__(self, tokens: jax.Array, *, plan: Plan = Plan(), keep: jax.Array | None = None,
               key: jax.Array | None = None) -> jax.Array:
    """Logits ``[B, T, vocab]`` of next tokens, with ``plan``'s training-time structure.

    Args:
      tokens: int ``[B, T]``, ``T <= max_len``.
      plan: static structure (layer keep mask, gradient floor, quantized blocks).
      keep: optional traced bool ``[L]`` keep mask (layer dropout inside a scan); a
        dropped block is skipped at run time with ``lax.cond``.
      key: PRNG key for stochastic rounding of quantized activations (``None``: nearest).
    """
    plan.check(self.config.num_layers)
    _check_length(tokens.shape[1], 0, self.config.max_len)
    x = self.embed(tokens) + self.pos_embed[...][None, : tokens.shape[1]]
    for i, block in enumerate(self.blocks):
      if i == plan.grad_floor and i > 0:  # before the keep check: a dropped floor still stops
        x = jax.lax.stop_gradient(x)
      if plan.keep is not None and not plan.keep[i]:
        continue
      if i in plan.quantized:
        run = functools.partial(_quantized_block, block, plan,
                                None if key is None else jax.random.fold_in(key, i))
      else:
        run = block
      x = run(x) if keep is None else jax.lax.cond(keep[i], run, lambda h: h, x)
    return self.head(self.ln_f(x))

  def decode(self, tokens: jax.Array, cache: KVCache, start) -> tuple[jax.Array, KVCache]:
    """Logits of ``tokens`` ``[B, S]`` at positions ``start..``, reading/writing ``cache``."""
    _check_length(tokens.shape[1], start, self.config.max_len)
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embed[...], start, tokens.shape[1])
    x = self.embed(tokens) + pos[None]
    k_all, v_all = cache
    for i, block in enumerate(self.blocks):
      x, (k_all, v_all) = block(x, (k_all, v_all, i), start)
    return self.head(self.ln_f(x)), KVCache(k_all, v_all)


def _check_length(length: int, start, max_len: int) -> None:
  """Positions past ``max_len`` have no embedding (and would be clamped silently)."""
  if isinstance(start, int) and start + length > max_len:
    raise ConfigError("tokens", f"positions within max_len={max_len}",
                      f"positions {start}..{start + length - 1}")


def _quantized_block(block: Block, plan: Plan, key, x):
  """Run ``block`` saving only its int8 input for backward (see :mod:`jaxfl.models.quant`)."""
  graphdef, state = nnx.split(block)
  params = nnx.to_pure_dict(state)
  is_trainable = lora.is_lora_path if plan.quant_trainable == "lora" else (lambda path: True)
  trainable, frozen = lora.split(params, lora.path_labels(params, is_trainable))
  fn = lambda t, f, h: nnx.merge(graphdef, lora.combine(t, f))(h)
  return quant.quantized_remat(fn, bits=plan.quant_bits)(trainable, frozen, x, key)


@functools.lru_cache(maxsize=64)
def graphdef(config: LMConfig) -> nnx.GraphDef:
  """The static graph of ``TransformerLM(config)`` (no parameters are materialised)."""
  abstract = nnx.eval_shape(lambda: TransformerLM(config, rngs=nnx.Rngs(0)))
  return nnx.split(abstract)[0]


def init(config: LMConfig, key: jax.Array) -> Params:
  """Fresh parameters of ``TransformerLM(config)`` as a nested dict."""
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # a legacy uint32 PRNGKey
  model = TransformerLM(config, rngs=nnx.Rngs(params=key))
  return nnx.to_pure_dict(nnx.state(model))


def module(config: LMConfig, params: Params) -> TransformerLM:
  """The NNX module holding ``params`` (traceable: use inside jit)."""
  return nnx.merge(graphdef(config), params)


def apply(config: LMConfig, params: Params, tokens: jax.Array, *, plan: Plan = Plan(),
          keep: jax.Array | None = None, key: jax.Array | None = None) -> jax.Array:
  """Logits ``[B, T, vocab]``; see :meth:`TransformerLM.__call__`."""
  return module(config, params)(tokens, plan=plan, keep=keep, key=key)


def init_cache(config: LMConfig, batch_size: int, dtype=jnp.float32) -> KVCache:
  """An empty KV cache for ``batch_size`` sequences of up to ``config.max_len`` tokens."""
  shape = (config.num_layers, batch_size, config.num_heads, config.max_len,
           config.d_model // config.num_heads)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def decode(config: LMConfig, params: Params, tokens: jax.Array, cache: KVCache,
           start) -> tuple[jax.Array, KVCache]:
  """Incremental forward: logits of ``tokens`` at positions ``start..`` and the new cache.

  Feeding a sequence in chunks through the cache gives the full forward's logits (to
  float32 rounding, checked to 1e-5 in the tests).
  """
  return module(config, params).decode(tokens, cache, start)


def generate(config: LMConfig, params: Params, prompt: jax.Array, num_tokens: int, *,
             use_cache: bool = True) -> jax.Array:
  """Greedy continuation of ``prompt`` ``[B, P]`` by ``num_tokens`` tokens, ``[B, P + n]``.

  With ``use_cache`` the prompt is encoded once and each new token costs one position of
  attention over the cache; without it every step reruns the full forward on the whole
  (fixed-size, causally masked) buffer, the baseline of the ``bench_lm`` decoding benchmark.
  """
  b, p = prompt.shape
  total = p + num_tokens
  if total > config.max_len:
    raise ConfigError("num_tokens", f"prompt + new tokens <= max_len={config.max_len}", total)
  buffer = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)

  if use_cache:
    logits, cache = decode(config, params, prompt, init_cache(config, b), 0)

    def step(carry, t):
      buffer, cache, last = carry
      token = jnp.argmax(last, axis=-1).astype(jnp.int32)
      buffer = jax.lax.dynamic_update_slice(buffer, token[:, None], (0, t))
      logits, cache = decode(config, params, token[:, None], cache, t)
      return (buffer, cache, logits[:, -1]), None

    (buffer, _, _), _ = jax.lax.scan(step, (buffer, cache, logits[:, -1]), jnp.arange(p, total))
    return buffer

  def step_nocache(buffer, t):
    logits = apply(config, params, buffer)
    last = jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False)
    token = jnp.argmax(last, axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(buffer, token[:, None], (0, t)), None

  buffer, _ = jax.lax.scan(step_nocache, buffer, jnp.arange(p, total))
  return buffer


def num_params(params: Any) -> int:
  """Number of scalars in a parameter tree."""
  return sum(x.size for x in jax.tree.leaves(params))


def lm_loss(config: LMConfig, params: Params, inputs: jax.Array, targets: jax.Array, *,
            plan: Plan = Plan(), keep: jax.Array | None = None,
            key: jax.Array | None = None) -> jax.Array:
  """Mean next-token cross-entropy (nats per token)."""
  logits = apply(config, params, inputs, plan=plan, keep=keep, key=key)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def lm_metrics(config: LMConfig, params: Params, inputs: jax.Array,
               targets: jax.Array) -> dict[str, jax.Array]:
  """Mean loss (nats/token) and next-token accuracy of a batch of windows."""
  logits = apply(config, params, inputs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  acc = jnp.mean(jnp.argmax(logits, -1) == targets)
  return {"loss": loss, "accuracy": acc}
