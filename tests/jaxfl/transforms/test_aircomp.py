"""Over-the-air aggregation: exact at infinite SNR, noise as predicted, transform == function."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.errors import ConfigError
from jaxfl.runtime import ClientAxis, client_mesh
from jaxfl.transforms import aircomp_aggregate, aircomp_mean

K = 8
KEY = jax.random.PRNGKey(42)
VMAP = ClientAxis()  # all clients on one device


@functools.cache
def program(policy="optimal", truncate=False, axis=VMAP):
  """One jitted round: aircomp_mean inside the client map and aircomp_aggregate, same inputs.

  ``noise_var`` (and the threshold) are traced arguments, so each policy compiles once;
  every compile costs about a second on CPU (mostly the per-leaf normal draws).
  """

  def run(updates, weights, gains, max_power, key, noise_var, threshold):
    threshold = threshold if truncate else None
    tx = aircomp_mean(axis.axis_name, noise_var=noise_var, policy=policy,
                      truncation_threshold=threshold)

    def client(u, w, g, p, key):
      return tx.update(u, tx.init(u), weight=w, gain_sq=g, noise_key=key, max_power=p)

    est, state = axis.map(client, in_axes=(0, 0, 0, 0, None), out_axes=None)(
        updates, weights, gains, max_power, key)
    ref = aircomp_aggregate(updates, weights, gains, max_power, noise_var, key, policy,
                            truncation_threshold=threshold)
    return est, state, ref

  return jax.jit(run)


def run(group, noise_var, policy="optimal", *, threshold=None, axis=VMAP):
  """(transform estimate, AirCompState, (function estimate, PowerControl, mse)).

  Zero-forcing always takes the truncation path (a threshold of 0 cuts nobody, gains
  being >= 0), so one compile serves plain and truncated inversion; the other policies
  take the ``truncation_threshold=None`` path.
  """
  updates, weights, gains, max_power = group
  truncate = policy == "zero_forcing"
  assert truncate or threshold is None
  fn = program(policy, truncate, axis)
  return fn(updates, weights, gains, max_power, KEY, noise_var,
            0.0 if threshold is None else threshold)


def make_group(seed, entries=20_000):
  """Updates [K, entries] of different scales, a faded channel, client 2 not a member."""
  rng = np.random.default_rng(seed)
  updates = (rng.normal(size=(K, entries)) * rng.uniform(0.1, 2.0, (K, 1))).astype(np.float32)
  weights = rng.uniform(1.0, 5.0, K).astype(np.float32)
  weights[2] = 0.0
  gains = (rng.uniform(0.2, 1.0, K) * rng.exponential(1.0, K)).astype(np.float32)
  max_power = rng.uniform(0.5, 1.5, K).astype(np.float32)
  return updates, weights, gains, max_power


def weighted_mean(updates, weights):
  w = np.asarray(weights, np.float64)
  return np.tensordot(w / w.sum(), np.asarray(updates, np.float64), axes=1)


def assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.parametrize("policy", ["optimal", "zero_forcing"])
def test_infinite_snr_gives_the_exact_weighted_mean(policy):
  group = make_group(0)
  target = weighted_mean(*group[:2])
  for noise_var in (0.0, 1e-12):
    est, state, (ref, _, mse) = run(group, noise_var, policy)
    np.testing.assert_allclose(est, target, atol=1e-5)
    np.testing.assert_allclose(ref, target, atol=1e-5)
    assert float(state.mse) < 1e-10 and float(mse) < 1e-10 and int(state.count) == 1


@pytest.mark.parametrize("policy", ["optimal", "zero_forcing", "full_power"])
def test_transform_equals_function_and_error_matches_mse(policy):
  """Rows of exactly rms 3 (so every signal c u_k has unit power, c = 1/3) and independent
  entries: the estimate's error per entry has variance aggregation_mse / c^2. 20,000
  entries put the std of the empirical variance at 1%. (With unequal rms the misalignment
  part is smaller and aggregation_mse is an upper bound.)"""
  updates, weights, gains, max_power = make_group(1)
  updates = 3.0 * updates / np.sqrt(np.mean(updates ** 2, axis=1, keepdims=True))
  est, state, (ref, control, mse) = run((updates, weights, gains, max_power), 0.1, policy)
  assert_same(est, ref)
  assert float(state.mse) == pytest.approx(float(mse), rel=1e-6)
  assert float(state.eta) == pytest.approx(float(control.eta), rel=1e-6)
  assert control.power[2] == 0.0  # the non-member
  err = np.asarray(est, np.float64) - weighted_mean(updates, weights)
  assert float(mse) > 0.01  # a noisy round, not a trivially exact one
  assert np.mean(err ** 2) / 3.0 ** 2 == pytest.approx(float(mse), rel=0.05)


def test_unequal_update_scales():
  """The common scale c follows the largest member update: the noise in the model domain
  has std sqrt(noise_var / eta) / c, and the state's MSE bounds the error from above."""
  updates, weights, gains, max_power = make_group(1)
  est, state, (ref, control, mse) = run((updates, weights, gains, max_power), 0.1,
                                        "zero_forcing")
  assert_same(est, ref)
  assert float(state.mse) == pytest.approx(float(mse), rel=1e-6)
  rms = np.sqrt(np.mean(np.asarray(updates, np.float64) ** 2, axis=1))
  c = 1.0 / rms[weights > 0].max()
  err = np.asarray(est, np.float64) - weighted_mean(updates, weights)
  # Zero-forcing aligns every member, so the error is the noise alone: sigma^2 / eta / c^2.
  assert np.mean(err ** 2) * c ** 2 == pytest.approx(0.1 / float(control.eta), rel=0.05)
  assert float(mse) == pytest.approx(0.1 / float(control.eta), rel=1e-5)
  for policy in ("optimal", "full_power"):
    est, _, (_, _, mse) = run((updates, weights, gains, max_power), 0.1, policy)
    err = np.asarray(est, np.float64) - weighted_mean(updates, weights)
    assert np.mean(err ** 2) * c ** 2 < float(mse) * 1.05


