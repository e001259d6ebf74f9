"""Aggregators as optax transforms: known answers, degenerate cases, chaining."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.runtime import ClientAxis, client_mesh
from jaxfl.transforms import weighted_mean

VMAP = ClientAxis()


def aggregate(tx, updates, weights, axis=VMAP):
  def client(u, w):
    return tx.update(u, tx.init(u), weight=w)[0]

  return jax.jit(axis.map(client, in_axes=(0, 0), out_axes=None))(updates, weights)


def test_weighted_mean_known_answer():
  u = {"a": jnp.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]]), "b": jnp.array([1.0, 0.0, 0.0])}
  w = jnp.array([1.0, 2.0, 1.0])
  out = aggregate(weighted_mean("clients"), u, w)
  # (1*[1,2] + 2*[3,6] + 1*[5,10]) / 4 = [3, 6];  (1*1) / 4 = 0.25
  np.testing.assert_allclose(out["a"], [3.0, 6.0], rtol=1e-7)
  np.testing.assert_allclose(out["b"], 0.25, rtol=1e-7)


def test_equal_weights_recover_plain_mean():
  u = jax.random.normal(jax.random.PRNGKey(0), (10, 7))
  out = aggregate(weighted_mean("clients"), u, jnp.full([10], 3.0))
  np.testing.assert_allclose(out, u.mean(0), rtol=1e-6, atol=1e-7)


def test_zero_weight_clients_are_ignored():
  u = jnp.array([1.0, 100.0, 3.0])
  out = aggregate(weighted_mean("clients"), u, jnp.array([1.0, 0.0, 1.0]))
  np.testing.assert_allclose(out, 2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_zero_weight_client_with_a_non_finite_update_is_ignored(bad):
  u = jnp.array([1.0, bad, 3.0])
  out = aggregate(weighted_mean("clients"), u, jnp.array([1.0, 0.0, 1.0]))
  assert float(out) == 2.0


def test_all_zero_weights_give_zero_update():
  out = aggregate(weighted_mean("clients"), jnp.array([1.0, 2.0]), jnp.zeros([2]))
  assert float(out) == 0.0 and np.isfinite(out)


def test_structure_and_dtype_preserved():
  u = {"w": jnp.ones((4, 3, 2), jnp.float32), "b": jnp.ones((4, 2), jnp.bfloat16)}
  out = aggregate(weighted_mean("clients"), u, jnp.ones([4]))
  assert jax.tree.structure(out) == jax.tree.structure({"w": 0, "b": 0})
  assert out["w"].shape == (3, 2) and out["w"].dtype == jnp.float32
  assert out["b"].shape == (2,) and out["b"].dtype == jnp.bfloat16


def test_state_counts_rounds():
  tx = weighted_mean("clients")

  def client(u, w):
    state = tx.init(u)
    _, state = tx.update(u, state, weight=w)
    _, state = tx.update(u, state, weight=w)
    return state.count

  count = jax.vmap(client, axis_name="clients", out_axes=None)(jnp.ones(3), jnp.ones(3))
  assert int(count) == 2


@pytest.mark.parametrize("devices", [2, 8])
def test_sharded_equals_vmapped(devices):
  u = jax.random.normal(jax.random.PRNGKey(1), (16, 5))
  w = jax.random.uniform(jax.random.PRNGKey(2), (16,))
  a = aggregate(weighted_mean("clients"), u, w)
  axis = ClientAxis(client_mesh(devices))
  b = aggregate(weighted_mean(axis.axis_name), u, w, axis)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_chains_with_optax_server_step():
  """mean aggregation then scale(-1) then sgd(1): params + mean delta (FedAvg's server step)."""
  tx = optax.chain(weighted_mean("clients"), optax.scale(-1.0), optax.sgd(1.0))
  deltas = jnp.array([[1.0], [3.0]])

  def client(u, w):
    return tx.update(u, tx.init(u), weight=w)[0]

  step = jax.vmap(client, axis_name="clients", out_axes=None)(deltas, jnp.array([1.0, 1.0]))
  params = jnp.array([10.0])
  np.testing.assert_allclose(optax.apply_updates(params, step), [12.0])


def test_vmaps_over_independent_client_groups():
  """An outer vmap (e.g. over seeds or groups) keeps groups apart."""
  u = jnp.arange(12.0).reshape(3, 4)  # 3 groups of 4 clients
  tx = weighted_mean("clients")

  def group(ug):
    return jax.vmap(lambda x: tx.update(x, tx.init(x), weight=1.0)[0], axis_name="clients",
                    out_axes=None)(ug)

  np.testing.assert_allclose(jax.vmap(group)(u), u.mean(1))


def test_axis_name_is_required():
  """No default: under shard_map the client axis is two names, and a default would reduce
  only one device's clients without any error."""
  with pytest.raises(TypeError):
    weighted_mean()  # pylint: disable=no-value-for-parameter
