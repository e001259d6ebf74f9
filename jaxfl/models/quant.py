r"""Activations saved for the backward pass in int8: quantized rematerialisation.

Reverse-mode differentiation of a transformer block stores every intermediate the
backward pass needs: the LayerNorm outputs, the attention logits and probabilities
(:math:`[B, H, T, T]`), the MLP hidden layer (:math:`4d` wide), ... -- for a pre-LN
block many times the size of the block's input. :func:`quantized_remat` stores none of
them. It runs the block normally in the forward pass, saves only the block's *input*
``x``, quantized per row (per token, the last axis) to ``bits`` bits with one float32
scale per row, and in the backward pass dequantizes ``x`` and recomputes the block's
VJP there (rematerialisation, as ``jax.checkpoint``, but from a compressed input). This
is the activation quantization of FedQuad (arXiv 2506.01001) with the per-group
absmax + stochastic-rounding scheme of ActNN (Chen et al., ICML 2021, arXiv 2104.14129).

Quantization (:func:`quantize_rows`). For a row :math:`x \in \mathbb{R}^n` and
:math:`Q = 2^{b-1} - 1` (127, 7, 1 for :math:`b` = 8, 4, 2; symmetric, so -128 is unused)

.. math::
  s = \max_j |x_j| / Q, \qquad q_j = \mathrm{round}(x_j / s) \in [-Q, Q], \qquad
  \hat x_j = s\, q_j, \qquad |x_j - \hat x_j| \le s/2 .

With a PRNG key the rounding is stochastic, :math:`q_j = \lfloor x_j/s + u_j \rfloor`
with :math:`u_j \sim U[0, 1)`, so :math:`E[\hat x_j] = x_j` (unbiased) and
:math:`\mathrm{Var}\,\hat x_j \le s^2/4`, :math:`|x_j - \hat x_j| < s`.

Gradients. The backward pass evaluates the exact VJP of ``fn`` at :math:`\hat x`
instead of :math:`x`:

.. math::
  \widehat{\nabla_\theta L} = J_\theta f(\theta, \hat x)^\top \bar y, \qquad
  \widehat{\nabla_x L} = J_x f(\theta, \hat x)^\top \bar y,

where :math:`\bar y` is the output cotangent, which is exact. For smooth ``fn`` the
error is :math:`O(s)`, i.e. :math:`O(2^{-b})` relative to the row's absmax. With
stochastic rounding the estimate is unbiased wherever the VJP is linear in the saved
input -- the weight gradient :math:`\hat x^\top \bar y` of a linear layer, the ActNN
argument -- and only approximately so through nonlinearities such as LayerNorm.

Memory. Per row the residual is :math:`\lceil n b / 8 \rceil` bytes of codes plus a
4-byte scale: codes of 4 and 2 bits are packed two and four to a byte (``uint8``), so
the saving over 8 bits is real in :func:`saved_residual_bytes`. The cost is one extra
forward pass of ``fn`` in the backward pass, as for ``jax.checkpoint``.

:func:`saved_residual_bytes` measures what a reverse-mode pass stores, from JAX itself:
the function returned by ``jax.vjp`` is a pytree whose leaves are exactly the residuals
("First-class VJPs"), which are split into the caller's own arrays (inputs, parameters:
no extra memory) and the rest (activations), by identity.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> def fn(trainable, frozen, x):  # a frozen linear layer with a trainable bias
  ...   return jnp.tanh(x @ frozen['w'] + trainable['b'])
  >>> frozen = {'w': jnp.eye(4)}
  >>> trainable = {'b': jnp.zeros((1, 4))}
  >>> x = jnp.array([[0.5, -1.0, 0.25, 2.0]])
  >>> block = quantized_remat(fn, bits=8)
  >>> bool(jnp.array_equal(block(trainable, frozen, x), fn(trainable, frozen, x)))
  True
  >>> loss = lambda t, x: jnp.sum(block(t, frozen, x))
  >>> g = jax.grad(loss)(trainable, x)['b']
  >>> g_exact = jax.grad(lambda t, x: jnp.sum(fn(t, frozen, x)))(trainable, x)['b']
  >>> bool(jnp.allclose(g, g_exact, atol=1e-2))
  True
  >>> saved = saved_residual_bytes(loss, trainable, x, exclude=frozen)
  >>> saved.activation_bytes  # 4 int8 codes + one float32 scale; plain fn: 2 x 16 bytes
  8
  >>> saved_residual_bytes(lambda t, x: jnp.sum(fn(t, frozen, x)), trainable, x,
  ...                      exclude=frozen).activation_bytes
  32
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.errors import ConfigError

BITS = (2, 4, 8)


def _check_bits(bits: Any) -> None:
  if isinstance(bits, bool) or bits not in BITS:
    raise ConfigError("bits", f"one of {list(BITS)}", bits)


def _check_rows(x: Any, field: str = "x") -> jax.Array:
  if not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 1:
    raise ConfigError(field, "a floating-point array with at least one axis (rows on the last)",
                      f"{x.dtype}{list(x.shape)}")
  return x


def _qmax(bits: int) -> int:
  return 2 ** (bits - 1) - 1


def quantize_rows(x: jax.Array, bits: int = 8,
                  key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  r"""Symmetric absmax quantization of each row (the last axis) to ``bits`` bits.

  :math:`s = \max_j |x_j| / Q` with :math:`Q = 2^{b-1} - 1`, and
  :math:`q = \mathrm{round}(x / s)` (round to nearest, ties to even), or, given ``key``,
  :math:`q = \lfloor x/s + u \rfloor` with :math:`u \sim U[0, 1)` (stochastic rounding,
  ActNN arXiv 2104.14129), so that :math:`E[s q] = x`. The codes are *not* packed here:
  each takes one int8 whatever ``bits`` is (:func:`quantized_remat` packs 2- and 4-bit
  codes into bytes for storage). A row of zeros gets scale 0 and codes 0. Rows must be
  finite.

  Args:
    x: float array ``[..., n]``; any float dtype (computed in float32).
    bits: 2, 4 or 8; codes lie in :math:`[-Q, Q]` = [-1, 1], [-7, 7], [-127, 127].
    key: ``None`` for round to nearest, or a PRNG key (raw ``uint32[2]`` or typed) for
      stochastic rounding.

  Returns:
    ``(q, scale)``: int8 codes ``[..., n]`` and float32 scales ``[..., 1]``; the
    dequantized value is :func:`dequantize_rows` ``(q, scale)`` = ``q * scale``.

  Raises:
    ConfigError: ``bits`` not in {2, 4, 8}, or ``x`` not a floating array with an axis.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, -0.6, 0.26], [0.0, 0.0, 0.0]])
    >>> q, scale = quantize_rows(x, bits=4)
    >>> q.tolist(), scale.ravel().tolist()
    ([[7, -4, 2], [0, 0, 0]], [0.1428571492433548, 0.0])
    >>> bool(jnp.all(jnp.abs(x - dequantize_rows(q, scale)) <= scale / 2))
    True
  """
  _check_bits(bits)
  x = _check_rows(x).astype(jnp.float32)
  qmax = _qmax(bits)
  absmax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
  scale = absmax / qmax
  # A zero row would divide by zero; any positive divisor maps it to codes 0, and its
  # scale stays 0 so that it dequantizes to exactly 0.
  y = x / jnp.where(scale > 0, scale, 1.0)
  if key is None:
    q = jnp.round(y)
  else:
    # floor(y + u) is ceil(y) with probability frac(y), floor(y) otherwise: mean y.
    q = jnp.floor(y + jax.random.uniform(key, y.shape, jnp.float32))
  # |y| <= qmax up to one rounding of the division; the clip only catches that ulp.
  q = jnp.clip(q, -qmax, qmax).astype(jnp.int8)
  return q, scale


def dequantize_rows(q: jax.Array, scale: jax.Array) -> jax.Array:
  """The float32 values ``q * scale`` of codes from :func:`quantize_rows`.

  Args:
    q: integer codes ``[..., n]``.
    scale: float scales ``[..., 1]``.

  Returns:
    float32 ``[..., n]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> dequantize_rows(jnp.array([[127, -1]], jnp.int8), jnp.array([[0.5]])).tolist()
    [[63.5, -0.5]]
  """
  return q.astype(jnp.float32) * scale.astype(jnp.float32)


def _shifts(bits: int, ndim: int) -> jax.Array:
  # Shape [1, ..., 1, k]: broadcast explicitly, the project runs with rank promotion off.
  per_byte = 8 // bits
  return (jnp.arange(per_byte, dtype=jnp.uint8) * bits).reshape((1,) * (ndim - 1) + (per_byte,))


def _pack(q: jax.Array, bits: int) -> jax.Array:
  """int8 codes ``[..., n]`` in [-Q, Q] -> uint8 ``[..., ceil(n bits / 8)]``."""
  if bits == 8:
    return q
  per_byte = 8 // bits
  n = q.shape[-1]
  pad = -n % per_byte
  # Offset to unsigned codes 2^(b-1) + q in [1, 2^b - 1]; padding codes are 0.
  codes = (q.astype(jnp.int32) + 2 ** (bits - 1)).astype(jnp.uint8)
  codes = jnp.pad(codes, [(0, 0)] * (q.ndim - 1) + [(0, pad)])
  codes = codes.reshape(q.shape[:-1] + ((n + pad) // per_byte, per_byte))
  # The fields are disjoint bit ranges, so the sum is their bitwise or and fits a byte.
  return jnp.sum(codes << _shifts(bits, codes.ndim), axis=-1, dtype=jnp.uint8)


def _unpack(packed: jax.Array, bits: int, n: int) -> jax.Array:
  """Inverse of :func:`_pack`: int8 codes ``[..., n]``."""
  if bits == 8:
    return packed
  fields = (packed[..., None] >> _shifts(bits, packed.ndim + 1)) & jnp.uint8(2 ** bits - 1)
  codes = fields.reshape(packed.shape[:-1] + (-1,))[..., :n]
  return (codes.astype(jnp.int32) - 2 ** (bits - 1)).astype(jnp.int8)


def quantized_remat(fn: Callable[[Any, Any, jax.Array], Any],
                    bits: int = 8) -> Callable[..., Any]:
  r"""Wrap ``fn(trainable, frozen, x)`` to save only ``x``, quantized, for backward.

  The wrapper ``g(trainable, frozen, x, key=None)`` returns ``fn(trainable, frozen, x)``
  unchanged (the forward pass is ``fn`` itself, bit for bit). Under reverse-mode
  differentiation it saves the residuals ``(trainable, frozen, codes, scale)`` --
  ``trainable`` and ``frozen`` are the caller's arrays, so they cost nothing extra, and
  the codes are ``x`` quantized per row by :func:`quantize_rows` (2- and 4-bit codes
  packed into bytes) -- instead of ``fn``'s intermediates. The backward pass dequantizes
  :math:`\hat x` and returns, through ``jax.vjp`` of ``(t, h) -> fn(t, frozen, h)`` at
  ``(trainable, x_hat)``, the cotangents of ``trainable`` and ``x``.

  ``frozen`` gets no gradient: its cotangent is zero (it holds the frozen base weights,
  and skipping it saves the backward pass's largest matmuls' weight gradients). Put
  everything that trains in ``trainable``. ``key`` is not differentiated either.

  Args:
    fn: ``fn(trainable, frozen, x) -> out`` with ``trainable``, ``frozen`` arbitrary
      pytrees (dicts, ``nnx.State``) and ``x`` a float array ``[..., d]`` whose last
      axis is the feature axis; typically
      ``lambda t, f, h: nnx.merge(graphdef, t, f)(h)`` of a transformer block. ``out``
      may be any pytree. ``fn`` must be a pure function of its arguments (it is called
      again in the backward pass).
    bits: 8 (per-row error :math:`\le s/2`, :math:`s = \max|x|/127`), 4 or 2.

  Returns:
    ``g(trainable, frozen, x, key=None)``. With ``key=None`` the input is rounded to
    nearest; with a PRNG key it is rounded stochastically (unbiased saved input). The
    key only affects the gradient, never the output.

  Raises:
    ConfigError: ``bits`` not in {2, 4, 8}; (when ``g`` is called) ``x`` not a float
      array with an axis.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> fn = lambda t, f, x: (x * f) @ t
    >>> t, f = jnp.ones((3, 2)), jnp.full((1, 3), 2.0)
    >>> x = jnp.array([[1.0, -2.0, 127.0]])  # integers up to 127: int8 represents them
    >>> g = quantized_remat(fn, bits=8)
    >>> dt, df, dx = jax.grad(lambda t, f, x: g(t, f, x).sum(), argnums=(0, 1, 2))(t, f, x)
    >>> dt[:, 0].tolist(), df.tolist(), dx.tolist()
    ([2.0, -4.0, 254.0], [[0.0, 0.0, 0.0]], [[4.0, 4.0, 4.0]])
  """
  _check_bits(bits)

  # meta = (x dtype, x's last dimension): static, needed to unpack and cast x_hat back.
  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def call(meta, trainable, frozen, x, key):
    del meta, key
    return fn(trainable, frozen, x)

  def call_fwd(meta, trainable, frozen, x, key):
    del meta
    q, scale = quantize_rows(x, bits, key)
    return fn(trainable, frozen, x), (trainable, frozen, _pack(q, bits), scale)

  def call_bwd(meta, residuals, ct):
    dtype, n = meta
    trainable, frozen, packed, scale = residuals
    x_hat = dequantize_rows(_unpack(packed, bits, n), scale).astype(dtype)
    _, vjp_fn = jax.vjp(lambda t, h: fn(t, frozen, h), trainable, x_hat)
    d_trainable, d_x = vjp_fn(ct)
    # None is a zero cotangent: for frozen (by design) and for the key (an integer or
    # typed key array, whose cotangent would be float0).
    return d_trainable, None, d_x, None

  call.defvjp(call_fwd, call_bwd)

  def g(trainable: Any, frozen: Any, x: jax.Array, key: jax.Array | None = None) -> Any:
    x = _check_rows(x)
    return call((np.dtype(x.dtype), x.shape[-1]), trainable, frozen, x, key)

  g.__doc__ = (f"``{getattr(fn, '__name__', 'fn')}(trainable, frozen, x)`` saving only "
               f"``x`` in {bits} bits for backward; see :func:`quantized_remat`.")
  return g


@dataclasses.dataclass(frozen=True)
class ResidualBytes:
  """What a reverse-mode pass stores between the forward and the backward pass.

  Attributes:
    activation_bytes: bytes of residuals computed by the function (activations,
      quantized inputs, constants built inside it): the memory differentiation adds.
    argument_bytes: bytes of residuals that are the caller's own arrays (the arguments
      and ``exclude``), held anyway.
    num_activations: number of distinct activation residuals.
    num_arguments: number of distinct argument residuals.
  """

  activation_bytes: int
  argument_bytes: int
  num_activations: int
  num_arguments: int

  @property
  def total_bytes(self) -> int:
    return self.activation_bytes + self.argument_bytes


def _nbytes(leaf: Any) -> int:
  dtype = leaf.dtype
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    # A typed key array's element is its key data (e.g. uint32[2] for threefry).
    leaf = jax.random.key_data(leaf)
    dtype = leaf.dtype
  return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def saved_residual_bytes(f: Callable[..., Any], *args: Any, exclude: Any = None) -> ResidualBytes:
  r"""Bytes of the residuals that reverse-mode differentiation of ``f(*args)`` stores.

  Measured from JAX, not from formulas: the function ``jax.vjp`` returns is a pytree
  whose leaves are the residuals (JAX 0.10: a ``jax._src.api.VJP`` node). Residuals that
  are the caller's own arrays -- the leaves of ``args`` and of ``exclude`` (e.g. weights
  ``f`` closes over), recognised by identity -- are counted as ``argument_bytes``; all
  others as ``activation_bytes``. Each distinct array is counted once. ``f`` is only
  traced (under ``jax.eval_shape``): nothing is computed or allocated.

  This is the jaxpr-level residual set. A compiled program may store less (XLA can fuse
  or rematerialise cheap elementwise residuals) and holds other temporaries as well, so
  this is the memory reverse mode *asks for*, the quantity remat policies control.

  Args:
    f: the function to differentiate; its output may be any pytree.
    *args: its arguments (pytrees of arrays).
    exclude: a pytree of arrays closed over by ``f`` to count as arguments.

  Returns:
    :class:`ResidualBytes`.

  Examples:
    >>> import jax.numpy as jnp
    >>> w, x = jnp.ones((8, 8)), jnp.ones((2, 8))
    >>> saved_residual_bytes(lambda w, x: jnp.sin(x @ w).sum(), w, x)  # cos(x w), w, x
    ResidualBytes(activation_bytes=64, argument_bytes=320, num_activations=1, num_arguments=2)
  """
  found: dict[str, int] = {}

  def probe(*traced_args):
    _, vjp_fn = jax.vjp(f, *traced_args)
    own = {id(leaf) for leaf in jax.tree.leaves((traced_args, exclude))}
    seen: set[int] = set()
    act = arg = n_act = n_arg = 0
    for leaf in jax.tree.leaves(vjp_fn):
      if id(leaf) in seen or not hasattr(leaf, "dtype"):
        continue
      seen.add(id(leaf))
      if id(leaf) in own:
        arg, n_arg = arg + _nbytes(leaf), n_arg + 1
      else:
        act, n_act = act + _nbytes(leaf), n_act + 1
    found.update(activation_bytes=act, argument_bytes=arg, num_activations=n_act,
                 num_arguments=n_arg)

  jax.eval_shape(probe, *args)
  return ResidualBytes(**found)
