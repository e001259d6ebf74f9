"""FedAvg and the server optimizers: the round equals its definition computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.algorithms import FedAvg, server_optimizer
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, make_local_train, softmax_cross_entropy
from jaxfl.models import MLP, functional
from jaxfl.sim import uniform_profiles

N, N_MAX, BATCH, STEPS = 6, 40, 8, 3


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  counts = np.array([3, 40, 17, 25, 8, 31], np.int32)
  x = rng.normal(size=(N, N_MAX, 64)).astype(np.float32)
  y = rng.integers(0, 10, (N, N_MAX)).astype(np.int32)
  apply_fn, params = functional(MLP(64, (16,), 10, rngs=nnx.Rngs(0)))
  data = ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts))
  return softmax_cross_entropy(apply_fn), params, data


def by_hand(loss_fn, params, data, state_key, round_):
  """Every client's new params, trained with the keys FedAvg.round derives."""
  key = jax.random.fold_in(state_key, round_)
  _, k_train = jax.random.split(key)
  local = jax.jit(make_local_train(loss_fn, optax.sgd(0.1), batch_size=BATCH, max_steps=STEPS))
  out = []
  for k in range(N):
    client = jax.tree.map(lambda a: a[k], data)
    p, _ = local(params, client, jnp.int32(STEPS), jax.random.fold_in(k_train, k))
    out.append(p)
  return out


def make(loss_fn, server, **kw):
  return FedAvg(loss_fn, optax.sgd(0.1), server, batch_size=BATCH, clients_per_round=N,
                profiles=uniform_profiles(N), local_steps=STEPS, **kw)


@pytest.mark.slow
def test_fedavg_is_sample_weighted_mean_of_client_models(setup):
  loss_fn, params, data = setup
  alg = make(loss_fn, server_optimizer("fedavg"))
  key = jax.random.PRNGKey(5)
  state, metrics = alg.jit_round(alg.init(params, key), data)
  clients = by_hand(loss_fn, params, data, key, 0)
  w = np.asarray(data.count, np.float64) / np.sum(data.count)
  expected = jax.tree.map(lambda *ps: sum(wk * p for wk, p in zip(w, ps)), *clients)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
  assert sorted(np.asarray(metrics.client_ids).tolist()) == list(range(N))
  assert int(metrics.participants) == N and int(state.round) == 1


@pytest.mark.parametrize("name,lr", [("fedavgm", 0.7), ("fedadam", 0.01), ("fedyogi", 0.01),
                                     ("fedadagrad", 0.05)])
@pytest.mark.slow
def test_server_optimizer_applies_to_pseudo_gradient(setup, name, lr):
  """x1 = x0 + tx(-mean delta), with the optimizer stepped by hand through optax."""
  loss_fn, params, data = setup
  tx = server_optimizer(name, lr)
  alg = make(loss_fn, tx)
  key = jax.random.PRNGKey(5)
  state, _ = alg.jit_round(alg.init(params, key), data)
  clients = by_hand(loss_fn, params, data, key, 0)
  w = np.asarray(data.count, np.float64) / np.sum(data.count)
  mean = jax.tree.map(lambda p0, *ps: sum(wk * (p - p0) for wk, p in zip(w, ps)), params, *clients)
  updates, _ = tx.update(jax.tree.map(jnp.negative, mean), tx.init(params), params)
  expected = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_single_client_fedavg_is_local_training(setup):
  """One client, server lr 1: the server model is exactly that client's model."""
  loss_fn, params, data = setup
  one = jax.tree.map(lambda a: a[1:2], data)
  alg = FedAvg(loss_fn, optax.sgd(0.1), server_optimizer("fedavg"), batch_size=BATCH,
               clients_per_round=1, profiles=uniform_profiles(1), local_steps=STEPS)
  key = jax.random.PRNGKey(2)
  state, _ = alg.jit_round(alg.init(params, key), one)
  _, k_train = jax.random.split(jax.random.fold_in(key, 0))
  local = make_local_train(loss_fn, optax.sgd(0.1), batch_size=BATCH, max_steps=STEPS)
  p, _ = local(params, jax.tree.map(lambda a: a[0], one), jnp.int32(STEPS),
               jax.random.fold_in(k_train, 0))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_zero_server_lr_keeps_params(setup):
  loss_fn, params, data = setup
  alg = make(loss_fn, server_optimizer("fedavg", 0.0))
  state, _ = alg.jit_round(alg.init(params, jax.random.PRNGKey(0)), data)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_a_server_schedule_is_accepted_and_a_zero_schedule_keeps_params(setup):
  """An optax schedule as the server learning rate: a zero schedule is a zero step."""
  loss_fn, params, data = setup
  alg = make(loss_fn, server_optimizer("fedavgm", optax.constant_schedule(0.0)))
  state, _ = alg.jit_round(alg.init(params, jax.random.PRNGKey(0)), data)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_same_seed_bit_identical_different_seed_differs(setup):
  loss_fn, params, data = setup
  alg = make(loss_fn, server_optimizer("fedavg"))
  run = lambda seed: alg.jit_round(alg.init(params, jax.random.PRNGKey(seed)), data)[0].params
  a, b, c = run(3), run(3), run(4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, z) for x, z in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


@pytest.mark.parametrize("kwargs,field", [
    (dict(local_steps=0), "local_steps"),
    (dict(local_steps=None, local_epochs=None), "local_epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(clients_per_round=N + 1), "clients_per_round"),
])
def test_bad_arguments_name_the_field(setup, kwargs, field):
  loss_fn, _, _ = setup
  base = dict(batch_size=BATCH, clients_per_round=N, profiles=uniform_profiles(N),
              local_steps=STEPS)
  base.update(kwargs)
  with pytest.raises(ConfigError, match=field):
    FedAvg(loss_fn, optax.sgd(0.1), optax.sgd(1.0), **base)


def test_server_optimizer_errors():
  with pytest.raises(ConfigError, match="server_optimizer"):
    server_optimizer("fedfoo")
  with pytest.raises(ConfigError, match="server_lr"):
    server_optimizer("fedavg", -1.0)


@pytest.mark.slow
def test_server_optimizer_state_carries_across_rounds(setup):
  """Round 2 of FedAdam applies the moments accumulated in round 1 (by hand through optax)."""
  loss_fn, params, data = setup
  tx = server_optimizer("fedadam", 0.01)
  alg = make(loss_fn, tx)
  key = jax.random.PRNGKey(5)
  state = alg.init(params, key)
  for _ in range(2):
    state, _ = alg.jit_round(state, data)

  w = np.asarray(data.count, np.float64) / np.sum(data.count)
  p, opt_state = params, tx.init(params)
  for r in range(2):
    clients = by_hand(loss_fn, p, data, key, r)
    mean = jax.tree.map(lambda p0, *ps: sum(wk * (q - p0) for wk, q in zip(w, ps)), p, *clients)
    updates, opt_state = tx.update(jax.tree.map(jnp.negative, mean), opt_state, p)
    p = optax.apply_updates(p, updates)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(state.opt_state[0].count) == 2
