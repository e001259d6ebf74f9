"""LoRA aggregators: FedIT's cross term, FFA-LoRA and FLoRA exact, FlexLoRA at the Eckart-Young
bound, the same under shard_map, weight-0 clients and empty rounds, labels and merging.

The clients' trees hold two adapted layers, ``attn/query`` (in 16, out 12, rank 4) and
``blocks/mlp`` (the same with a leading layer axis of 2, as ``scan`` stacks them), and a
plain ``head``; K = 4 clients with weights 1:2:3:4 (p = 0.1, 0.2, 0.3, 0.4), s = 2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.errors import ConfigError
from jaxfl.models import lora
from jaxfl.models.lora import lora_delta, mask_rank, merge_lora
from jaxfl.runtime import ClientAxis, client_mesh
from jaxfl.transforms import delta_aggregator, fedit_mean, ffa_mean, flex_svd, stack_merge

K, D_IN, D_OUT, R = 4, 16, 12, 4
SCALE = 2.0  # alpha / r = 8 / 4
WEIGHTS = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
LAYERS = (("attn", "query"), ("blocks", "mlp"))
VMAP = ClientAxis()


def make_tree(seed, *, k=K, r=R, shared_a=False):
  """Client trees after local training, stacked on a leading client axis (numpy: the
  test's own arithmetic stays out of JAX, whose every eager op would compile)."""
  rng = np.random.default_rng(seed)

  def normal(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  def layer(batch):
    a = normal(k, *batch, D_IN, r)
    if shared_a:
      a = np.broadcast_to(a[:1], a.shape).copy()
    kernel = normal(*batch, D_IN, D_OUT)  # frozen W0: the same on every client
    return {"kernel": np.broadcast_to(kernel, (k, *kernel.shape)).copy(),
            "bias": normal(k, *batch, D_OUT), "lora_a": a, "lora_b": normal(k, *batch, r, D_OUT)}

  return {"attn": {"query": layer(())}, "blocks": {"mlp": layer((2,))}, "head": normal(k, 5)}


def first(tree):
  return jax.tree.map(lambda x: x[0], tree)


def delta(layer):
  """s A B in float64 for one (unstacked) layer."""
  return SCALE * np.asarray(layer["lora_a"], np.float64) @ np.asarray(layer["lora_b"], np.float64)


def get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


@functools.cache
def program(axis=VMAP, flex_ranks=(3, 12), stacked=True):
  """One jitted round of the aggregators: FedIT, FFA-LoRA and FLoRA (``stacked``) and
  FlexLoRA at each of ``flex_ranks`` (keys ``'flex3'``...), with their round counts.

  Every distinct program costs a compile of a few seconds on the shared CPU, so the tests
  share a handful: the FlexLoRA variants take the SVD of the same stacked factors.
  """
  names = axis.axis_name
  txs = {f"flex{rank}": flex_svd(names, rank) for rank in flex_ranks}
  if stacked:
    txs.update(fedit=fedit_mean(names), ffa=ffa_mean(names), stack=stack_merge(names))

  def run(tree, weights, ranks, params):
    def client(t, w, rank, params):
      outs = {name: tx.update(t, tx.init(t), params, weight=w, rank=rank)
              for name, tx in txs.items()}
      return ({name: out for name, (out, _) in outs.items()},
              {name: state.count for name, (_, state) in outs.items()})

    return axis.map(client, in_axes=(0, 0, 0, None), out_axes=None)(tree, weights, ranks, params)

  return jax.jit(run)


def aggregate(tree, weights=WEIGHTS, ranks=None, params=None, axis=VMAP, **kwargs):
  ranks = np.full([K], R, np.int32) if ranks is None else np.asarray(ranks, np.int32)
  outs, counts = program(axis, **kwargs)(tree, np.asarray(weights, np.float32), ranks, params)
  assert all(int(c) == 1 for c in counts.values()), counts
  return outs


def shares(weights=WEIGHTS):
  return np.asarray(weights, np.float64) / np.sum(weights)


def true_delta(layer, p, ranks=None):
  """s * sum_k p_k A_k B_k in float64, from a layer stacked over clients."""
  a, b = np.asarray(layer["lora_a"], np.float64), np.asarray(layer["lora_b"], np.float64)
  if ranks is not None:
    for k, rank in enumerate(ranks):
      a[k, ..., rank:] = 0.0
      b[k, ..., rank:, :] = 0.0
  return SCALE * np.einsum("k,k...ir,k...ro->...io", p, a, b)


def rel_err(x, ref):
  return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))


