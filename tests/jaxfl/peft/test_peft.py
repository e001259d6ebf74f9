"""PEFT pieces on the LM: path labels, LoRA depth, int8 activations, block expansion, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.errors import ConfigError
from jaxfl.models import lora
from jaxfl.models import transformer as T
from jaxfl.peft import expand, layerdrop, memory
from jaxfl.transforms import skip_inactive

TINY = T.VARIANTS["tiny"]
# Six blocks to fit a line through depths 1..6; narrow so tracing stays fast.
SIX = T.LMConfig(num_layers=6, d_model=32, num_heads=2, d_ff=128, max_len=32)


@pytest.fixture(scope="module")
def batch():
  x = jax.random.randint(jax.random.key(7), (4, 32), 0, 256)
  return x, jnp.roll(x, -1, axis=1)


def tree_equal(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def train(config, params, rule, batch, steps=3, lr=1e-2, tx=None):
  """A few Adam steps on the leaves ``rule`` selects (differentiating only those)."""
  trainable, frozen = lora.split(params, lora.path_labels(params, rule))
  tx = tx or optax.adam(lr)
  state = tx.init(trainable)

  @jax.jit
  def step(trainable, state):
    loss, g = jax.value_and_grad(
        lambda t: T.lm_loss(config, lora.combine(t, frozen), *batch))(trainable)
    u, state = tx.update(g, state, trainable)
    return optax.apply_updates(trainable, u), state, loss

  losses = []
  for _ in range(steps):
    trainable, state, loss = step(trainable, state)
    losses.append(float(loss))
  return lora.combine(trainable, frozen), losses


@pytest.mark.slow
def test_labels_split_combine_and_the_partitioned_optimizer(batch):
  cfg = TINY.with_lora(4)
  params = T.init(cfg, jax.random.key(0))
  labels = lora.path_labels(params, lora.is_lora_path)
  trainable, frozen = lora.split(params, labels)
  assert tree_equal(lora.combine(trainable, frozen), params)
  assert lora.count(trainable) + lora.count(frozen) == lora.count(params)
  assert {p[-1] for p, _ in lora.leaf_paths(trainable)} == {"lora_a", "lora_b"}
  # optax.partition with the same labels: the frozen leaves do not move, adapters do.
  tx = lora.optimizer(optax.adam(1e-2), labels)
  state = tx.init(params)
  grads = jax.jit(jax.grad(lambda p: T.lm_loss(cfg, p, *batch)))(params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  new_trainable, new_frozen = lora.split(new, labels)
  assert tree_equal(new_frozen, frozen)
  assert not tree_equal(new_trainable, trainable)
  with pytest.raises(ValueError, match="both trees"):
    lora.combine(trainable, trainable)


def test_lora_depth_rule_selects_the_top_blocks():
  params = jax.eval_shape(lambda: T.init(SIX.with_lora(2), jax.random.key(0)))
  trainable, _ = lora.split(params, lora.path_labels(params, lora.lora_depth_rule(6, 2)))
  assert sorted(trainable["blocks"]) == [4, 5]


@pytest.mark.slow
def test_saved_activations_grow_linearly_with_lora_depth(batch):
  """Nothing below block L - d is differentiated: residual bytes are affine in d."""
  depths = np.arange(1, 7)
  act = []
  for d in depths:
    cfg = SIX.with_lora(4, depth=int(d))
    params = jax.eval_shape(lambda: T.init(cfg, jax.random.key(0)))
    fp = memory.footprint(cfg, params, lora.is_lora_path, optax.adam(1e-3), *batch,
                          plan=T.Plan(grad_floor=6 - int(d)))
    act.append(fp.activation_bytes)
  act = np.array(act, float)
  slope, intercept = np.polyfit(depths, act, 1)
  r2 = 1 - np.sum((act - (slope * depths + intercept)) ** 2) / np.sum((act - act.mean()) ** 2)
  assert r2 > 0.98, (r2, act)
  assert slope > 0
  assert act[1] <= 0.4 * act[5], act  # depth 2 stores at most 40% of depth 6


@pytest.mark.slow
def test_gradient_floor_does_not_change_the_top_gradients(batch):
  cfg = SIX.with_lora(4, depth=2)
  params = T.init(cfg, jax.random.key(0))
  params = jax.tree_util.tree_map_with_path(  # non-zero B so every adapter has a gradient
      lambda kp, v: v + 0.01 if kp[-1].key == "lora_b" else v, params)
  trainable, frozen = lora.split(params, lora.path_labels(params, lora.is_lora_path))
  grad = lambda plan: jax.jit(jax.grad(
      lambda t: T.lm_loss(cfg, lora.combine(t, frozen), *batch, plan=plan)))(trainable)
  a, b = grad(T.Plan()), grad(T.Plan(grad_floor=4))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_int8_activation_storage(batch):
  """Quantized blocks save >= 3x fewer activation bytes; gradients within 5%."""
  depths = np.array([2, 6])  # bytes are affine in depth (test above): two points give the slope

  def per_block(quantize: bool) -> float:
    act = []
    for d in depths:
      cfg = SIX.with_lora(4, depth=int(d))
      params = jax.eval_shape(lambda: T.init(cfg, jax.random.key(0)))
      tuned = tuple(range(6 - int(d), 6))
      plan = T.Plan(grad_floor=6 - int(d), quantized=tuned if quantize else ())
      act.append(memory.footprint(cfg, params, lora.is_lora_path, optax.sgd(1.0), *batch,
                                  plan=plan).activation_bytes)
    return np.polyfit(depths, np.array(act, float), 1)[0]  # bytes per tuned block

  full, int8 = per_block(False), per_block(True)
  assert full / int8 >= 3.0, (full, int8)

  cfg = SIX.with_lora(4)
  params = T.init(cfg, jax.random.key(0))
  params = jax.tree_util.tree_map_with_path(
      lambda kp, v: v + 0.05 * jax.random.normal(jax.random.key(3), v.shape)
      if kp[-1].key == "lora_b" else v, params)
  trainable, frozen = lora.split(params, lora.path_labels(params, lora.is_lora_path))
  fn = lambda t, plan: T.lm_loss(cfg, lora.combine(t, frozen), *batch, plan=plan)
  loss = jax.jit(fn, static_argnums=1)
  grad = jax.jit(jax.grad(fn), static_argnums=1)
  quantized = T.Plan(quantized=tuple(range(6)))
  assert float(loss(trainable, quantized)) == float(loss(trainable, T.Plan()))  # same forward
  g = grad(trainable, T.Plan())
  gq = grad(trainable, quantized)
  norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(t))))
  rel = norm(jax.tree.map(jnp.subtract, gq, g)) / norm(g)
  assert rel <= 0.05, rel


@pytest.mark.slow
def test_expanded_blocks_are_identity_and_only_they_train(batch):
  params = T.init(TINY, jax.random.key(0))
  big_cfg, big, new = expand.expand(TINY, params, after=expand.uniform_positions(2, 2))
  assert new == (1, 3) and big_cfg.num_layers == 4
  np.testing.assert_allclose(T.apply(big_cfg, big, batch[0]), T.apply(TINY, params, batch[0]),
                             atol=1e-5, rtol=0)
  trained, losses = train(big_cfg, big, expand.new_block_rule(new), batch, steps=5)
  assert losses[-1] < losses[0]
  assert tree_equal(trained["blocks"][0], params["blocks"][0])  # originals bit-identical
  assert tree_equal(trained["blocks"][2], params["blocks"][1])
  assert tree_equal(trained["embed"], params["embed"])
  assert tree_equal(trained["head"], params["head"])
  assert not tree_equal(trained["blocks"][1], big["blocks"][1])
  with pytest.raises(ConfigError, match="expand_after"):
    expand.expand(TINY, params, after=(2,))
  with pytest.raises(ConfigError, match="num_new_blocks"):
    expand.uniform_positions(2, 3)
  assert expand.uniform_positions(32, 8) == (3, 7, 11, 15, 19, 23, 27, 31)  # LLaMA Pro 7B


@pytest.mark.slow
def test_expansion_keeps_identity_with_trained_adapters(batch):
  cfg = TINY.with_lora(2)
  params = T.init(cfg, jax.random.key(0))
  params = jax.tree_util.tree_map_with_path(
      lambda kp, v: v + 0.1 if kp[-1].key == "lora_b" else v, params)
  big_cfg, big, _ = expand.expand(cfg, params, after=(0,))
  np.testing.assert_allclose(T.apply(big_cfg, big, batch[0]), T.apply(cfg, params, batch[0]),
                             atol=1e-5, rtol=0)


def test_footprint_rejects_a_quantized_lora_block_training_base_weights(batch):
  cfg = TINY.with_lora(4)
  params = jax.eval_shape(lambda: T.init(cfg, jax.random.key(0)))
  with pytest.raises(ConfigError, match="quant_trainable"):
    memory.footprint(cfg, params, lora.everything, optax.sgd(0.1), *batch,
                     plan=T.Plan(quantized=(1,)))
  ok = memory.footprint(cfg, params, lora.everything, optax.sgd(0.1), *batch,
                        plan=T.Plan(quantized=(1,), quant_trainable="all"))
  full = memory.footprint(cfg, params, lora.everything, optax.sgd(0.1), *batch)
  assert ok.activation_bytes < full.activation_bytes


def test_footprint_counts_hand_checkable_bytes(batch):
  cfg = TINY.with_lora(4)
  params = jax.eval_shape(lambda: T.init(cfg, jax.random.key(0)))
  fp = memory.footprint(cfg, params, lora.is_lora_path, optax.adam(1e-3), *batch)
  lora_params = 2 * 4 * (3 * (32 + 32) + (32 + 128))  # blocks x r x (in + out) per target
  assert fp.trainable_bytes == 4 * lora_params
  assert fp.optimizer_bytes == 2 * 4 * lora_params + 4  # Adam mu, nu and an int32 count
  assert fp.frozen_bytes == 4 * T.num_params(T.init(TINY, jax.random.key(0)))
  sgd = memory.footprint(cfg, params, lora.is_lora_path, optax.sgd(0.1), *batch)
  assert sgd.optimizer_bytes == 0 and sgd.activation_bytes == fp.activation_bytes
  full = memory.footprint(cfg, params, lora.everything, optax.adam(1e-3), *batch)
  assert full.trainable_bytes == fp.trainable_bytes + fp.frozen_bytes
  assert full.activation_bytes > fp.activation_bytes
  assert fp.total_bytes == 2 * fp.trainable_bytes + fp.optimizer_bytes + fp.activation_bytes


@pytest.mark.slow
def test_layer_dropout_leaves_dropped_adapters_and_adam_state_unchanged(batch):
  cfg = TINY.with_lora(4)
  params = T.init(cfg, jax.random.key(0))
  trainable, frozen = lora.split(params, lora.path_labels(params, lora.is_lora_path))
  tx = skip_inactive(optax.adam(1e-2), layerdrop.layer_index_tree(trainable))
  state = tx.init(trainable)

  @jax.jit
  def step(trainable, state, keep):
    g = jax.grad(lambda t: T.lm_loss(cfg, lora.combine(t, frozen), *batch, keep=keep))(trainable)
    u, state = tx.update(g, state, trainable, keep=keep)
    return optax.apply_updates(trainable, u), state

  t1, s1 = step(trainable, state, jnp.array([True, True]))
  t2, s2 = step(t1, s1, jnp.array([False, True]))
  assert tree_equal(t2["blocks"][0], t1["blocks"][0])
  assert not tree_equal(t2["blocks"][1], t1["blocks"][1])
  mu = lambda s: s.inner_state[0].mu["blocks"][0]
  assert tree_equal(mu(s2), mu(s1))
  # Over many steps the kept fraction matches the configured mean drop rate.
  rates = layerdrop.drop_rates(2, 0.25)
  keeps = jax.vmap(lambda k: layerdrop.sample_keep(k, rates))(
      jax.random.split(jax.random.key(1), 4000))
  assert abs(float(keeps.mean()) - 0.75) < 0.02  # 4000 x 2 draws: sd 0.005
