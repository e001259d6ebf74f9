"""The client-axis runtime: vmap and shard_map runs of the same round agree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxfl.algorithms import FedAvg, server_optimizer
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import MLP, functional
from jaxfl.runtime import (
  ClientAxis,
  client_gather,
  client_index,
  client_mesh,
  client_sum,
  make_client_axis,
)
from jaxfl.sim import uniform_profiles
from jaxfl.transforms import weighted_mean


def ragged_clients(num_clients=16, seed=0):
  """Clients of 3 .. 300 samples (client 0 has 3, client 1 has 300)."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(3, 300, num_clients)
  counts[0], counts[1] = 3, 300
  n_max = counts.max()
  x = rng.normal(size=(num_clients, n_max, 8, 8)).astype(np.float32)
  y = rng.integers(0, 10, (num_clients, n_max)).astype(np.int32)
  for k, n in enumerate(counts):  # padding is zero, as pad_clients makes it
    x[k, n:], y[k, n:] = 0, 0
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts, jnp.int32))


def test_eight_devices_available():
  assert jax.device_count() == 8


def test_collective_reduces_all_clients_under_both_runtimes():
  x = jnp.arange(16.0)
  w = jnp.arange(16.0) + 1
  expected = float(jnp.sum(w * x) / jnp.sum(w))
  for axis in (ClientAxis(), ClientAxis(client_mesh(8)), ClientAxis(client_mesh(4))):
    agg = weighted_mean(axis.axis_name)

    def client(u, wk):
      return agg.update(u, agg.init(u), weight=wk)[0]

    out = jax.jit(axis.map(client, in_axes=(0, 0), out_axes=None))(x, w)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("local,server", [("epochs", "fedavg"), ("steps", "fedadam")])
@pytest.mark.slow
def test_fedavg_round_vmap_equals_shard_map(local, server):
  data = ragged_clients()
  apply_fn, params = functional(MLP(64, (32,), 10, rngs=nnx.Rngs(0)))
  results = {}
  for devices in (1, 8):
    kwargs = (dict(local_steps=5) if local == "steps" else
              dict(local_steps=None, local_epochs=1.0, max_local_steps=12))
    alg = FedAvg(softmax_cross_entropy(apply_fn), optax.sgd(0.1),
                 server_optimizer(server, 1.0 if server == "fedavg" else 0.01), batch_size=32,
                 clients_per_round=16, profiles=uniform_profiles(16),
                 axis=make_client_axis(devices), **kwargs)
    state = alg.init(params, jax.random.PRNGKey(1))
    for _ in range(2):
      state, metrics = alg.jit_round(state, data)
    results[devices] = (state, metrics)
  (s1, m1), (s8, m8) = results[1], results[8]
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)))
  assert diff <= 1e-6
  np.testing.assert_array_equal(m1.client.steps, m8.client.steps)
  np.testing.assert_allclose(m1.loss, m8.loss, rtol=1e-6)
  if local == "epochs":  # ragged: the 3-sample client takes 1 step, the 300-sample one 10
    steps = dict(zip(np.asarray(m1.client_ids), np.asarray(m1.client.steps)))
    assert steps[0] == 1 and steps[1] == 10


def test_clients_per_round_must_divide_devices():
  apply_fn, _ = functional(MLP(64, (8,), 10, rngs=nnx.Rngs(0)))
  with pytest.raises(ConfigError, match="clients_per_round"):
    FedAvg(softmax_cross_entropy(apply_fn), optax.sgd(0.1), optax.sgd(1.0), batch_size=4,
           clients_per_round=12, profiles=uniform_profiles(16), axis=make_client_axis(8))


def test_client_mesh_rejects_too_many_devices():
  with pytest.raises(ConfigError, match="num_devices"):
    client_mesh(9)


@pytest.mark.parametrize("check_vma", [True, False])
def test_client_collectives_in_a_user_shard_map(check_vma):
  """client_sum / client_gather / client_index over ('devices', 'clients') inside a plain
  jax.shard_map: JAX 0.10.2 refuses a psum or all_gather over the vmap axis there when
  check_vma=True, so the helpers must avoid both (the module docstring's rule)."""
  mesh = client_mesh(8)
  x = jnp.arange(16.0)
  names = ("devices", "clients")

  def client(v):
    return (client_sum(v, names), client_gather(v, names),
            client_gather(client_index(names), names), client_sum(1.0, names))

  body = jax.vmap(client, axis_name="clients", out_axes=None)
  out = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("devices"), out_specs=P(),
                              check_vma=check_vma))(x)
  total, gathered, index, count = out
  assert float(total) == 120.0 and float(count) == 16.0
  np.testing.assert_array_equal(gathered, x)  # global client order, device-major
  np.testing.assert_array_equal(index, np.arange(16))