def wmean(x, p):
  return np.tensordot(p, np.asarray(x, np.float64), axes=1)


def test_fedit_averages_each_factor_and_misses_the_cross_term():
  tree, p = make_tree(0), shares()
  out = aggregate(tree)["fedit"]
  for path in LAYERS:
    layer, agg = get(tree, path), get(out, path)
    for name in ("lora_a", "lora_b", "kernel", "bias"):
      np.testing.assert_allclose(agg[name], wmean(layer[name], p), rtol=1e-5, atol=1e-6)
    truth = true_delta(layer, p)
    err = rel_err(delta(get(out, path)), truth)
    # 0.82 and 0.76 relative: independent factors do not average to their mean product.
    assert err > 1e-3, f"FedIT's product error {err:.3g} should be large"
    # The miss is exactly the weighted covariance of the factors.
    a, b = (np.asarray(layer[n], np.float64) for n in ("lora_a", "lora_b"))
    cross = SCALE * np.einsum("k,k...ir,k...ro->...io", p, a - wmean(a, p), b - wmean(b, p))
    miss = truth - np.asarray(delta(get(out, path)), np.float64)
    assert rel_err(miss, cross) < 1e-5
  np.testing.assert_allclose(out["head"], wmean(tree["head"], p), rtol=1e-5, atol=1e-6)


def test_ffa_is_exact_with_a_shared_a():
  tree, p = make_tree(1, shared_a=True), shares()
  out = aggregate(tree)["ffa"]
  for path in LAYERS:
    layer, agg = get(tree, path), get(out, path)
    assert (np.asarray(agg["lora_a"]) == np.asarray(layer["lora_a"][0])).all()  # bitwise
    np.testing.assert_allclose(agg["lora_b"], wmean(layer["lora_b"], p), rtol=1e-5, atol=1e-6)
    err = rel_err(delta(get(out, path)), true_delta(layer, p))
    assert err < 1e-6, f"FFA-LoRA product error {err:.3g}"
  np.testing.assert_allclose(out["head"], wmean(tree["head"], p), rtol=1e-5, atol=1e-6)


def test_ffa_takes_a_from_the_server_tree():
  tree = make_tree(1, shared_a=True)
  params = first(tree)
  out = aggregate(tree, params=params)["ffa"]
  for path in LAYERS:
    assert (np.asarray(get(out, path)["lora_a"]) == np.asarray(get(params, path)["lora_a"])).all()


@pytest.mark.parametrize("ranks", [None, [2, 4, 3, 1]])
def test_stacking_is_exact(ranks):
  tree, p = make_tree(2), shares()
  out = aggregate(tree, ranks=ranks)["stack"]
  for path in LAYERS:
    agg = get(out, path)
    assert agg["lora_a"].shape[-2:] == (D_IN, K * R) and agg["lora_b"].shape[-2:] == (K * R, D_OUT)
    # The factors beyond each client's rank hold random values: masking must drop them.
    err = rel_err(delta(get(out, path)), true_delta(get(tree, path), p, ranks))
    assert err < 1e-5, f"stacking product error {err:.3g} (ranks {ranks})"
  if ranks is not None:  # client 3 (rank 1): only the first of its 4 rows of B_g are nonzero
    b3 = np.asarray(out["attn"]["query"]["lora_b"][3 * R:4 * R])
    assert (b3[1:] == 0).all() and (b3[0] != 0).all()


def test_flex_svd_reaches_the_eckart_young_bound():
  tree, p = make_tree(3), shares()
  out = aggregate(tree)["flex3"]
  for path in LAYERS:
    truth = true_delta(get(tree, path), p)
    sigma = np.linalg.svd(truth, compute_uv=False)  # true rank min(K r, 12) = 12
    tail = np.sqrt(np.sum(sigma[..., 3:] ** 2, axis=-1))
    err = np.linalg.norm(np.asarray(delta(get(out, path)), np.float64) - truth,
                         axis=(-2, -1))
    np.testing.assert_allclose(err, tail, rtol=1e-5, err_msg=f"{path}: {err} vs tail {tail}")
    # Balanced split: column j of A and row j of B both have norm sqrt(sigma_j / s).
    agg = get(out, path)
    expected = np.sqrt(sigma[..., :3] / SCALE)
    np.testing.assert_allclose(np.linalg.norm(agg["lora_a"], axis=-2), expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(agg["lora_b"], axis=-1), expected, rtol=1e-5)


