"""Layer-coverage aggregation (FedQuad / HierFedLoRA): each block over the clients that
trained it; FedIT when every client trains every block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxfl.errors import ConfigError
from jaxfl.peft.layerdrop import layer_index_tree
from jaxfl.transforms import coverage_mean, delta_aggregator, depth_trained, fedit_mean

K, L = 4, 3


@pytest.fixture(scope="module")
def clients():
  """K clients' LoRA trees of 3 blocks (a LoRA-adapted dense layer each, as the transformer
  holds them) and an embedding outside the blocks; every leaf different per client."""
  params = {"embed": jnp.zeros((16, 8)), "blocks": {
      i: {"query": {"kernel": jnp.zeros((8, 8)), "lora_a": jnp.zeros((8, 2)),
                    "lora_b": jnp.zeros((2, 8))}} for i in range(L)}}
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), 2 * len(leaves))
  server = treedef.unflatten([jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  stacked = [x[None] + jax.random.normal(k, (K, *x.shape))
             for x, k in zip(jax.tree.leaves(server), keys[len(leaves):])]
  return server, treedef.unflatten(stacked), layer_index_tree(params)


def aggregate(agg, tree, weights, trained, server=None, axis="clients"):
  def client(t, w, k):
    return agg.update(t, agg.init(t), server, weight=w, trained=k)

  return jax.jit(jax.vmap(client, axis_name=axis, out_axes=(None, None)))(
      tree, weights, trained)


def test_every_client_training_every_block_is_fedit(clients):
  server, tree, layer_of = clients
  weights = jnp.array([1.0, 2.0, 3.0, 4.0])
  got, state = aggregate(coverage_mean("clients", layer_of), tree, weights,
                         jnp.ones([K, L], bool), server)
  fedit = fedit_mean("clients")
  want = jax.jit(jax.vmap(lambda t, w: fedit.update(t, fedit.init(t), server, weight=w)[0],
                          axis_name="clients", out_axes=None))(tree, weights)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(state.coverage, [10.0] * L)
  assert int(state.count) == 1


def test_a_block_one_client_trained_takes_its_value_and_an_untrained_one_keeps_the_server(
    clients):
  server, tree, layer_of = clients
  trained = jnp.array([[False, True, True], [False, False, True], [False, False, True],
                       [False, False, True]])  # block 0: nobody; block 1: client 0 alone
  got, state = aggregate(coverage_mean("clients", layer_of), tree, jnp.ones(K), trained, server)
  np.testing.assert_array_equal(state.coverage, [0.0, 1.0, 4.0])
  flat = jax.tree_util.tree_flatten_with_path(got)[0]
  mine = jax.tree.leaves(tree)
  base = jax.tree.leaves(server)
  blocks = jax.tree.leaves(layer_of)
  seen = set()
  for (path, g), x, s, b in zip(flat, mine, base, blocks):
    seen.add(b)
    if b == 0:
      np.testing.assert_array_equal(g, s)  # nobody trained it: the server's value, exactly
    elif b == 1:
      np.testing.assert_allclose(g, x[0], rtol=1e-6, atol=1e-7)  # client 0's value
    else:  # block 2 and the leaves outside the blocks: every client
      np.testing.assert_allclose(g, x.mean(0), rtol=1e-5, atol=1e-6, err_msg=str(path))
  assert seen == {-1, 0, 1, 2}


def test_zero_weight_clients_count_for_nothing_even_non_finite(clients):
  server, tree, layer_of = clients
  bad = jax.tree.map(lambda x: x.at[3].set(jnp.nan), tree)
  weights = jnp.array([1.0, 1.0, 2.0, 0.0])
  trained = jnp.stack([depth_trained(L, d) for d in (3, 2, 1, 3)])
  agg = coverage_mean("clients", layer_of)
  got, _ = aggregate(agg, bad, weights, trained, server)
  clean, _ = aggregate(agg, tree, weights, trained, server)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(got))
  for g, c in zip(jax.tree.leaves(got), jax.tree.leaves(clean)):
    np.testing.assert_array_equal(g, c)


def test_without_the_server_an_untrained_block_gets_the_plain_mean():
  layer_of = {"b0": 0, "b1": 1}
  tree = {"b0": jnp.array([2.0, 6.0]), "b1": jnp.array([1.0, 5.0])}
  got, _ = aggregate(coverage_mean("clients", layer_of), tree, jnp.array([1.0, 3.0]),
                     jnp.array([[False, True], [False, True]]))
  assert got["b0"].tolist() == 5.0 and got["b1"].tolist() == 4.0  # (2 + 18) / 4, (1 + 15) / 4


def test_shard_map_over_devices_equals_the_vmap(clients):
  server, tree, layer_of = clients
  weights = jnp.array([1.0, 2.0, 0.5, 3.0])
  trained = jnp.stack([depth_trained(L, d) for d in (1, 2, 3, 1)])
  want, _ = aggregate(coverage_mean("clients", layer_of), tree, weights, trained, server)
  mesh = Mesh(np.array(jax.devices()[:2]), ("devices",))  # 2 clients per device
  agg = coverage_mean(("devices", "clients"), layer_of)

  def client(t, w, k):
    return agg.update(t, agg.init(t), server, weight=w, trained=k)[0]

  sharded = jax.jit(jax.shard_map(jax.vmap(client, axis_name="clients", out_axes=None),
                                  mesh=mesh, in_specs=P("devices"), out_specs=P()))
  got = sharded(tree, weights, trained)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_as_a_delta_aggregator_the_server_lands_on_the_aggregate(clients):
  server, tree, layer_of = clients
  trained = jnp.stack([depth_trained(L, d) for d in (1, 2, 3, 1)])
  want, _ = aggregate(coverage_mean("clients", layer_of), tree, jnp.ones(K), trained, server)
  agg = delta_aggregator(coverage_mean("clients", layer_of))
  deltas = jax.tree.map(lambda x, s: x - s[None], tree, server)
  mean_delta = jax.jit(jax.vmap(
      lambda d, k: agg.update(d, agg.init(d), server, weight=1.0, trained=k)[0],
      axis_name="clients", out_axes=None))(deltas, trained)
  for g, w, s in zip(jax.tree.leaves(mean_delta), jax.tree.leaves(want),
                     jax.tree.leaves(server)):
    np.testing.assert_allclose(s + g, w, rtol=1e-5, atol=1e-5)


def test_bad_input_names_the_field():
  with pytest.raises(ConfigError, match="layer_of"):
    coverage_mean("clients", {"a": -1})
  agg = coverage_mean("clients", {"b0": 0, "b1": 1})
  tree = {"b0": jnp.zeros(2), "b1": jnp.zeros(2)}
  with pytest.raises(ConfigError, match=r"trained: expected a bool\[2\]"):
    jax.vmap(lambda t: agg.update(t, agg.init(t), trained=jnp.ones(3, bool))[0],
             axis_name="clients", out_axes=None)(tree)
  with pytest.raises(ConfigError, match="layer_of.*none for \\['c'\\]"):
    jax.vmap(lambda t: agg.update(t, agg.init(t))[0], axis_name="clients", out_axes=None)(
        {"b0": jnp.zeros(2), "c": jnp.zeros(2)})
