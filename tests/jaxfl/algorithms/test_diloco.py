"""DiLoCo: degenerate cases recover plain training, the outer step, the clock, the mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms.diloco import DiLoCo
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData
from jaxfl.runtime import ClientAxis, client_mesh
from jaxfl.sim import WAN


def loss(w, x, y):
  return jnp.mean((x @ w - y) ** 2)


def data(num_workers, n=8, seed=0):
  x = jax.random.normal(jax.random.key(seed), (num_workers, n, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.1 * jnp.arange(num_workers)[:, None]  # worker drift
  return ClientData(x, y, jnp.full([num_workers], n, jnp.int32))


@pytest.mark.slow
def test_one_worker_one_step_outer_sgd_one_is_plain_inner_training():
  inner = optax.adamw(1e-2)
  alg = DiLoCo(loss, inner, optax.sgd(1.0), num_workers=1, inner_steps=1, batch_size=8)
  d = data(1)
  state = alg.init(jnp.zeros(3), jax.random.key(0))
  w, opt = jnp.zeros(3), inner.init(jnp.zeros(3))
  for _ in range(4):
    state, _ = alg.jit_round(state, d)
  # The same trajectory as stepping the inner optimizer directly on the same batches
  # (outer step t, worker 0, inner step 0).
  for t in range(4):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.key, t), 0), 0)
    idx = jax.random.randint(k, (8,), 0, 8)
    g = jax.grad(loss)(w, d.x[0][idx], d.y[0][idx])
    u, opt = inner.update(g, opt, w)
    w = optax.apply_updates(w, u)
  np.testing.assert_allclose(state.params, w, rtol=1e-6, atol=1e-7)
  assert int(state.inner_state[0].count[0]) == 4  # the inner state persisted across rounds


@pytest.mark.slow
def test_outer_sgd_one_averages_the_workers_and_nesterov_is_the_outer_step():
  d = data(4)
  plain = DiLoCo(loss, optax.sgd(0.05), optax.sgd(1.0), num_workers=4, inner_steps=3,
                 batch_size=4)
  s0 = plain.init(jnp.zeros(3), jax.random.key(1))
  s1, m = plain.jit_round(s0, d)
  # Recompute each worker's 3 SGD steps by hand and average.
  key = jax.random.fold_in(s0.key, 0)
  finals = []
  for k in range(4):
    w = jnp.zeros(3)
    for s in range(3):
      idx = jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, k), s), (4,), 0, 8)
      w = w - 0.05 * jax.grad(loss)(w, d.x[k][idx], d.y[k][idx])
    finals.append(w)
  np.testing.assert_allclose(s1.params, jnp.mean(jnp.stack(finals), 0), rtol=1e-5, atol=1e-6)
  # Nesterov outer step on the same pseudo-gradient: theta - lr (Delta + mu * (mu*0 + Delta)).
  nest = DiLoCo(loss, optax.sgd(0.05), optax.sgd(0.7, momentum=0.9, nesterov=True),
                num_workers=4, inner_steps=3, batch_size=4)
  n1, _ = nest.jit_round(nest.init(jnp.zeros(3), jax.random.key(1)), d)
  delta = -s1.params  # theta0 - mean(theta_m) with theta0 = 0
  np.testing.assert_allclose(n1.params, -0.7 * (delta + 0.9 * delta), rtol=1e-5, atol=1e-6)
  assert m.worker_loss.shape == (4,)


def test_blocking_clock_and_wan_cost():
  wan = WAN(bandwidth=100.0, latency=0.5)
  alg = DiLoCo(loss, optax.sgd(0.1), optax.sgd(1.0), num_workers=4, inner_steps=10,
               batch_size=2, step_time=0.2, wan=wan)
  state = alg.init(jnp.zeros(3), jax.random.key(0))
  for _ in range(3):
    state, m = alg.jit_round(state, data(4))
  sync = 2 * 3 / 4 * 12 / 100.0 + 0.5  # ring all-reduce of 3 float32 = 12 bytes
  assert float(m.sync_time) == pytest.approx(sync)
  assert float(state.sim_time) == pytest.approx(3 * (10 * 0.2 + sync), rel=1e-6)
  assert int(state.step) == 30


@pytest.mark.slow
def test_shard_map_matches_vmap():
  d = data(4)
  kwargs = dict(num_workers=4, inner_steps=3, batch_size=4)
  outer = optax.sgd(0.7, momentum=0.9, nesterov=True)
  a = DiLoCo(loss, optax.adamw(1e-2), outer, **kwargs)
  b = DiLoCo(loss, optax.adamw(1e-2), outer, axis=ClientAxis(client_mesh(2)), **kwargs)
  sa, sb = a.init(jnp.zeros(3), jax.random.key(0)), b.init(jnp.zeros(3), jax.random.key(0))
  for _ in range(2):
    sa, _ = a.jit_round(sa, d)
    sb, _ = b.jit_round(sb, d)
  np.testing.assert_allclose(sa.params, sb.params, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_workers=0), "num_workers"), (dict(inner_steps=0), "inner_steps"),
    (dict(batch_size=-1), "batch_size"), (dict(step_time=-1.0), "step_time"),
])
def test_bad_arguments_name_the_field(kwargs, field):
  base = dict(num_workers=2, inner_steps=2, batch_size=2)
  with pytest.raises(ConfigError, match=field):
    DiLoCo(loss, optax.sgd(0.1), optax.sgd(1.0), **(base | kwargs))