def test_flex_svd_is_exact_at_or_above_the_true_rank():
  """r = 4 at rank 12: full rank, dense SVD. r = 2: true rank K r = 8 < 12, so the SVD goes
  through QR; at rank 10 two more components than exist come back as zeros."""
  for r, flex_rank in ((4, 12), (2, 8), (2, 10)):
    tree, p = make_tree(4, r=r), shares()
    if r == R:
      out = aggregate(tree)[f"flex{flex_rank}"]
    else:
      out = aggregate(tree, ranks=np.full([K], r), flex_ranks=(8, 10),
                      stacked=False)[f"flex{flex_rank}"]
    for path in LAYERS:
      agg = get(out, path)
      assert agg["lora_a"].shape[-1] == flex_rank and agg["lora_b"].shape[-2] == flex_rank
      err = rel_err(delta(agg), true_delta(get(tree, path), p))
      assert err < 1e-5, f"FlexLoRA product error {err:.3g} (r {r}, rank {flex_rank})"
    if flex_rank > K * r:
      assert not np.asarray(out["attn"]["query"]["lora_a"][:, K * r:]).any()


def test_sharded_matches_vmapped():
  """Two devices with two clients each: the client axis is ('devices', 'clients')."""
  tree, ranks = make_tree(5), [4, 2, 3, 4]
  params = first(tree)
  axis = ClientAxis(client_mesh(2))
  a = aggregate(tree, ranks=ranks, params=params)
  b = aggregate(tree, ranks=ranks, params=params, axis=axis)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [0, 1])
def test_zero_weight_client_is_ignored(bad):
  """Client ``bad`` has weight 0 and NaN everywhere: the result is that of the others alone."""
  tree = make_tree(6)
  poisoned = jax.tree.map(np.copy, tree)
  for x in jax.tree.leaves(poisoned):
    x[bad] = np.nan
  weights = np.array([1.0, 1.0, 3.0, 4.0], np.float32)
  weights[bad] = 0.0
  keep = [k for k in range(K) if k != bad]
  p = shares(weights)
  others = jax.tree.map(lambda x: x[keep], tree)
  out = aggregate(poisoned, weights)
  for name in out:
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out[name])), name
  np.testing.assert_allclose(out["fedit"]["head"], wmean(others["head"], p[keep]),
                             rtol=1e-5, atol=1e-6)
  for path in LAYERS:
    layer, truth = get(others, path), true_delta(get(others, path), p[keep])
    for name in ("lora_a", "lora_b", "bias"):
      np.testing.assert_allclose(get(out["fedit"], path)[name], wmean(layer[name], p[keep]),
                                 rtol=1e-5, atol=1e-6)
    assert rel_err(delta(get(out["stack"], path)), truth) < 1e-5
    sigma = np.linalg.svd(truth, compute_uv=False)
    err = np.linalg.norm(delta(get(out["flex3"], path)) - truth, axis=(-2, -1))
    np.testing.assert_allclose(err, np.sqrt(np.sum(sigma[..., 3:] ** 2, axis=-1)), rtol=1e-5)
  # The bad client's blocks of the stacked factors are zero.
  stacked = out["stack"]["attn"]["query"]
  assert not np.asarray(stacked["lora_a"][:, bad * R:(bad + 1) * R]).any()
  assert not np.asarray(stacked["lora_b"][bad * R:(bad + 1) * R]).any()


def test_empty_round_keeps_the_server_tree():
  tree = make_tree(7)
  params = jax.tree.map(lambda x: x[0] + 1.0, tree)  # not any client's tree
  out = aggregate(tree, np.zeros(K, np.float32), params=params)
  for name in ("fedit", "ffa"):
    for x, y in zip(jax.tree.leaves(out[name]), jax.tree.leaves(params)):
      assert (np.asarray(x) == np.asarray(y)).all(), name
  stacked, flex = out["stack"], out["flex3"]
  for path in LAYERS:
    assert not np.asarray(get(stacked, path)["lora_a"]).any()  # Delta W_g = 0: W0 kept
    np.testing.assert_array_equal(get(stacked, path)["kernel"], get(params, path)["kernel"])
    np.testing.assert_array_equal(get(flex, path)["bias"], get(params, path)["bias"])
  # FlexLoRA refactorises the server's own adapter: rank 4, so its best rank-3 approximation.
  truth = delta(params["attn"]["query"])
  sigma = np.linalg.svd(truth, compute_uv=False)
  err = np.linalg.norm(delta(flex["attn"]["query"]) - truth)
  assert err == pytest.approx(sigma[3], rel=1e-5)


