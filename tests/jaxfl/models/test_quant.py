"""Quantized rematerialisation: int8 (and 4-, 2-bit) inputs saved for the backward pass.

A small pre-LN transformer block (LayerNorm, causal softmax attention, GELU MLP with a
LoRA pair, residuals; d=64, T=32, batch 4) is the function under test; the LoRA pair
trains, the rest is frozen.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfl.errors import ConfigError
from jaxfl.models import quant
from jaxfl.models.quant import dequantize_rows, quantize_rows, quantized_remat, saved_residual_bytes

B, T, D, HEADS, RANK = 4, 32, 64, 4, 8


def _layer_norm(x, gain, bias):
  mu = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * gain + bias


def block(trainable, frozen, x):
  """Pre-LN block: x + attn(LN(x)), then + MLP(LN(.)) with LoRA on the MLP's up-projection."""
  f = frozen
  h = _layer_norm(x, f["ln1_g"], f["ln1_b"])
  q, k, v = (jnp.reshape(h @ f[w], (B, T, HEADS, D // HEADS)) for w in ("wq", "wk", "wv"))
  logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D // HEADS)
  causal = jnp.tril(jnp.ones((T, T), bool))[None, None]
  probs = jax.nn.softmax(jnp.where(causal, logits, -1e30), axis=-1)
  att = jnp.reshape(jnp.einsum("bhts,bshd->bthd", probs, v), (B, T, D))
  x = x + att @ f["wo"]
  h = _layer_norm(x, f["ln2_g"], f["ln2_b"])
  up = h @ f["w1"] + (h @ trainable["lora_a"]) @ trainable["lora_b"]
  return x + jax.nn.gelu(up) @ f["w2"]


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(42)  # numpy: no per-shape compilation of random kernels

  def normal(shape, std):
    return jnp.asarray(std * rng.standard_normal(shape), jnp.float32)

  frozen = {
      "ln1_g": 1.0 + normal((1, 1, D), 0.1), "ln1_b": normal((1, 1, D), 0.1),
      "ln2_g": 1.0 + normal((1, 1, D), 0.1), "ln2_b": normal((1, 1, D), 0.1),
      "wq": normal((D, D), D ** -0.5), "wk": normal((D, D), D ** -0.5),
      "wv": normal((D, D), D ** -0.5), "wo": normal((D, D), D ** -0.5),
      "w1": normal((D, 4 * D), D ** -0.5), "w2": normal((4 * D, D), (4 * D) ** -0.5),
  }
  # lora_b is nonzero (as after some training) so both factors get a gradient.
  trainable = {"lora_a": normal((D, RANK), D ** -0.5), "lora_b": normal((RANK, 4 * D), 0.1)}
  x = normal((B, T, D), 1.0)
  ct = normal((B, T, D), 1.0)
  return trainable, frozen, x, ct


def _rel(a, b):
  return float(jnp.linalg.norm(jnp.ravel(a - b)) / jnp.linalg.norm(jnp.ravel(b)))


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _grads(fn, trainable, frozen, x, ct, *key):
  """d/d(trainable, x) of <fn(...), ct>: the VJP with cotangent ct, through jax.grad."""
  return jax.grad(lambda t, x: jnp.sum(fn(t, frozen, x, *key) * ct), argnums=(0, 1))(trainable, x)


def test_quantize_round_trip_within_half_a_step():
  x = _normal(0, (3, 5, 33)) * jnp.array([1e-3, 1.0, 1e3])[:, None, None]
  x = x.at[0, 0].set(0.0)  # a zero row: scale 0, codes 0, exact
  for bits in (2, 4, 8):
    q, scale = quantize_rows(x, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == jnp.int8 and q.shape == x.shape
    assert scale.dtype == jnp.float32 and scale.shape == (3, 5, 1)
    assert int(jnp.max(jnp.abs(q))) == qmax  # the absmax element hits the end code
    err = jnp.abs(x - dequantize_rows(q, scale))
    assert bool(jnp.all(err <= scale / 2 * (1 + 1e-6))), (bits, float(jnp.max(err / scale)))
    assert float(jnp.max(err[0, 0])) == 0.0
  q16, s16 = quantize_rows(x.astype(jnp.bfloat16), 8)  # any float dtype is accepted
  assert q16.dtype == jnp.int8 and s16.dtype == jnp.float32


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("n", [5, 64])  # 5: padded to whole bytes
def test_pack_round_trip(bits, n):
  q, _ = quantize_rows(_normal(n, (2, 3, n)), bits)
  packed = quant._pack(q, bits)
  assert packed.shape == (2, 3, -(-n * bits // 8))
  np.testing.assert_array_equal(quant._unpack(packed, bits, n), q)


@pytest.mark.slow
def test_stochastic_rounding_unbiased_and_deterministic():
  x = _normal(1, (4, 64))
  keys = jax.random.split(jax.random.PRNGKey(2), 200)
  q, scale = jax.jit(jax.vmap(lambda k: quantize_rows(x, 8, k)))(keys)
  x_hat = dequantize_rows(q, scale)  # [200, 4, 64]
  step = scale[0]
  assert bool(jnp.all(jnp.abs(x_hat - x[None]) < step[None] * (1 + 1e-6)))  # < one step
  bias = (jnp.mean(x_hat, axis=0) - x) / step  # per element, in quantization steps
  assert abs(float(jnp.mean(bias))) <= 0.01, float(jnp.mean(bias))
  # Per element, the mean of 200 draws has std sqrt(p(1-p)/200) <= 0.035 steps, so its
  # mean |bias| is ~0.02 steps; round-to-nearest is off by |frac - round(frac)|, ~0.25.
  q_rtn, _ = quantize_rows(x, 8)
  rtn_bias = jnp.mean(jnp.abs(dequantize_rows(q_rtn, step) - x) / step)
  sr_bias = jnp.mean(jnp.abs(bias))
  assert float(sr_bias) <= 0.05 < 0.15 <= float(rtn_bias), (float(sr_bias), float(rtn_bias))
  # Deterministic given the key, different across keys; typed keys work too.
  np.testing.assert_array_equal(quantize_rows(x, 8, keys[0])[0], q[0])
  assert bool(jnp.any(q[0] != q[1]))
  q_typed, _ = quantize_rows(x, 8, jax.random.key(3))
  assert q_typed.dtype == jnp.int8


def test_forward_is_bit_identical(setup):
  trainable, frozen, x, _ = setup
  expected = jax.jit(block)(trainable, frozen, x)

  @jax.jit  # a separate program from block's: nothing is shared by common subexpressions
  def outputs(trainable, frozen, x, key):
    g8, g2 = quantized_remat(block, 8), quantized_remat(block, 2)
    out_vjp, _ = jax.vjp(lambda t, x: g8(t, frozen, x), trainable, x)  # the fwd rule's output
    return (g8(trainable, frozen, x), g2(trainable, frozen, x), g8(trainable, frozen, x, key),
            out_vjp)

  for out in outputs(trainable, frozen, x, jax.random.PRNGKey(0)):
    np.testing.assert_array_equal(out, expected)


@pytest.fixture(scope="module")
def block_grads(setup):
  """Gradients of <block(...), ct> w.r.t. (trainable, x): exact, and quantized per bits."""
  trainable, frozen, x, ct = setup

  @jax.jit  # one compilation for all of them
  def grads(trainable, frozen, x, ct, key):
    return {"exact": _grads(block, trainable, frozen, x, ct),
            "bits": {bits: _grads(quantized_remat(block, bits), trainable, frozen, x, ct)
                     for bits in (8, 4, 2)},
            "stochastic": _grads(quantized_remat(block, 8), trainable, frozen, x, ct, key)}

  return [grads(trainable, frozen, x, ct, jax.random.PRNGKey(seed)) for seed in (0, 0, 1)]


def test_saved_activation_bytes(setup):
  trainable, frozen, x, ct = setup
  plain = saved_residual_bytes(lambda t, x: jnp.sum(block(t, frozen, x) * ct), trainable, x,
                               exclude=(frozen, ct))
  saved = {}
  for bits in (8, 4, 2):
    g = quantized_remat(block, bits)
    saved[bits] = saved_residual_bytes(lambda t, x: jnp.sum(g(t, frozen, x) * ct), trainable, x,
                                       exclude=(frozen, ct))
    # Exactly the packed codes and one float32 scale per token: nothing of the block.
    assert saved[bits].activation_bytes == B * T * (D * bits // 8 + 4), (bits, saved[bits])
  ratio = plain.activation_bytes / saved[8].activation_bytes
  # Measured: plain 1,140,744 bytes in 26 residuals (34.8 float32 copies of x) vs int8
  # 8,704 (131x), 4-bit 4,608 (248x), 2-bit 2,560 (446x).
  assert ratio >= 3, f"int8 saves {ratio:.1f}x, not >= 3x ({plain} vs {saved[8]})"
  assert plain.activation_bytes >= 20 * x.size * 4, plain
  # Parameters are residuals of both, counted as arguments, not activations.
  assert saved[8].argument_bytes > 0 and plain.argument_bytes > 0


def test_saved_residual_bytes_agrees_with_jax_internal_listing(setup):
  trainable, frozen, x, _ = setup
  internal = pytest.importorskip("jax._src.ad_checkpoint")
  if not hasattr(internal, "saved_residuals"):
    pytest.skip("jax._src.ad_checkpoint.saved_residuals is gone")
  f = lambda t, f, x: jnp.sum(block(t, f, x))  # noqa: E731
  ours = saved_residual_bytes(f, trainable, frozen, x)
  listed = internal.saved_residuals(f, trainable, frozen, x)
  is_arg = [src.startswith("from the argument") for _, src in listed]
  nbytes = [int(np.prod(aval.shape)) * aval.dtype.itemsize for aval, _ in listed]
  assert ours.argument_bytes == sum(n for n, a in zip(nbytes, is_arg) if a)
  assert ours.activation_bytes == sum(n for n, a in zip(nbytes, is_arg) if not a)


@pytest.mark.slow
def test_gradient_error_by_bits(block_grads):
  got = block_grads[0]["bits"]
  exact = block_grads[0]["exact"]
  # Measured max over (lora_a, lora_b, x): 8 bits 0.008, 4 bits 0.15, 2 bits 0.81 (ternary
  # codes with a per-token absmax scale: 2 bits is too coarse for this scheme).
  bounds = {8: 0.05, 4: 0.3, 2: 1.0}
  errors = {}
  for bits, bound in bounds.items():
    errors[bits] = {name: _rel(a, b) for name, a, b in (
        ("lora_a", got[bits][0]["lora_a"], exact[0]["lora_a"]),
        ("lora_b", got[bits][0]["lora_b"], exact[0]["lora_b"]),
        ("x", got[bits][1], exact[1]))}
    assert max(errors[bits].values()) <= bound, (bits, errors[bits])
  # Fewer bits, larger errors.
  assert max(errors[8].values()) < max(errors[4].values()) < max(errors[2].values()), errors


def test_stochastic_rounding_gradient(block_grads):
  a, b, c = (result["stochastic"] for result in block_grads)  # keys 0, 0, 1
  exact = block_grads[0]["exact"]
  jax.tree.map(np.testing.assert_array_equal, a, b)  # deterministic given the key
  assert bool(jnp.any(a[1] != c[1]))
  for grads in (a, c):
    assert max(_rel(grads[0][name], exact[0][name]) for name in exact[0]) <= 0.05
    assert _rel(grads[1], exact[1]) <= 0.05


@pytest.mark.slow
def test_linear_fn_exact_gradient_and_zero_frozen_cotangent():
  # Integer inputs with absmax 127 in every row: scale 1, so x_hat == x exactly.
  x = np.random.default_rng(0).integers(-127, 128, (3, 6, 16)).astype(np.float32)
  x[..., 0] = 127.0
  x = jnp.asarray(x)
  t, f = _normal(1, (16, 8)), _normal(2, (16, 8))
  fn = lambda t, f, x: x @ (f + t)  # noqa: E731
  g = quantized_remat(fn, 8)
  np.testing.assert_array_equal(g(t, f, x), fn(t, f, x))  # eager, too, the forward is fn's
  loss = lambda fn: lambda t, f, x, *key: jnp.sum(jnp.sin(fn(t, f, x, *key)))  # noqa: E731
  dt, df, dx = jax.grad(loss(g), argnums=(0, 1, 2))(t, f, x)
  dt_ref, _, dx_ref = jax.grad(loss(fn), argnums=(0, 1, 2))(t, f, x)
  np.testing.assert_allclose(dt, dt_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(df, jnp.zeros_like(f))  # frozen: no gradient, by design
  # Stochastic rounding of exactly representable values is exact too; the key, raw or
  # typed, gets a float0 cotangent, under jit as well.
  for key in (jax.random.PRNGKey(0), jax.random.key(0)):
    for grad in (jax.grad, lambda *a, **k: jax.jit(jax.grad(*a, **k))):
      dt_k, df_k, dx_k, dkey = grad(loss(g), argnums=(0, 1, 2, 3), allow_int=True)(t, f, x, key)
      # (jit fuses the sin differently from eager: float32 rounding, ~6e-6 relative)
      np.testing.assert_allclose(dt_k, dt_ref, rtol=2e-5, atol=1e-5)
      np.testing.assert_allclose(dx_k, dx_ref, rtol=2e-5, atol=1e-5)
      np.testing.assert_array_equal(df_k, jnp.zeros_like(f))
      assert dkey.dtype == jax.dtypes.float0


def test_nnx_states():
  model = nnx.LoRALinear(D, D, lora_rank=4, rngs=nnx.Rngs(0))
  model.lora.lora_b[...] = 0.1 * _normal(1, (4, D))  # not 0, so lora_a has a gradient
  graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
  fn = lambda t, f, h: jax.nn.gelu(nnx.merge(graphdef, t, f)(h))  # noqa: E731
  x = _normal(0, (2, 8, D))
  loss = lambda fn: lambda t, x: jnp.sum(fn(t, rest, x) ** 2)  # noqa: E731
  got = jax.jit(jax.grad(loss(quantized_remat(fn, 8))))(lora, x)
  exact = jax.jit(jax.grad(loss(fn)))(lora, x)
  assert jax.tree.structure(got) == jax.tree.structure(exact)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(exact)):
    assert _rel(a, b) <= 0.05


def test_bad_input_raises_config_error(setup):
  trainable, frozen, _, _ = setup
  for bits in (3, 16, True, "8"):
    with pytest.raises(ConfigError, match="bits"):
      quantized_remat(block, bits)
    with pytest.raises(ConfigError, match="bits"):
      quantize_rows(jnp.ones((2, 2)), bits)
  g = quantized_remat(block, 8)
  with pytest.raises(ConfigError, match="x"):
    g(trainable, frozen, jnp.ones((B, T, D), jnp.int32))
  with pytest.raises(ConfigError, match="x"):
    quantize_rows(jnp.float32(1.0))
