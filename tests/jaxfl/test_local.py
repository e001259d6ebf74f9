"""Local training: batching over padded data, per-client step masks, scan vs Python."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.local import (
  ClientData,
  batch_indices,
  local_epochs_to_steps,
  make_local_train,
  softmax_cross_entropy,
  visiting_order,
)
from jaxfl.models import MLP, functional


def small_problem(n=40, n_max=64, seed=0):
  rng = np.random.default_rng(seed)
  x = np.zeros((n_max, 8, 8), np.float32)
  y = np.zeros((n_max,), np.int32)
  x[:n] = rng.normal(size=(n, 8, 8))
  y[:n] = rng.integers(0, 10, n)
  apply_fn, params = functional(MLP(64, (16,), 10, rngs=nnx.Rngs(0)))
  return apply_fn, params, ClientData(jnp.asarray(x), jnp.asarray(y), jnp.int32(n))


def test_visiting_order_is_a_permutation_of_valid_rows():
  order = visiting_order(jax.random.PRNGKey(3), jnp.int32(7), 20)
  assert sorted(np.asarray(order[:7]).tolist()) == list(range(7))
  assert sorted(np.asarray(order[7:]).tolist()) == list(range(7, 20))


def test_batches_cover_an_epoch_then_wrap():
  order = jnp.array([4, 2, 0, 1, 3, 9, 9, 9])  # 5 valid rows, padding after
  b0 = batch_indices(order, jnp.int32(5), jnp.int32(0), 3)
  b1 = batch_indices(order, jnp.int32(5), jnp.int32(1), 3)
  np.testing.assert_array_equal(b0, [4, 2, 0])
  np.testing.assert_array_equal(b1, [1, 3, 4])  # wraps, never reaches padding (9)


def test_tiny_client_batch_repeats_its_samples():
  order = jnp.array([1, 0, 5, 5])
  np.testing.assert_array_equal(batch_indices(order, jnp.int32(2), jnp.int32(0), 5),
                                [1, 0, 1, 0, 1])


def test_epochs_to_steps():
  np.testing.assert_array_equal(local_epochs_to_steps(jnp.array([3, 32, 33, 300]), 1.0, 32),
                                [1, 1, 2, 10])
  np.testing.assert_array_equal(local_epochs_to_steps(jnp.array([3, 300]), 2.0, 32), [1, 19])


@pytest.mark.slow
def test_scan_matches_python_loop_of_sgd_steps():
  apply_fn, params, data = small_problem()
  loss_fn = softmax_cross_entropy(apply_fn)
  tx = optax.sgd(0.1)
  key = jax.random.PRNGKey(7)
  out, metrics = jax.jit(make_local_train(loss_fn, tx, batch_size=8, max_steps=6))(
      params, data, jnp.int32(6), key)

  order = visiting_order(key, data.count, data.x.shape[0])
  p, losses = params, []
  for s in range(6):
    idx = batch_indices(order, data.count, jnp.int32(s), 8)
    loss, g = jax.value_and_grad(loss_fn)(p, data.x[idx], data.y[idx])
    p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
    losses.append(float(loss))
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics.loss, np.mean(losses), rtol=1e-5)
  assert int(metrics.steps) == 6 and int(metrics.samples) == 48


def test_steps_beyond_num_steps_change_nothing():
  """A scan of 10 with num_steps=4 equals a scan of 4 (params and momentum state both masked)."""
  apply_fn, params, data = small_problem()
  loss_fn = softmax_cross_entropy(apply_fn)
  tx = optax.sgd(0.1, momentum=0.9)
  key = jax.random.PRNGKey(1)
  long, m_long = make_local_train(loss_fn, tx, batch_size=8, max_steps=10)(
      params, data, jnp.int32(4), key)
  short, m_short = make_local_train(loss_fn, tx, batch_size=8, max_steps=4)(
      params, data, jnp.int32(4), key)
  for a, b in zip(jax.tree.leaves(long), jax.tree.leaves(short)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(m_long.loss, m_short.loss, rtol=1e-6)
  assert int(m_long.steps) == 4


def test_zero_steps_returns_params_unchanged():
  apply_fn, params, data = small_problem()
  out, m = make_local_train(softmax_cross_entropy(apply_fn), optax.sgd(1.0), batch_size=8,
                            max_steps=3)(params, data, jnp.int32(0), jax.random.PRNGKey(0))
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert float(m.loss) == 0.0 and int(m.samples) == 0


def test_padding_never_enters_a_batch():
  """Poisoned padding (NaN) would make the loss NaN if any padded row were used."""
  apply_fn, params, data = small_problem(n=5, n_max=32)
  data = data._replace(x=data.x.at[5:].set(jnp.nan))
  out, m = make_local_train(softmax_cross_entropy(apply_fn), optax.sgd(0.1), batch_size=16,
                            max_steps=4)(params, data, jnp.int32(4), jax.random.PRNGKey(0))
  assert np.isfinite(float(m.loss))
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(out))


def test_unmasked_scan_equals_masked_when_all_steps_run():
  apply_fn, params, data = small_problem()
  loss_fn = softmax_cross_entropy(apply_fn)
  key = jax.random.PRNGKey(4)
  kw = dict(batch_size=8, max_steps=5)
  a, ma = make_local_train(loss_fn, optax.sgd(0.1), **kw)(params, data, jnp.int32(5), key)
  b, mb = make_local_train(loss_fn, optax.sgd(0.1), mask_steps=False, **kw)(params, data,
                                                                             jnp.int32(5), key)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_allclose(ma.loss, mb.loss, rtol=1e-6)
  # A discarded client (num_steps 0) reports no loss and no samples.
  _, m0 = make_local_train(loss_fn, optax.sgd(0.1), mask_steps=False, **kw)(params, data,
                                                                            jnp.int32(0), key)
  assert float(m0.loss) == 0.0 and int(m0.samples) == 0


def test_fractional_epochs_round_exactly():
  # 0.3 * 50 / 5 = 3 exactly; float32 gives 3.0000002, which a plain ceil turns into 4.
  np.testing.assert_array_equal(local_epochs_to_steps(jnp.array([50, 10, 11]), 0.3, 5), [3, 1, 1])


def test_a_stochastic_loss_gets_a_fresh_key_per_step_from_the_client_key(key):
  """A dropout-like loss sees fold_in(key, s) at step s: different per step, the same on a
  rerun, and the batch order (drawn from the key itself) is that of a deterministic loss."""
  x = jnp.arange(8.0)[:, None]
  data = ClientData(x, jnp.zeros(8), jnp.int32(8))
  seen = lambda w, xb, yb, k: jnp.mean((w * xb[:, 0] - yb) ** 2) + 0.0 * w + jax.random.uniform(k)
  plain = lambda w, xb, yb: jnp.mean((w * xb[:, 0] - yb) ** 2)
  train = lambda fn: make_local_train(fn, optax.sgd(0.0), batch_size=2, max_steps=3,
                                      mask_steps=False)
  _, m = jax.jit(train(seen))(jnp.float32(1.0), data, jnp.int32(3), key)
  _, m0 = jax.jit(train(plain))(jnp.float32(1.0), data, jnp.int32(3), key)
  extra = [float(jax.random.uniform(jax.random.fold_in(key, s))) for s in range(3)]
  # The mean loss over the 3 steps is the deterministic one plus the mean of the 3 draws.
  np.testing.assert_allclose(float(m.loss), float(m0.loss) + np.mean(extra), rtol=1e-6)
  assert len(set(extra)) == 3