def test_non_member_does_not_change_the_output():
  group = make_group(3)
  updates, weights, gains, max_power = group
  est, state, _ = run(group, 0.1)
  # Client 2 has weight 0: a huge update (it would set the COTAF scale c if it counted)...
  changed = updates.copy()
  changed[2] = 1e3
  est2, state2, _ = run((changed, weights, gains, max_power), 0.1)
  np.testing.assert_array_equal(est2, est)
  assert float(state2.mse) == float(state.mse)
  # ...or a deep fade (it would cap eta) changes nothing.
  faded = gains.copy()
  faded[2] = 1e-6
  est3, _, _ = run((updates, weights, faded, max_power), 0.1)
  np.testing.assert_array_equal(est3, est)
  # ...nor a non-finite update (a diverged client that was dropped).
  for bad in (np.nan, np.inf):
    broken = updates.copy()
    broken[2] = bad
    est4, state4, (ref4, _, _) = run((broken, weights, gains, max_power), 0.1)
    np.testing.assert_array_equal(est4, est)
    assert float(state4.mse) == float(state.mse) and np.all(np.isfinite(ref4))


@pytest.mark.parametrize("policy", ["optimal", "zero_forcing", "full_power"])
def test_zero_gains_stay_finite(policy):
  updates, weights, gains, max_power = make_group(4)
  some_dead = np.where(np.arange(K) < 2, 0.0, gains).astype(np.float32)
  for g in (some_dead, np.zeros(K, np.float32)):
    est, state, (ref, control, mse) = run((updates, weights, g, max_power), 0.1, policy)
    assert np.isfinite(est).all() and np.isfinite(ref).all()
    assert np.isfinite(float(state.mse)) and np.isfinite(float(state.eta))
    assert float(state.eta) > 0 and float(state.mse) == pytest.approx(float(mse), rel=1e-6)
    assert (np.asarray(control.power)[g == 0] == 0).all()
  # Nobody can transmit: nothing is received and no noise is added (estimate 0); the
  # whole target is lost, MSE = sum_k w_k^2 with the weights normalised to sum 1.
  np.testing.assert_array_equal(est, 0.0)
  w = weights / weights.sum()
  assert float(state.mse) == pytest.approx(float(np.sum(w ** 2)), rel=1e-5)


