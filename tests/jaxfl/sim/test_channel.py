"""Wireless channel model: fading statistics, noise from SNR, rates and upload times."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.errors import ConfigError
from jaxfl.sim import (
  Comm,
  aircomp_upload_time,
  digital_upload_time,
  fading_gain_sq,
  noise_var_from_snr_db,
  shannon_rate,
)

DRAWS = 100_000


def test_rayleigh_power_gain_is_exponential_with_mean_path_gain():
  path_gain = 2.0
  g = np.asarray(fading_gain_sq(jax.random.PRNGKey(0), jnp.full([DRAWS], path_gain)))
  assert g.shape == (DRAWS,) and (g >= 0).all()
  # |h|^2 = L Exp(1): mean L (std of the mean L/sqrt(1e5) = 0.3%), P(|h|^2 > L) = e^-1,
  # and P(|h|^2 > 3L) = e^-3 (std of each tail estimate <= 0.0016).
  assert abs(g.mean() / path_gain - 1) < 0.02
  assert abs((g > path_gain).mean() - math.exp(-1)) < 0.01
  assert abs((g > 3 * path_gain).mean() - math.exp(-3)) < 0.005


def test_gains_follow_each_workers_path_gain():
  path_gain = jnp.repeat(jnp.array([0.2, 1.0]), DRAWS // 2)
  g = np.asarray(fading_gain_sq(jax.random.PRNGKey(1), path_gain)).reshape(2, -1)
  np.testing.assert_allclose(g.mean(1), [0.2, 1.0], rtol=0.02)


def test_rician_with_zero_k_factor_is_rayleigh():
  key, path_gain = jax.random.PRNGKey(2), jnp.full([DRAWS], 0.5)
  rayleigh = fading_gain_sq(key, path_gain)
  rician = fading_gain_sq(key, path_gain, fading="rician", rician_k=0.0)
  np.testing.assert_array_equal(rician, rayleigh)  # same draw, same formula at K = 0
  assert abs(float(rician.mean()) / 0.5 - 1) < 0.02


def test_rician_keeps_mean_and_concentrates_for_large_k_factor():
  path_gain = 1.5
  for k_factor, rel_std in [(3.0, math.sqrt(7) / 4), (100.0, math.sqrt(201) / 101)]:
    g = np.asarray(fading_gain_sq(jax.random.PRNGKey(3), jnp.full([DRAWS], path_gain),
                                  fading="rician", rician_k=k_factor))
    # E|h|^2 = L; Var|h|^2 = L^2 (2K + 1) / (K + 1)^2 (non-central chi-square).
    assert abs(g.mean() / path_gain - 1) < 0.02
    assert abs(g.std() / path_gain / rel_std - 1) < 0.03
  assert g.std() / path_gain < 0.15 and abs(np.median(g) / path_gain - 1) < 0.05


def test_bad_fading_arguments():
  key, gain = jax.random.PRNGKey(0), jnp.ones([3])
  with pytest.raises(ConfigError, match="fading"):
    fading_gain_sq(key, gain, fading="nakagami")
  with pytest.raises(ConfigError, match="rician_k"):
    fading_gain_sq(key, gain, fading="rician", rician_k=-1.0)
  with pytest.raises(ConfigError, match="rician_k"):
    fading_gain_sq(key, gain, rician_k=5.0)  # a K-factor with Rayleigh is not ignored


def test_fading_traces_under_jit():
  # Traceable with an abstract key and gains (no Python branching on values); tracing
  # only, since compiling the normal draw again would cost a second of test time.
  out = jax.eval_shape(fading_gain_sq, jax.random.PRNGKey(0), jnp.ones([4]))
  assert out.shape == (4,) and out.dtype == jnp.float32
  out = jax.eval_shape(lambda k, g: fading_gain_sq(k, g, fading="rician", rician_k=2.0),
                       jax.random.PRNGKey(0), jnp.ones([4]))
  assert out.shape == (4,)


def test_noise_var_from_snr():
  assert noise_var_from_snr_db(0.0) == 1.0
  assert noise_var_from_snr_db(10.0) == pytest.approx(0.1)
  assert noise_var_from_snr_db(20.0, power=2.0) == pytest.approx(0.02)
  assert noise_var_from_snr_db(-10.0) == pytest.approx(10.0)


def test_shannon_rate_known_values():
  # SNR 1 (0 dB) -> log2(2) = 1 bit/s/Hz; SNR 3 -> 2; SNR 15 -> 4.
  assert float(shannon_rate(1.0, 1.0, 1.0, 1.0)) == pytest.approx(1.0)
  np.testing.assert_allclose(shannon_rate(jnp.array([0.3, 1.5]), 2.0, 0.2, 1e6), [2e6, 4e6],
                             rtol=1e-6)
  assert float(shannon_rate(0.0, 1.0, 0.1, 1e6)) == 0.0


def test_upload_times_known_values():
  # 1e4 params * 8 bits at 1 Mbit/s = 0.08 s; AirComp: 1e4 channel uses at 1 MHz = 0.01 s.
  assert float(digital_upload_time(10_000, 8, 1e6)) == pytest.approx(0.08)
  assert aircomp_upload_time(10_000, 1e6) == pytest.approx(0.01)
  rate = shannon_rate(1.0, 1.0, noise_var_from_snr_db(0.0), 1e6)  # 1 Mbit/s
  assert float(digital_upload_time(10_000, 8, rate)) == pytest.approx(0.08)
  assert float(digital_upload_time(10, 8, 0.0)) == math.inf  # a channel in a null


@pytest.mark.parametrize("field,value", [
    ("bandwidth_hz", 0.0), ("bandwidth_hz", math.inf), ("bits_per_param", -8.0),
    ("noise_var", -0.1), ("noise_var", math.nan), ("max_power", 0.0), ("download_time", -1.0),
    ("max_upload_time", 0.0), ("fading", "nakagami"), ("rician_k", -1.0), ("rician_k", 2.0),
    ("bandwidth_hz", True),
])
def test_comm_names_its_bad_field(field, value):
  kw = dict(bandwidth_hz=100.0, bits_per_param=8.0, noise_var=1.0) | {field: value}
  with pytest.raises(ConfigError) as e:
    Comm(**kw)
  assert e.value.field == field


def test_comm_accepts_an_uncapped_upload_and_a_rician_k_factor():
  comm = Comm(bandwidth_hz=100.0, bits_per_param=8.0, noise_var=0.0, fading="rician",
              rician_k=3.0)
  assert comm.max_upload_time == math.inf and comm.rician_k == 3.0
