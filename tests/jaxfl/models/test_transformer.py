"""The decoder-only LM: shapes, causality, KV cache, LoRA semantics, layer masks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.errors import ConfigError
from jaxfl.models import lora
from jaxfl.models import transformer as T
from jaxfl.models.lora import merge_lora

TINY = T.VARIANTS["tiny"]
# Jitted entry points: op-by-op (eager) execution compiles every primitive separately.
apply = jax.jit(T.apply, static_argnums=0, static_argnames=("plan",))
decode = jax.jit(T.decode, static_argnums=0)


@pytest.fixture(scope="module")
def params():
  return T.init(TINY, jax.random.key(0))


@pytest.fixture(scope="module")
def tokens():
  return jax.random.randint(jax.random.key(1), (2, 24), 0, 256)


def expected_num_params(c: T.LMConfig) -> int:
  d, f = c.d_model, c.d_ff
  block = 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)  # 2 LNs, q k v out, up, down
  return c.vocab_size * d + c.max_len * d + c.num_layers * block + 2 * d + (d * c.vocab_size
                                                                            + c.vocab_size)


@pytest.mark.parametrize("name", sorted(T.VARIANTS))
def test_parameter_count_matches_the_formula(name):
  c = T.VARIANTS[name]
  shapes = jax.eval_shape(lambda: T.init(c, jax.random.key(0)))
  assert T.num_params(shapes) == expected_num_params(c)
  if name == "small":
    assert 1_000_000 <= T.num_params(shapes) <= 5_000_000


@pytest.mark.slow
def test_init_is_deterministic_and_key_dependent(params):
  again = T.init(TINY, jax.random.key(0))
  other = T.init(TINY, jax.random.key(1))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), params, again)))
  assert not np.array_equal(params["blocks"][0]["query"]["kernel"],
                            other["blocks"][0]["query"]["kernel"])


def test_causal_future_tokens_do_not_change_earlier_logits(params, tokens):
  changed = tokens.at[:, 12:].set((tokens[:, 12:] + 7) % 256)
  a, b = apply(TINY, params, tokens), apply(TINY, params, changed)
  np.testing.assert_array_equal(a[:, :12], b[:, :12])
  assert float(jnp.abs(a[:, 12:] - b[:, 12:]).max()) > 1e-3


def test_kv_cache_in_chunks_matches_the_full_forward(params, tokens):
  full = apply(TINY, params, tokens)
  cache = T.init_cache(TINY, 2)
  outs, start = [], 0
  for size in (7, 1, 1, 15):  # a prompt, two single tokens, then a long chunk
    logits, cache = decode(TINY, params, tokens[:, start:start + size], cache, start)
    outs.append(logits)
    start += size
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=0)


def test_generate_with_and_without_cache_agree(params, tokens):
  generate = jax.jit(T.generate, static_argnums=(0, 3), static_argnames=("use_cache",))
  with_cache = generate(TINY, params, tokens[:, :5], 20)
  without = generate(TINY, params, tokens[:, :5], 20, use_cache=False)
  np.testing.assert_array_equal(with_cache, without)
  np.testing.assert_array_equal(with_cache[:, :5], tokens[:, :5])
  with pytest.raises(ConfigError, match="num_tokens"):
    T.generate(TINY, params, tokens[:, :5], TINY.max_len)


def test_lora_at_init_is_the_base_model(tokens):
  cfg = TINY.with_lora(4, alpha=16.0)
  p = T.init(cfg, jax.random.key(3))
  _, base = lora.split(p, lora.path_labels(p, lora.is_lora_path))  # the base weights
  np.testing.assert_allclose(apply(cfg, p, tokens), apply(TINY, base, tokens), atol=1e-6,
                             rtol=0)
  a = p["blocks"][0]["query"]["lora_a"]
  assert a.shape == (TINY.d_model, 4) and float(jnp.abs(a).max()) <= 1 / np.sqrt(TINY.d_model)
  assert not np.any(p["blocks"][0]["query"]["lora_b"])
  assert cfg.lora_scale == 4.0
  # 2 blocks x (query, value, out: 32 -> 32; up: 32 -> 128) x r (in + out)
  assert lora.count(lora.split(p, lora.path_labels(p, lora.is_lora_path))[0]) == 2 * 4 * (
      3 * 64 + 160)


def test_merged_adapters_give_the_unmerged_output(tokens):
  cfg = TINY.with_lora(4)
  p = T.init(cfg, jax.random.key(3))
  p = jax.tree_util.tree_map_with_path(
      lambda kp, v: 0.1 * jax.random.normal(jax.random.key(5), v.shape)
      if kp[-1].key == "lora_b" else v, p)
  unmerged = apply(cfg, p, tokens)
  merged = apply(TINY, merge_lora(p, cfg.lora_scale), tokens)
  assert float(jnp.abs(unmerged - apply(TINY, lora.split(
      p, lora.path_labels(p, lora.is_lora_path))[1], tokens)).max()) > 1e-2  # adapters matter
  np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)


def test_lora_depth_puts_adapters_on_the_top_blocks():
  cfg = T.VARIANTS["small"].with_lora(2, depth=2)
  assert cfg.lora_layers == (4, 5)
  shapes = jax.eval_shape(lambda: T.init(cfg, jax.random.key(0)))
  assert "lora_a" not in shapes["blocks"][3]["query"]
  assert "lora_a" in shapes["blocks"][4]["query"]
  with pytest.raises(ConfigError, match="lora_depth"):
    T.VARIANTS["small"].with_lora(2, depth=7)


def test_dropped_block_is_the_identity(params, tokens):
  one_block = T.LMConfig(num_layers=1, d_model=32, num_heads=2, d_ff=128, max_len=64)
  first_only = dict(params, blocks={0: params["blocks"][0]})
  expected = apply(one_block, first_only, tokens)
  static = apply(TINY, params, tokens, plan=T.Plan(keep=(True, False)))
  traced = apply(TINY, params, tokens, keep=jnp.array([True, False]))
  np.testing.assert_array_equal(static, expected)
  # The traced mask is a different (jitted, cond) program: equal up to float32 rounding.
  np.testing.assert_allclose(traced, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(apply(TINY, params, tokens, keep=jnp.array([True, True])),
                             apply(TINY, params, tokens), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_gradient_floor_stops_gradients_below_it(params, tokens):
  plan = T.Plan(grad_floor=1)
  grads = jax.jit(jax.grad(lambda p: T.lm_loss(TINY, p, tokens, tokens, plan=plan)))(params)
  full = jax.jit(jax.grad(lambda p: T.lm_loss(TINY, p, tokens, tokens)))(params)
  assert not any(np.any(g) for g in jax.tree.leaves(grads["blocks"][0]))
  assert not np.any(grads["embed"]["embedding"])
  np.testing.assert_allclose(grads["blocks"][1]["up"]["kernel"], full["blocks"][1]["up"]["kernel"],
                             atol=1e-6, rtol=0)
  loss = jax.jit(T.lm_loss, static_argnums=0, static_argnames=("plan",))
  assert float(loss(TINY, params, tokens, tokens, plan=plan)) == float(
      loss(TINY, params, tokens, tokens))


def test_dropped_floor_block_still_stops_gradients(params, tokens):
  plan = T.Plan(keep=(True, False), grad_floor=1)
  grads = jax.jit(jax.grad(lambda p: T.lm_loss(TINY, p, tokens, tokens, plan=plan)))(params)
  assert not any(np.any(g) for g in jax.tree.leaves(grads["blocks"]))
  assert not np.any(grads["embed"]["embedding"])
  assert np.any(grads["head"]["kernel"])


@pytest.mark.parametrize("plan, field", [
    (T.Plan(keep=(True,)), "keep"), (T.Plan(grad_floor=3), "grad_floor"),
    (T.Plan(quantized=(2,)), "quantized"), (T.Plan(quant_bits=3), "quant_bits"),
    (T.Plan(quant_trainable="LoRA"), "quant_trainable"),
])
def test_bad_plan_names_the_field(params, tokens, plan, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    T.apply(TINY, params, tokens, plan=plan)


def test_positions_past_the_context_are_rejected(params, tokens):
  with pytest.raises(ConfigError, match="tokens"):
    T.decode(TINY, params, tokens[:, :8], T.init_cache(TINY, 2), TINY.max_len - 4)
  with pytest.raises(ConfigError, match="tokens"):
    T.apply(TINY, params, jnp.zeros((1, TINY.max_len + 1), jnp.int32))


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_heads=3), "num_heads"),
    (dict(d_model=0), "d_model"),
    (dict(lora_rank=-1), "lora_rank"),
    (dict(lora_alpha=-1.0), "lora_alpha"),
    (dict(lora_targets=("qkv",)), "lora_targets"),
    (dict(lora_layers=(2,)), "lora_layers"),
])
def test_bad_config_names_the_field(kwargs, field):
  base = dict(num_layers=2, d_model=32, num_heads=2, d_ff=64, max_len=16)
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    T.LMConfig(**(base | kwargs))
  with pytest.raises(ConfigError, match="variant"):
    T.get_variant("huge")
