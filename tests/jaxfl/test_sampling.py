"""Client sampling among online clients: invariants, seeded frequencies, offline FedAvg slots."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.algorithms import FedAvg, server_optimizer
from jaxfl.local import ClientData, make_local_train, softmax_cross_entropy
from jaxfl.models import MLP, functional
from jaxfl.sampling import sample_clients
from jaxfl.sim import DeviceProfiles

N = 10  # clients in the sampling tests
K = 4000  # independent rounds (keys) in the statistical tests
KEYS = jax.random.split(jax.random.PRNGKey(0), K)


@functools.partial(jax.jit, static_argnums=2)
def sample_many(keys, availability, num_sampled):
  """``sample_clients`` for each key: ``(ids [K, m], participating [K, m])``.

  ``lax.map`` rather than ``vmap``: XLA:CPU compiles threefry batched over 4000 keys ~3x
  slower (~3 s) than the loop body (~1 s); the results are the same per key.
  """
  return jax.lax.map(lambda k: sample_clients(k, availability, num_sampled), keys)


def five_sigma(q, trials):
  """5 binomial standard errors of a frequency with probability ``q`` over ``trials`` draws."""
  return 5 * math.sqrt(q * (1 - q) / trials)


def test_full_availability_ids_distinct_in_range_and_uniform():
  ids, part = map(np.asarray, sample_many(KEYS, jnp.ones([N]), 3))
  assert ids.shape == (K, 3) and ids.dtype == np.int32 and part.dtype == np.bool_
  assert ids.min() >= 0 and ids.max() < N
  assert np.all(np.diff(np.sort(ids, axis=1), axis=1) > 0)  # distinct within every round
  assert part.all()  # availability 1: every slot is an online client
  # Each client is picked with probability m/N = 0.3; over K = 4000 rounds the SE of its
  # frequency is sqrt(0.3 * 0.7 / 4000) = 0.0072, tolerance 5 SE = 0.036.
  freq = np.bincount(ids.ravel(), minlength=N) / K
  np.testing.assert_allclose(freq, 0.3, atol=five_sigma(0.3, K))
  # Uniform over subsets, not only marginally: each pair appears with probability
  # C(8, 1) / C(10, 3) = 1/15 (SE 0.0039, tolerance 0.020).
  members = np.zeros([K, N], bool)
  np.put_along_axis(members, ids, True, axis=1)
  for i, j in itertools.combinations(range(N), 2):
    pair = np.mean(members[:, i] & members[:, j])
    assert abs(pair - 1 / 15) < five_sigma(1 / 15, K), (i, j, pair)


def test_same_key_same_ids_and_eager_equals_jit():
  avail = jnp.array([1.0, 0.5] * (N // 2))
  a = sample_many(KEYS, avail, 3)
  b = sample_many(KEYS, avail, 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  ids0, part0 = sample_clients(KEYS[0], avail, 3)  # eager, one key
  np.testing.assert_array_equal(ids0, a[0][0])
  np.testing.assert_array_equal(part0, a[1][0])


P = 0.3  # availability of clients 0..4; clients 5..9 are always online
HALF = jnp.array([P] * 5 + [1.0] * 5)


def test_all_sampled_participation_equals_availability():
  ids, part = map(np.asarray, sample_many(KEYS, HALF, N))
  assert np.all(np.sort(ids, axis=1) == np.arange(N))  # m = N: every client, once
  online = np.zeros([K, N], bool)
  np.put_along_axis(online, ids, part, axis=1)
  # With every client sampled, a slot participates iff its client is online.
  assert online[:, 5:].all()
  np.testing.assert_allclose(online[:, :5].mean(0), P, atol=five_sigma(P, K))
  # Participants per round: 5 + Binomial(5, P); mean 6.5, SE sqrt(5 P (1-P) / K) = 0.016.
  count = part.sum(1)
  assert count.min() >= 5
  assert abs(count.mean() - (5 + 5 * P)) < 5 * math.sqrt(5 * P * (1 - P) / K)


def test_partial_availability_pick_frequencies():
  ids, part = map(np.asarray, sample_many(KEYS, HALF, 3))
  assert part.all()  # at least the 5 always-on clients are online: 3 slots always filled
  freq = np.bincount(ids.ravel(), minlength=N) / K
  # B ~ Binomial(5, P) online part-time clients. An always-on client is one of 5 + B online
  # clients, 3 of which are picked uniformly: q_on = E[3 / (5 + B)]. A part-time client must be
  # online (P) and then competes with 5 + B' others, B' ~ Binomial(4, P): q_p = P E[3 / (6 + B')].
  binom = lambda n, b: math.comb(n, b) * P**b * (1 - P)**(n - b)
  q_on = sum(binom(5, b) * 3 / (5 + b) for b in range(6))
  q_p = P * sum(binom(4, b) * 3 / (6 + b) for b in range(5))
  assert 5 * q_on + 5 * q_p == pytest.approx(3)  # slots are conserved
  np.testing.assert_allclose(freq[5:], q_on, atol=five_sigma(q_on, K))  # q_on = 0.473
  np.testing.assert_allclose(freq[:5], q_p, atol=five_sigma(q_p, K))  # q_p = 0.127


def test_tiny_availability_essentially_never_participates():
  avail = jnp.array([1.0] * 5 + [1e-6] * 5)
  ids, part = map(np.asarray, sample_many(KEYS, avail, N))
  online = np.zeros([K, N], bool)
  np.put_along_axis(online, ids, part, axis=1)
  assert online[:, :5].all()
  # Expected online count of the tiny clients: K * 5 * 1e-6 = 0.02; P(Poisson(0.02) >= 3) ~ 1e-6.
  assert online[:, 5:].sum() <= 2


def test_fewer_online_than_slots_pads_with_offline_clients():
  avail = jnp.array([1.0, 1.0] + [1e-6] * 8)  # 2 online clients, 3 slots
  ids, part = map(np.asarray, sample_many(KEYS, avail, 3))
  # Over the first 500 rounds a tiny client is online with probability ~500 * 8 * 1e-6 = 0.4%.
  ids, part = ids[:500], part[:500]
  np.testing.assert_array_equal(part.sum(1), 2)
  np.testing.assert_array_equal(np.sort(np.where(part, ids, -1), axis=1)[:, 1:], [[0, 1]] * 500)
  padding = ids[~part]
  assert padding.shape == (500,) and padding.min() >= 2 and padding.max() < N
  assert np.all(np.diff(np.sort(ids, axis=1), axis=1) > 0)


def test_availability_below_float32_resolution():
  # Online chance of any of 2**20 clients at availability 1e-30: < 2**20 * 1e-30 ~ 1e-24.
  # Seed 2 makes one of the 2**20 uniform draws exactly 0, which a plain `u < p` test would
  # count as online.
  n = 2**20
  ids, part = sample_clients(jax.random.PRNGKey(2), jnp.full([n], 1e-30), 1)
  assert not bool(part[0]), f"client {int(ids[0])} is online"


# ---------------------------------------------------------------- FedAvg with offline clients


def tiny_model(seed=0):
  """MLP(64, (8,), 10) with numpy-drawn parameters (skips NNX's ~4 s of eager init compiles)."""
  apply_fn, abstract = functional(nnx.eval_shape(lambda: MLP(64, (8,), 10, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  return apply_fn, jax.tree.map(
      lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), abstract)


@pytest.mark.slow
def test_fedavg_offline_slots_get_no_steps_and_no_weight():
  apply_fn, params = tiny_model()
  loss_fn = softmax_cross_entropy(apply_fn)
  counts = np.array([16, 4, 9, 12, 7, 16, 3, 11])
  offline = np.array([2, 5, 7])
  online = np.array([0, 1, 3, 4, 6])
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 16, 64)).astype(np.float32)
  y = rng.integers(0, 10, (8, 16)).astype(np.int32)
  for k, n in enumerate(counts):
    x[k, n:], y[k, n:] = 0, 0
  x[offline] = np.nan  # an offline client's data must not reach the server, even as 0 * NaN
  data = ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts, jnp.int32))
  # Availability 1e-9 (< float32 resolution: online with probability 2**-23, see above).
  avail = np.ones(8, np.float32)
  avail[offline] = 1e-9
  profiles = DeviceProfiles(*(jnp.ones([8]),) * 3, jnp.asarray(avail))
  steps, batch, lr = 3, 4, 0.1
  # clients_per_round = N: the offline clients are sampled into the padding slots.
  alg = FedAvg(loss_fn, optax.sgd(lr), server_optimizer("fedavg"), batch_size=batch,
               clients_per_round=8, local_steps=steps, profiles=profiles)
  state0 = alg.init(params, jax.random.PRNGKey(3))
  state, metrics = alg.jit_round(state0, data)

  ids = np.asarray(metrics.client_ids)
  part = np.isin(ids, online)
  assert sorted(ids) == list(range(8))
  assert int(metrics.participants) == 5
  np.testing.assert_array_equal(metrics.client.steps, np.where(part, steps, 0))
  np.testing.assert_array_equal(metrics.client.samples, np.where(part, steps * batch, 0))
  np.testing.assert_array_equal(np.asarray(metrics.client.loss)[~part], 0.0)

  # By hand: train the online clients with the keys FedAvg.round derives, then the
  # sample-weighted mean of their deltas; server SGD with lr 1 adds it to the params.
  k_sample, k_train = jax.random.split(jax.random.fold_in(state0.key, 0))
  del k_sample
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_train, jnp.asarray(online))
  local_train = make_local_train(loss_fn, optax.sgd(lr), batch_size=batch, max_steps=steps)
  trained, local = jax.jit(jax.vmap(local_train, in_axes=(None, 0, 0, 0)))(
      params, jax.tree.map(lambda a: a[online], data), jnp.full([5], steps), keys)
  w = counts[online] / counts[online].sum()
  expected = jax.tree.map(
      lambda p, t: np.asarray(p, np.float64) + np.tensordot(
          w, np.asarray(t, np.float64) - np.asarray(p, np.float64), axes=1), params, trained)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  slot = {int(c): s for s, c in enumerate(ids)}
  np.testing.assert_allclose(np.asarray(metrics.client.loss)[[slot[c] for c in online]],
                             local.loss, rtol=1e-6)
  # The round loss is the sample-weighted mean over participants only.
  np.testing.assert_allclose(metrics.loss, np.mean(local.loss), rtol=1e-6)  # equal samples


def test_availability_one_is_always_online():
  # Seed 2 draws U == 0 exactly for one of 2**20 clients; 1 - U = 1 must still count as online.
  n = 2**20
  _, part = sample_clients(jax.random.PRNGKey(2), jnp.ones([n]), n)
  assert bool(part.all())
