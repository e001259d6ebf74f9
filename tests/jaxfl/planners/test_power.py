"""AirComp power control: known answers, optimality against baselines and brute force."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfl.errors import ConfigError
from jaxfl.planners import (
  POLICIES,
  aggregation_mse,
  optimal_power,
  power_control,
  truncated_inversion,
)

# Jitted once per policy; tests keep to a few group sizes (3, 6, 12) and always pass
# [K] float32 arrays, so each compiles a handful of times (eager dispatch compiles every
# primitive separately and is several times slower here).
JITTED = {name: jax.jit(fn) for name, fn in POLICIES.items()}
JITTED["truncated"] = jax.jit(truncated_inversion)
MSE = jax.jit(aggregation_mse)


def plan(name, gain, weights, noise_var, max_power=1.0, **kwargs):
  gain = np.asarray(gain, np.float32)
  max_power = np.broadcast_to(np.asarray(max_power, np.float32), gain.shape)
  return JITTED[name](gain, max_power, np.asarray(weights, np.float32), noise_var, **kwargs)


def mse64(gain, power, eta, weights, noise_var):
  """aggregation_mse in float64 numpy: the reference every policy is judged by."""
  gain, power, weights = (np.asarray(x, np.float64) for x in (gain, power, weights))
  eta = float(eta)
  return float(np.sum((np.sqrt(gain * power / eta) - weights) ** 2) + noise_var / eta)


def plan_mse(name, gain, max_power, weights, noise_var):
  pc = plan(name, gain, weights, noise_var, max_power)
  return pc, mse64(gain, pc.power, pc.eta, weights, noise_var)


def rayleigh_group(seed, k):
  """Sec. 1.6 of the notes: L ~ U(0.2, 1), |h|^2 = L Exp(1), P = 1, random weights."""
  rng = np.random.default_rng(seed)
  gain = rng.uniform(0.2, 1.0, k) * rng.exponential(1.0, k)
  weights = rng.uniform(0.2, 1.0, k)
  return gain.astype(np.float32), (weights / weights.sum()).astype(np.float32)


def test_known_answer_three_workers():
  # Q = |h|^2 = (0.05, 0.5, 4), P = 1, w = 1/3 each, so Q/w^2 = (0.45, 4.5, 36); sigma^2 = 0.1.
  # Prefix {1}: u = (1/3) sqrt(.05) / (.1 + .05), eta = 1/u^2 = 4.05, self-consistent
  # (0.45 < 4.05 <= 4.5). Workers 2, 3 invert: p = (1/9) 4.05 / Q = (0.9, 0.1125).
  # Worker 1 falls short by 1/3 - sqrt(.05/4.05) = 2/9: MSE = (2/9)^2 + .1/4.05 = 6/81.
  # (Prefix {1, 2} gives eta = 4.389 < 4.5: worker 2 could invert there, inconsistent.)
  gain = np.array([0.05, 0.5, 4.0], np.float32)
  w = np.full([3], 1 / 3, np.float32)
  pc, mse = plan_mse("optimal", gain, 1.0, w, 0.1)
  assert float(pc.eta) == pytest.approx(4.05, rel=1e-5)
  np.testing.assert_allclose(pc.power, [1.0, 0.9, 0.1125], rtol=1e-5)
  assert mse == pytest.approx(6 / 81, rel=1e-5)
  # Zero-forcing is held to eta = 0.45 by worker 1: MSE = 0.1 / 0.45 = 0.222, 3x worse.
  _, zf_mse = plan_mse("zero_forcing", gain, 1.0, w, 0.1)
  assert zf_mse == pytest.approx(0.1 / 0.45, rel=1e-5)


def test_structure_is_a_threshold_policy():
  """Members with Q/w^2 < eta send at full power; the rest align their amplitude to w exactly."""
  for seed in range(5):
    gain, w = rayleigh_group(seed, 6)
    pc = plan("optimal", gain, w, 0.1)
    ratio, eta = gain / w ** 2, float(pc.eta)
    weak = ratio < eta
    assert weak.any()  # the weakest member always sends at full power
    np.testing.assert_allclose(np.asarray(pc.power)[weak], 1.0)
    amplitude = np.sqrt(gain * np.asarray(pc.power) / eta)
    np.testing.assert_allclose(amplitude[~weak], w[~weak], rtol=1e-5)
    assert (amplitude[weak] < w[weak] * (1 + 1e-6)).all()


@pytest.mark.parametrize("noise_var", [0.0, 1e-12])
@pytest.mark.parametrize("policy", ["optimal", "zero_forcing"])
def test_infinite_snr_aligns_every_member_exactly(policy, noise_var):
  gain, w = rayleigh_group(7, 6)
  pc = plan(policy, gain, w, noise_var)
  amplitude = np.sqrt(gain * np.asarray(pc.power) / float(pc.eta))
  np.testing.assert_allclose(amplitude, w, atol=1e-5)  # estimate = sum_k w_k s_k exactly
  assert float(MSE(gain, pc.power, pc.eta, w, noise_var)) < 1e-10


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_empirical_mse_matches_formula(policy):
  """20,000 draws of unit-variance signals and receiver noise (std of the estimate ~1%)."""
  gain, w = rayleigh_group(11, 6)
  noise_var = 0.1
  pc = plan(policy, gain, w, noise_var)
  amplitude = np.sqrt(gain * np.asarray(pc.power, np.float64) / float(pc.eta))
  rng = np.random.default_rng(0)
  s = rng.standard_normal((20_000, 6))
  n = rng.standard_normal(20_000) * math.sqrt(noise_var)
  estimate = s @ amplitude + n / math.sqrt(float(pc.eta))  # y / sqrt(eta)
  empirical = np.mean((estimate - s @ w.astype(np.float64)) ** 2)
  analytic = float(MSE(gain, pc.power, pc.eta, w, noise_var))
  assert empirical == pytest.approx(analytic, rel=0.05)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_optimal_matches_brute_force_over_eta(snr_db):
  """For a fixed eta the best power is p_k = min(P_k, w_k^2 eta / |h_k|^2); scan 1e4 etas."""
  noise_var = 10 ** (-snr_db / 10)
  for seed in range(10):
    gain, w = rayleigh_group(100 + seed, 6)
    g, w64 = gain.astype(np.float64), w.astype(np.float64)
    fp, fp_mse = plan_mse("full_power", gain, 1.0, w, noise_var)
    _, opt_mse = plan_mse("optimal", gain, 1.0, w, noise_var)
    fp_eta = float(fp.eta)
    ratio = g / w64 ** 2
    etas = np.logspace(np.log10(ratio.min() / 1e3), np.log10(max(ratio.max(), fp_eta) * 1e3),
                       10_000)[:, None]
    power = np.minimum(1.0, w64 ** 2 * etas / g)
    brute = np.sum((np.sqrt(g * power / etas) - w64) ** 2, axis=1) + noise_var / etas[:, 0]
    assert opt_mse <= brute.min() * (1 + 1e-6)  # never beaten by the scan
    assert opt_mse == pytest.approx(brute.min(), rel=1e-3)
    assert fp_mse >= opt_mse * (1 - 1e-6)


def test_full_power_eta_is_the_best_scalar():
  gain, w = rayleigh_group(3, 6)
  pc, mse = plan_mse("full_power", gain, 1.0, w, 0.1)
  np.testing.assert_allclose(pc.power, 1.0)
  etas = float(pc.eta) * np.logspace(-2, 2, 2001)
  scan = [mse64(gain, np.ones(6), eta, w, 0.1) for eta in etas]
  assert mse <= min(scan) * (1 + 1e-6)


K_MAX = 12


@st.composite
def groups(draw):
  """K in 1..12 members among 12 slots (non-members at random slots), one random channel.

  Hypothesis picks the structure (group size, gain law, channels in a null, ties of
  Q/w^2 between members, SNR) and a seed; numpy draws the values from the seed (drawing
  36 floats through hypothesis per example costs more than the policies themselves).
  """
  k = draw(st.integers(1, K_MAX))
  law = draw(st.sampled_from(["lognormal", "exponential"]))
  dead = draw(st.integers(0, 2))  # members whose channel is in a null
  ties = draw(st.booleans())  # every member with the same Q/w^2
  snr_db = draw(st.floats(-10.0, 30.0))
  rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
  if law == "lognormal":  # three decades of spread
    gain = rng.lognormal(-0.5, 1.5, K_MAX)
  else:  # Rayleigh: L Exp(1) with L ~ U(0.2, 1)
    gain = rng.uniform(0.2, 1.0, K_MAX) * rng.exponential(1.0, K_MAX)
  max_power = rng.uniform(0.1, 2.0, K_MAX)
  slots = rng.permutation(K_MAX)[:k]
  weights = np.zeros(K_MAX)
  weights[slots] = rng.uniform(0.01, 1.0, k)
  if ties:
    gain[slots] = rng.uniform(0.1, 10.0) * weights[slots] ** 2 / max_power[slots]
  gain[slots[:dead]] = 0.0
  return (gain.astype(np.float32), max_power.astype(np.float32), weights.astype(np.float32),
          10 ** (-snr_db / 10))


@settings(max_examples=200, deadline=None)
@given(groups())
def test_optimal_never_worse_than_baselines_and_feasible(group):
  gain, max_power, w, noise_var = group
  mses = {}
  for name in POLICIES:
    pc, mses[name] = plan_mse(name, gain, max_power, w, noise_var)
    power, eta = np.asarray(pc.power), float(pc.eta)
    assert np.isfinite(power).all() and np.isfinite(eta) and eta > 0
    assert (power >= 0).all() and (power <= max_power * (1 + 1e-5)).all()
    assert (power[w == 0] == 0).all()  # non-members are silent
    jax_mse = float(MSE(gain, pc.power, pc.eta, w, noise_var))
    assert jax_mse == pytest.approx(mses[name], rel=1e-4)
  assert mses["optimal"] <= mses["zero_forcing"] * (1 + 1e-6)
  assert mses["optimal"] <= mses["full_power"] * (1 + 1e-6)


def test_non_members_do_not_change_the_plan():
  gain, w = rayleigh_group(5, 3)
  padded_gain = np.concatenate([gain, [3.0, 1e-3, 0.0]]).astype(np.float32)
  padded_w = np.concatenate([w, [0.0, 0.0, 0.0]]).astype(np.float32)
  for name in POLICIES:
    a, b = plan(name, gain, w, 0.1), plan(name, padded_gain, padded_w, 0.1)
    np.testing.assert_allclose(b.power[:3], a.power, rtol=1e-6)
    np.testing.assert_array_equal(b.power[3:], 0.0)
    assert float(b.eta) == pytest.approx(float(a.eta), rel=1e-6)


def test_weight_scale_rescales_eta_and_mse():
  """Doubling w doubles u = 1/sqrt(eta): the same powers, eta / 4, MSE x 4."""
  gain, w = rayleigh_group(9, 6)
  for name in POLICIES:
    a, b = plan(name, gain, w, 0.1), plan(name, gain, 2 * w, 0.1)
    np.testing.assert_allclose(b.power, a.power, rtol=1e-5)
    assert float(b.eta) == pytest.approx(float(a.eta) / 4, rel=1e-5)
    assert mse64(gain, b.power, b.eta, 2 * w, 0.1) == pytest.approx(
        4 * mse64(gain, a.power, a.eta, w, 0.1), rel=1e-5)


def test_zero_forcing_is_limited_by_the_weakest_member():
  gain = np.array([0.04, 1.0, 2.5], np.float32)
  w = np.array([0.2, 0.3, 0.5], np.float32)
  pc = plan("zero_forcing", gain, w, 0.1, max_power=2.0)
  eta = min(2.0 * gain / w ** 2)  # = 2 * 0.04 / 0.04 = 2
  assert float(pc.eta) == pytest.approx(eta, rel=1e-6)
  np.testing.assert_allclose(pc.power, w ** 2 * eta / gain, rtol=1e-6)
  assert mse64(gain, pc.power, pc.eta, w, 0.1) == pytest.approx(0.1 / eta, rel=1e-5)


def test_truncated_inversion_drops_deep_fades():
  gain = np.array([0.01, 1.0, 2.5], np.float32)
  w = np.array([0.2, 0.3, 0.5], np.float32)
  pc = plan("truncated", gain, w, 0.1, threshold=0.1)
  eta = min(1.0 / 0.3 ** 2, 2.5 / 0.5 ** 2)  # scheduled members only: 10
  assert float(pc.eta) == pytest.approx(eta, rel=1e-6)
  np.testing.assert_allclose(pc.power, [0.0, 0.09 * eta / 1.0, 0.25 * eta / 2.5], rtol=1e-6)
  # The silent member's share is lost: 0.2^2 + sigma^2 / eta.
  assert mse64(gain, pc.power, pc.eta, w, 0.1) == pytest.approx(0.04 + 0.01, rel=1e-5)
  same = jax.jit(lambda g, w: power_control("zero_forcing", g, 1.0, w, 0.1,
                                            truncation_threshold=0.1))(gain, w)
  np.testing.assert_array_equal(same.power, pc.power)
  assert float(same.eta) == float(pc.eta)


@pytest.mark.parametrize("gain", [[0.0, 0.5, 2.0], [0.0, 0.0, 0.0]])
@pytest.mark.parametrize("noise_var", [0.0, 0.1])
def test_zero_gains_stay_finite(gain, noise_var):
  gain = np.array(gain, np.float32)
  w = np.array([0.5, 0.25, 0.25], np.float32)
  plans = {name: plan(name, gain, w, noise_var) for name in POLICIES}
  plans["truncated"] = plan("truncated", gain, w, noise_var, threshold=0.0)
  for pc in plans.values():
    assert np.isfinite(pc.power).all() and (np.asarray(pc.power)[gain == 0] == 0).all()
    assert np.isfinite(float(pc.eta)) and float(pc.eta) > 0
    mse = float(MSE(gain, pc.power, pc.eta, w, noise_var))
    assert np.isfinite(mse) and mse >= 0.5 ** 2 - 1e-6  # the dead member's share is lost
  if gain.any():  # the live members still align exactly under zero-forcing
    pc = plans["zero_forcing"]
    amplitude = np.sqrt(gain * np.asarray(pc.power) / float(pc.eta))
    np.testing.assert_allclose(amplitude[1:], w[1:], rtol=1e-6)


def test_no_members_is_silent_and_finite():
  for name in POLICIES:
    pc = plan(name, np.ones(3), np.zeros(3), 0.1)
    np.testing.assert_array_equal(pc.power, 0.0)
    assert np.isfinite(float(pc.eta)) and float(pc.eta) > 0


def test_vmaps_over_groups():
  gains = np.random.default_rng(0).exponential(1.0, (4, 6)).astype(np.float32)
  w = np.full([6], 1 / 6, np.float32)
  batched = jax.jit(jax.vmap(optimal_power, in_axes=(0, None, None, None)))(gains, 1.0, w, 0.1)
  for i in range(4):
    one = plan("optimal", gains[i], w, 0.1)
    np.testing.assert_allclose(batched.power[i], one.power, rtol=1e-5)
    assert float(batched.eta[i]) == pytest.approx(float(one.eta), rel=1e-5)


def test_bad_arguments():
  with pytest.raises(ConfigError, match="policy"):
    power_control("water_filling", jnp.ones(2), 1.0, jnp.ones(2), 0.1)
  with pytest.raises(ConfigError, match="weights"):
    optimal_power(jnp.ones(3), 1.0, jnp.ones(2), 0.1)
  with pytest.raises(ConfigError, match="gain_sq"):
    optimal_power(jnp.ones((2, 3)), 1.0, jnp.ones((2, 3)), 0.1)