def test_all_zero_weights_give_zero_update():
  updates, _, gains, max_power = make_group(5)
  est, state, (ref, _, _) = run((updates, np.zeros(K, np.float32), gains, max_power), 0.1)
  np.testing.assert_array_equal(est, 0.0)
  np.testing.assert_array_equal(ref, 0.0)
  assert np.isfinite(float(state.mse)) and np.isfinite(float(state.eta))


def test_truncation_silences_deep_fades():
  updates, weights, gains, max_power = make_group(6)
  weak = np.argsort(gains)[:2]
  weights[weak] = 1.0  # make sure both are members
  threshold = float(np.sort(gains)[2])  # the two weakest clients are cut
  est, state, (ref, control, mse) = run((updates, weights, gains, max_power), 0.1,
                                        "zero_forcing", threshold=threshold)
  assert_same(est, ref)
  assert float(state.mse) == pytest.approx(float(mse), rel=1e-6)
  power = np.asarray(control.power)
  assert (power[weak] == 0).all() and (power[weights > 0].size - 2 == (power > 0).sum())
  # The lost shares count in the MSE: it exceeds sum over the cut clients of w_k^2.
  w = weights / weights.sum()
  assert float(mse) > np.sum(w[weak] ** 2)


def test_sharded_pytree_equals_function():
  """Under shard_map the axis is ('devices', 'clients'): the plan still covers all 8 clients
  (2 per device). The updates are a pytree: per-leaf noise (fold_in of the leaf index) is
  the same in the transform and the function."""
  updates, weights, gains, max_power = make_group(2, entries=12)
  tree = {"w": updates.reshape(K, 3, 4), "b": updates[:, :5] * 3.0}
  axis = ClientAxis(client_mesh(4))
  est, state, (ref, _, mse) = run((tree, weights, gains, max_power), 0.1, axis=axis)
  assert jax.tree.structure(est) == jax.tree.structure({"w": 0, "b": 0})
  assert est["w"].shape == (3, 4) and est["b"].shape == (5,)
  assert_same(est, ref)
  assert float(state.mse) == pytest.approx(float(mse), rel=1e-6)


def test_inject_hyperparams_matches_float_noise_var():
  """``optax.inject_hyperparams`` (noise variance and threshold as traced state) gives the
  concrete-float transform's estimate and plan."""
  updates, weights, gains, max_power = make_group(7, entries=64)

  def received(tx):
    def client(u, w, g):
      return tx.update(u, tx.init(u), weight=w, gain_sq=g, noise_key=KEY)

    return jax.jit(jax.vmap(client, axis_name="clients", out_axes=None))(updates, weights, gains)

  hyper = dict(noise_var=0.1, policy="zero_forcing", truncation_threshold=0.1)
  est, state = received(optax.inject_hyperparams(aircomp_mean)("clients", **hyper))
  ref, ref_state = received(aircomp_mean("clients", **hyper))
  np.testing.assert_allclose(est, ref, rtol=1e-6, atol=1e-7)
  assert float(state.inner_state.mse) == pytest.approx(float(ref_state.mse), rel=1e-6)
  assert float(state.hyperparams["noise_var"]) == pytest.approx(0.1)


def test_bad_arguments():
  with pytest.raises(ConfigError, match="policy"):
    aircomp_mean("clients", noise_var=0.1, policy="water_filling")
  with pytest.raises(ConfigError, match="noise_var"):
    aircomp_mean("clients", noise_var=jnp.full([2], 0.1))  # a scalar is expected
  with pytest.raises(ConfigError, match="noise_var"):
    aircomp_mean("clients", noise_var=-1.0)
  with pytest.raises(ConfigError, match="truncation_threshold"):
    aircomp_mean("clients", noise_var=0.1, truncation_threshold=-0.5)
  with pytest.raises(ConfigError, match="axis_name"):
    aircomp_mean((), noise_var=0.1)
  with pytest.raises(ConfigError, match="policy"):
    aircomp_aggregate(jnp.ones((2, 3)), jnp.ones(2), jnp.ones(2), 1.0, 0.1, KEY, "best")
  tx = aircomp_mean("clients", noise_var=0.1)
  with pytest.raises(ConfigError, match="noise_key"):
    jax.vmap(lambda u: tx.update(u, tx.init(u), weight=1.0, gain_sq=1.0)[0],
             axis_name="clients", out_axes=None)(jnp.ones(2))