def test_empty_round_without_server_tree_weights_clients_equally():
  tree = make_tree(8)
  out = aggregate(tree, np.zeros(K, np.float32))
  equal = aggregate(tree, np.ones(K, np.float32))
  for name in out:
    for x, y in zip(jax.tree.leaves(out[name]), jax.tree.leaves(equal[name])):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=name)


def test_labels_partition_the_params():
  params = first(make_tree(10))
  grads = jax.tree.map(np.ones_like, params)
  for rule, trained in ((lora.is_lora_b_path, {"lora_b"}),
                        (lora.is_lora_path, {"lora_a", "lora_b"})):
    tree = lora.path_labels(params, rule)
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    tx = optax.partition({"train": optax.sgd(1.0), "freeze": optax.set_to_zero()}, tree)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
      moved = bool(np.asarray(u).any())
      assert moved == (path[-1].key in trained and path[0].key != "head"), path


def test_merge_lora_folds_the_stacked_update_into_the_kernel():
  tree, p = make_tree(11), shares()
  stacked = aggregate(tree)["stack"]
  merged = merge_lora(stacked, SCALE)
  for path in LAYERS:
    layer = get(merged, path)
    assert sorted(layer) == ["bias", "kernel"]
    expected = np.asarray(get(tree, path)["kernel"][0], np.float64) + true_delta(get(tree, path), p)
    np.testing.assert_allclose(layer["kernel"], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lora_delta(stacked, SCALE)["attn"]["query"],
                             delta(stacked["attn"]["query"]), rtol=1e-5, atol=1e-5)
  kept = merge_lora(stacked, SCALE, drop=False)["attn"]["query"]
  assert not np.asarray(kept["lora_b"]).any() and kept["lora_a"].shape == (D_IN, K * R)


def test_mask_rank_zeroes_beyond_the_rank():
  layer = first(make_tree(12))["attn"]["query"]
  out = mask_rank(layer, 2)
  assert not np.asarray(out["lora_a"][:, 2:]).any() and not np.asarray(out["lora_b"][2:]).any()
  np.testing.assert_array_equal(out["lora_a"][:, :2], layer["lora_a"][:, :2])
  np.testing.assert_array_equal(out["kernel"], layer["kernel"])


def test_bad_arguments():
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ConfigError, match="rank"):
      flex_svd("clients", bad)
  with pytest.raises(ConfigError, match="axis_name"):
    stack_merge(())
  bad_tree = {"dense": {"lora_a": jnp.ones((2, 4, 3)), "lora_b": jnp.ones((2, 2, 5))}}
  tx = fedit_mean("clients")
  with pytest.raises(ConfigError, match=r"tree\['dense'\]"):
    jax.vmap(lambda t: tx.update(t, tx.init(t))[0], axis_name="clients",
             out_axes=None)(bad_tree)
  with pytest.raises(ConfigError, match="kernel"):
    merge_lora({"lora_a": jnp.ones((4, 3)), "lora_b": jnp.ones((3, 5))}, 1.0)


def test_delta_aggregator_runs_a_parameter_aggregator_on_deltas():
  """delta_aggregator(flex_svd): server + its aggregate delta is FlexLoRA's tree of the
  clients' parameters (server + delta_k), up to float32 rounding; FLoRA's stacking, which
  grows the rank, is refused with the field named."""
  tree, p = make_tree(3), shares()
  server = jax.tree.map(lambda x: x + 0.5, first(make_tree(4)))
  deltas = jax.tree.map(lambda t, s: t - s[None], tree, server)
  direct = aggregate(tree, params=server, flex_ranks=(R,), stacked=False)[f"flex{R}"]

  def adapted(tx):
    def client(d, w, params):
      return tx.update(d, tx.init(params), params, weight=w)[0]
    return jax.jit(VMAP.map(client, in_axes=(0, 0, None), out_axes=None))(deltas, WEIGHTS, server)

  out = jax.tree.map(jnp.add, server, adapted(delta_aggregator(flex_svd("clients", R))))
  for path in LAYERS:
    assert rel_err(delta(get(out, path)), delta(get(direct, path))) < 1e-5
  np.testing.assert_allclose(out["head"], wmean(tree["head"], p), rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match=r"aggregator: .*\['lora_a'\] \(16, 16\) for \(16, 4\)"):
    adapted(delta_aggregator(stack_merge("clients")))
