"""Layer dropout: rates with the configured mean, Bernoulli masks, frozen optimizer state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.errors import ConfigError
from jaxfl.peft.layerdrop import drop_rates, layer_index_tree, sample_keep
from jaxfl.transforms import SkipInactiveState, skip_inactive

# ----------------------------------------------------------------------------- drop_rates


def test_drop_rates_hand_checked():
  np.testing.assert_allclose(drop_rates(4, 0.5, "incremental"), [0.2, 0.4, 0.6, 0.8])
  np.testing.assert_allclose(drop_rates(4, 0.5, "decremental"), [0.8, 0.6, 0.4, 0.2])
  np.testing.assert_allclose(drop_rates(3, 0.25), [0.25, 0.25, 0.25])
  # 0.24 l -> 0.96 for the last layer, over the cap: clip it to 0.9 and spread the
  # remaining 2.4 - 0.9 = 1.5 over weights 1, 2, 3 -> 0.25 l.
  np.testing.assert_allclose(drop_rates(4, 0.6, "incremental"), [0.25, 0.5, 0.75, 0.9])
  # Two rounds of clipping with cap 0.85: 0.8 * 2l/5 = [.32 .64 .96 1.28] -> clip the last
  # two, 3.2 - 1.7 = 1.5 over weights 1, 2 gives [.5 1.0] -> clip the second, 0.65 is left.
  rates = drop_rates(4, 0.8, "incremental", max_rate=0.85)
  np.testing.assert_allclose(rates, [0.65, 0.85, 0.85, 0.85])
  np.testing.assert_allclose(drop_rates(1, 0.3, "incremental"), [0.3])


@pytest.mark.parametrize("shape", ["uniform", "incremental", "decremental"])
@pytest.mark.parametrize("num_layers", [1, 2, 6, 12, 24])
@pytest.mark.parametrize("mean_rate", [0.0, 0.1, 0.5, 0.7, 0.9])
def test_drop_rates_mean_cap_and_order(shape, num_layers, mean_rate):
  rates = drop_rates(num_layers, mean_rate, shape)
  assert rates.shape == (num_layers,) and rates.dtype == np.float64
  assert rates.mean() == pytest.approx(mean_rate, abs=1e-12)
  assert rates.min() >= 0.0 and rates.max() <= 0.9
  steps = np.diff(rates)
  if shape == "incremental":
    assert np.all(steps >= -1e-12)
  elif shape == "decremental":
    assert np.all(steps <= 1e-12)
  else:
    assert np.all(np.abs(steps) < 1e-12)


def test_drop_rates_at_the_cap_is_uniform():
  np.testing.assert_allclose(drop_rates(5, 0.9, "incremental"), np.full(5, 0.9))
  np.testing.assert_allclose(drop_rates(5, 1.0, "decremental", max_rate=1.0), np.ones(5))


@pytest.mark.parametrize("kwargs, field", [
    ({"num_layers": 0, "mean_rate": 0.5}, "num_layers"),
    ({"num_layers": 2.0, "mean_rate": 0.5}, "num_layers"),
    ({"num_layers": 4, "mean_rate": 0.5, "shape": "linear"}, "shape"),
    ({"num_layers": 4, "mean_rate": 0.5, "max_rate": 1.5}, "max_rate"),
    ({"num_layers": 4, "mean_rate": -0.1}, "mean_rate"),
    ({"num_layers": 4, "mean_rate": 0.95}, "mean_rate"),  # above the default cap 0.9
])
def test_drop_rates_rejects(kwargs, field):
  with pytest.raises(ConfigError) as err:
    drop_rates(**kwargs)
  assert err.value.field == field


# ----------------------------------------------------------------------------- sample_keep

NUM_MASKS = 2000


@functools.cache
def _sampler(min_active, max_active):
  # One compile per bound setting (rates and keys are traced), each ~0.3 s on CPU.
  return jax.jit(jax.vmap(lambda k, rates: sample_keep(k, rates, min_active=min_active,
                                                       max_active=max_active),
                          in_axes=(0, None)))


def _masks(rates, seed=0, min_active=0, max_active=None):
  keys = jax.random.split(jax.random.key(seed), NUM_MASKS)
  return np.asarray(_sampler(min_active, max_active)(keys, jnp.asarray(rates, jnp.float32)))


def test_sample_keep_uniform_active_fraction():
  keep = _masks(drop_rates(6, 0.5))
  assert keep.shape == (NUM_MASKS, 6) and keep.dtype == bool
  # 12,000 independent Bernoulli(0.5) draws: SE = sqrt(0.25 / 12000) = 0.0046, so the
  # tolerance 0.02 is 4.4 SE (a false alarm about once in 10^5 seeds).
  assert abs(keep.mean() - 0.5) < 0.02
  # Every block should be both kept and dropped often (no stuck layer).
  assert np.all(np.abs(keep.mean(0) - 0.5) < 4.5 * np.sqrt(0.25 / NUM_MASKS))


def test_sample_keep_incremental_per_layer_frequencies():
  rates = drop_rates(6, 0.5, "incremental")  # l / 7
  np.testing.assert_allclose(rates, np.arange(1, 7) / 7)
  freq = _masks(rates, seed=1).mean(0)
  # Per layer, 2,000 Bernoulli(1 - p_l) draws: SE_l = sqrt(p_l (1 - p_l) / 2000) <= 0.011;
  # 4.5 SE_l per layer, i.e. a false alarm about once in 10^5 per layer.
  tol = 4.5 * np.sqrt(rates * (1 - rates) / NUM_MASKS)
  assert np.all(np.abs(freq - (1 - rates)) < tol), (freq, 1 - rates, tol)
  assert np.all(np.diff(freq) < 0)  # deeper layers are kept less often


def test_sample_keep_may_drop_every_block_by_default():
  keep = _masks(drop_rates(6, 0.5))
  # P(all dropped) = 2^-6: expect 31 of 2000; the identity model is allowed.
  assert 10 < np.sum(~keep.any(1)) < 60
  assert not np.asarray(sample_keep(jax.random.key(0), jnp.ones(3))).any()


def test_sample_keep_bounds():
  rates = drop_rates(6, 0.5)
  counts = _masks(rates, min_active=1, max_active=4).sum(1)
  assert counts.min() >= 1 and counts.max() <= 4
  # Bounds that never bind leave the masks unchanged (same draws).
  np.testing.assert_array_equal(_masks(rates, seed=3, min_active=0, max_active=6),
                                _masks(rates, seed=3))
  # Exactly two blocks, however extreme the rates.
  assert np.all(_masks(jnp.ones(5), min_active=2, max_active=2).sum(1) == 2)
  assert np.all(_masks(jnp.zeros(5), min_active=2, max_active=2).sum(1) == 2)


@pytest.mark.parametrize("kwargs, field", [
    ({"rates": jnp.ones((2, 2))}, "rates"),
    ({"rates": jnp.ones(3), "min_active": 4}, "min_active"),
    ({"rates": jnp.ones(3), "min_active": 2, "max_active": 1}, "max_active"),
])
def test_sample_keep_rejects(kwargs, field):
  with pytest.raises(ConfigError) as err:
    sample_keep(jax.random.key(0), **kwargs)
  assert err.value.field == field


# ----------------------------------------------------------------------- layer_index_tree


def test_layer_index_tree_key_styles():
  nested = {"embed": {"embedding": 0}, "blocks": {0: {"attn": {"kernel": 0}}, 3: {"w": 0}},
            "final_ln": {"scale": 0}, "head": {"kernel": 0}}
  assert layer_index_tree(nested) == {
      "embed": {"embedding": -1}, "blocks": {0: {"attn": {"kernel": 0}}, 3: {"w": 3}},
      "final_ln": {"scale": -1}, "head": {"kernel": -1}}
  # String digits, a list of blocks, a flat 'a/b/c' dict, a nested parent.
  assert layer_index_tree({"blocks": {"2": {"w": 0}}}) == {"blocks": {"2": {"w": 2}}}
  assert layer_index_tree({"blocks": [{"w": 0}, {"w": 0}]}) == {"blocks": [{"w": 0}, {"w": 1}]}
  assert layer_index_tree({"blocks/11/mlp/kernel": 0, "head/bias": 0}) == {
      "blocks/11/mlp/kernel": 11, "head/bias": -1}
  nested = {"model": {"blocks": {1: {"w": 0}}}}
  assert layer_index_tree(nested) == {"model": {"blocks": {1: {"w": 1}}}}
  # A custom (nested) prefix; other containers with numbered children are not blocks.
  tree = {"encoder": {"layers": {4: {"w": 0}}}, "decoder": {"layers": {0: {"w": 0}}}}
  assert layer_index_tree(tree, "encoder/layers") == {
      "encoder": {"layers": {4: {"w": 4}}}, "decoder": {"layers": {0: {"w": -1}}}}
  assert layer_index_tree({"blocks": {"norm": {"w": 0}}}) == {"blocks": {"norm": {"w": -1}}}
  with pytest.raises(ConfigError):
    layer_index_tree(nested, prefix="")


def test_layer_index_tree_nnx_list():

  class Tiny(nnx.Module):

    def __init__(self, rngs):
      self.embed = nnx.Embed(5, 4, rngs=rngs)
      self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(3)])
      self.head = nnx.Linear(4, 2, rngs=rngs)

  # Abstract init: only the tree structure matters, and eager nnx init costs seconds on CPU.
  params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Tiny(nnx.Rngs(0))), nnx.Param))
  layers = layer_index_tree(params)
  assert layers["blocks"][2]["kernel"] == 2 and layers["blocks"][0]["bias"] == 0
  assert layers["embed"]["embedding"] == -1 and layers["head"]["kernel"] == -1


# -------------------------------------------------------------------------- skip_inactive


@jax.jit
def _params():
  keys = iter(jax.random.split(jax.random.key(7), 16))
  block = lambda: {"attn": {"kernel": jax.random.normal(next(keys), (4, 4))},
                   "ln": {"scale": jax.random.normal(next(keys), (4,))}}
  return {"embed": jax.random.normal(next(keys), (5, 4)),
          "blocks": {i: block() for i in range(3)}}


@jax.jit
def _grads(step, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(1), step), len(leaves))
  # Non-zero gradients for every block, the dropped ones too.
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _changed(a, b):
  return all(bool(np.any(np.asarray(x) != np.asarray(y))) for x, y in zip(jax.tree.leaves(a),
                                                                       jax.tree.leaves(b)))


@pytest.mark.parametrize("static", [False, True])
def test_skip_inactive_adam_freezes_dropped_block(static):
  params = _params()
  tx = skip_inactive(optax.adam(1e-2), layer_index_tree(params))
  # Jitted, with the mask static (closed over) or traced (an argument): eager dispatch of
  # every Adam op costs more than compiling one program on CPU.
  if static:
    update = lambda keep: jax.jit(lambda g, s, p: tx.update(g, s, p, keep=keep))
  else:
    update = lambda keep: functools.partial(jax.jit(
        lambda g, s, p, k: tx.update(g, s, p, keep=k)), k=jnp.array(keep))
  state = tx.init(params)
  # A first step with every block, so mu and nu are non-zero before the dropped step.
  updates, state = update((True, True, True))(_grads(0, params), state, params)
  params = optax.apply_updates(params, updates)
  updates, new_state = update((True, False, True))(_grads(1, params), state, params)
  new_params = optax.apply_updates(params, updates)

  adam, new_adam = state.inner_state[0], new_state.inner_state[0]
  _assert_tree_equal(new_params["blocks"][1], params["blocks"][1])
  _assert_tree_equal(jax.tree.map(jnp.zeros_like, updates["blocks"][1]), updates["blocks"][1])
  _assert_tree_equal(new_adam.mu["blocks"][1], adam.mu["blocks"][1])
  _assert_tree_equal(new_adam.nu["blocks"][1], adam.nu["blocks"][1])
  parts = {"embed": lambda t: t["embed"], "block 0": lambda t: t["blocks"][0],
           "block 2": lambda t: t["blocks"][2]}
  for name, get in parts.items():
    assert _changed(get(new_params), get(params)), name
    assert _changed(get(new_adam.mu), get(adam.mu)) and _changed(get(new_adam.nu), get(adam.nu))
  # Documented deviation: the shared step count advances for every block.
  assert int(new_adam.count) == 2
  np.testing.assert_array_equal(new_state.active_steps, [2, 1, 2])


def test_skip_inactive_all_kept_is_plain_adam_bit_for_bit():
  params = _params()
  adam = optax.adam(1e-2)
  tx = skip_inactive(adam, layer_index_tree(params))
  p_ref, s_ref = params, adam.init(params)
  p, s = params, tx.init(params)
  for step in range(3):
    g = _grads(step, params)
    u_ref, s_ref = adam.update(g, s_ref, p_ref)
    keep = jnp.ones(3, bool) if step % 2 else None  # traced all-True, then the default
    u, s = tx.update(g, s, p, keep=keep)
    _assert_tree_equal(u, u_ref)
    _assert_tree_equal(s.inner_state, s_ref)
    p_ref, p = optax.apply_updates(p_ref, u_ref), optax.apply_updates(p, u)
  _assert_tree_equal(p, p_ref)
  # Also inside jit, against jitted plain adam.
  u_ref, _ = jax.jit(adam.update)(_grads(9, params), s_ref, p_ref)
  u, _ = jax.jit(lambda g, s, p, k: tx.update(g, s, p, keep=k))(_grads(9, params), s, p,
                                                                 jnp.ones(3, bool))
  _assert_tree_equal(u, u_ref)


def test_skip_inactive_jit_scan_with_traced_keep():
  params = _params()
  tx = skip_inactive(optax.adam(1e-2), layer_index_tree(params))
  keeps = jnp.array([[True, False, True], [False, False, True], [True, False, False],
                     [True, False, True], [False, False, False]])
  grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(t, params) for t in range(len(keeps))])

  @jax.jit
  def run(params, grads, keeps):
    def step(carry, xs):
      params, state = carry
      g, keep = xs
      updates, state = tx.update(g, state, params, keep=keep)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), (grads, keeps))
    return params, state

  final, state = run(params, grads, keeps)
  # Block 1 is dropped at every step: never moved, Adam's statistics still zero.
  _assert_tree_equal(final["blocks"][1], params["blocks"][1])
  _assert_tree_equal(state.inner_state[0].mu["blocks"][1],
                     jax.tree.map(jnp.zeros_like, params["blocks"][1]))
  np.testing.assert_array_equal(state.active_steps, keeps.sum(0))
  assert int(state.inner_state[0].count) == len(keeps)
  # Same as stepping eagerly with static masks (compiled vs eager: to rounding).
  p, s = params, tx.init(params)
  for t, keep in enumerate(np.asarray(keeps)):
    g = jax.tree.map(lambda x, t=t: x[t], grads)
    u, s = tx.update(g, s, p, keep=tuple(keep.tolist()))
    p = optax.apply_updates(p, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), final, p)


def _lora_params():
  keys = iter(jax.random.split(jax.random.key(3), 16))
  block = lambda: {"kernel": jax.random.normal(next(keys), (4, 4)),
                   "lora_a": jax.random.normal(next(keys), (4, 2)),
                   "lora_b": jax.random.normal(next(keys), (2, 4))}
  return {"embed": jax.random.normal(next(keys), (5, 4)),
          "blocks": {i: block() for i in range(3)},
          "head": {"kernel": jax.random.normal(next(keys), (4, 2))}}


def _labels(params):
  def label(path, _):
    name = path[-1].key if isinstance(path[-1], jax.tree_util.DictKey) else None
    return "lora" if isinstance(name, str) and name.startswith("lora") else "frozen"

  return jax.tree_util.tree_map_with_path(label, params)


@pytest.mark.parametrize("order", ["outside", "inside"])
def test_skip_inactive_with_partition_labels(order):
  params = _lora_params()
  layers = layer_index_tree(params)
  transforms = lambda inner: {"lora": inner, "frozen": optax.set_to_zero()}
  if order == "outside":  # the wrapper around a partitioned optimizer (label function)
    tx = skip_inactive(optax.partition(transforms(optax.adam(1e-2)), _labels), layers)
    lora_state = lambda s: s.inner_state.inner_states["lora"].inner_state[0]
  else:  # inside the trainable partition only (label tree); `keep` is passed through
    tx = optax.partition(transforms(skip_inactive(optax.adam(1e-2), layers)), _labels(params))
    lora_state = lambda s: s.inner_states["lora"].inner_state.inner_state[0]

  update = jax.jit(lambda g, s, p, k: tx.update(g, s, p, keep=k))  # compiled once
  state = tx.init(params)
  p = params
  for step, keep in enumerate([[True, True, True], [True, False, True], [False, False, True]]):
    before, before_state = p, state
    updates, state = update(_grads(step, p), state, p, jnp.array(keep))
    p = optax.apply_updates(p, updates)
    for i, kept in enumerate(keep):
      lora = {k: v for k, v in p["blocks"][i].items() if k.startswith("lora")}
      lora_before = {k: v for k, v in before["blocks"][i].items() if k.startswith("lora")}
      mu = {k: v for k, v in lora_state(state).mu["blocks"][i].items() if k.startswith("lora")}
      mu_before = {k: v for k, v in lora_state(before_state).mu["blocks"][i].items()
                   if k.startswith("lora")}
      if kept:
        assert _changed(lora, lora_before) and _changed(mu, mu_before)
      else:
        _assert_tree_equal(lora, lora_before)
        _assert_tree_equal(mu, mu_before)
  # Frozen leaves never change, kept or not.
  for i in range(3):
    np.testing.assert_array_equal(p["blocks"][i]["kernel"], params["blocks"][i]["kernel"])
  np.testing.assert_array_equal(p["embed"], params["embed"])
  np.testing.assert_array_equal(p["head"]["kernel"], params["head"]["kernel"])


def test_skip_inactive_state_and_errors():
  params = _params()
  tx = skip_inactive(optax.sgd(0.1, momentum=0.9), layer_index_tree(params))
  state = tx.init(params)
  assert isinstance(state, SkipInactiveState) and state.active_steps.shape == (3,)
  with pytest.raises(ConfigError) as err:
    tx.update(_grads(0, params), state, params, keep=jnp.ones(4, bool))
  assert err.value.field == "keep"
  with pytest.raises(ConfigError) as err:
    tx.update(_grads(0, params), state, params, keep=jnp.ones(3))
  assert err.value.field == "keep"
  with pytest.raises(ConfigError) as err:
    skip_inactive(optax.adam(1e-2), {"embed": -1})
  assert err.value.field == "layer_of"
  # Momentum traces are per-parameter state too: frozen for the dropped block.
  _, new = tx.update(_grads(0, params), state, params, keep=(False, True, True))
  _assert_tree_equal(new.inner_state[0].trace["blocks"][0], state.inner_state[0].trace["blocks"][0])
  assert _changed(new.inner_state[0].trace["blocks"][1], state.inner_state[0].trace["blocks"][1])
