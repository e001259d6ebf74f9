"""Layer dropout: rates with the configured mean, Bernoulli masks, frozen optimizer state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfl.errors import ConfigError
from jaxfl.peft.layerdrop import drop_rates, layer_index_tree, sample_keep

# ----------------------------------------------------------------------------- drop_rates


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
