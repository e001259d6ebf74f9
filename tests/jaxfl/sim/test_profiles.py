"""Device profiles: known answers, statistics, files."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.errors import ConfigError
from jaxfl.sim import (
  DeviceProfiles,
  load_profiles,
  sample_profiles,
  save_profiles,
  uniform_profiles,
)


# MLP(64, (8,), 10): 64*8 + 8 + 8*10 + 10 = 610 float32 parameters = 2440 bytes.
def write_csv(path, header, rows):
  path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
  return path


GOOD_HEADER = ["compute", "uplink", "downlink", "availability"]


def test_uniform_profiles():
  p = uniform_profiles(5, compute=3.0, uplink=7.0, downlink=11.0, availability=0.25)
  assert p.num_clients == 5
  for field, value in zip(p, (3.0, 7.0, 11.0, 0.25)):
    assert field.shape == (5,) and field.dtype == jnp.float32
    np.testing.assert_array_equal(field, np.full([5], value, np.float32))
  d = uniform_profiles(2)  # the documented defaults
  np.testing.assert_array_equal(np.stack(d), [[1000.0] * 2, [1e6] * 2, [1e7] * 2, [1.0] * 2])


def test_sample_profiles_shapes_and_dtypes(key):
  p = sample_profiles(key, 8, availability_range=(0.5, 0.9))
  assert isinstance(p, DeviceProfiles) and p.num_clients == 8
  for field in p:
    assert field.shape == (8,) and field.dtype == jnp.float32
    assert np.all(np.isfinite(field)) and np.all(np.asarray(field) > 0)


def test_sample_profiles_sigma_zero_gives_medians(key):
  p = sample_profiles(key, 8, compute_median=123.5, uplink_median=0.1, downlink_median=3e7,
                      sigma=0.0)
  np.testing.assert_array_equal(p.compute, np.full([8], 123.5, np.float32))
  np.testing.assert_array_equal(p.uplink, np.full([8], 0.1, np.float32))
  np.testing.assert_array_equal(p.downlink, np.full([8], 3e7, np.float32))
  np.testing.assert_array_equal(p.availability, np.ones([8], np.float32))  # default range (1, 1)


def test_sample_profiles_lognormal_statistics(key):
  n, sigma = 20000, 0.5
  medians = dict(compute=250.0, uplink=2e5, downlink=5e6)
  p = sample_profiles(key, n, compute_median=medians["compute"], uplink_median=medians["uplink"],
                      downlink_median=medians["downlink"], sigma=sigma,
                      availability_range=(0.2, 0.9))
  # log s ~ N(log m, sigma^2). Standard errors at n = 20000, sigma = 0.5:
  #   sample median of log s:  sqrt(pi/2) sigma / sqrt(n) = 0.00443  -> 5 SE = 0.0222
  #   sample std of log s:     sigma / sqrt(2 n)           = 0.00250  -> 5 SE = 0.0125
  se_median = math.sqrt(math.pi / 2) * sigma / math.sqrt(n)
  se_std = sigma / math.sqrt(2 * n)
  for name, m in medians.items():
    logs = np.log(np.asarray(getattr(p, name), np.float64))
    assert abs(np.median(logs) - math.log(m)) < 5 * se_median, name
    assert abs(np.std(logs) - sigma) < 5 * se_std, name
  # The three quantities are drawn independently: correlation of logs ~ N(0, 1/n), 5 SE = 0.035.
  logc, logu = np.log(np.asarray(p.compute)), np.log(np.asarray(p.uplink))
  assert abs(np.corrcoef(logc, logu)[0, 1]) < 5 / math.sqrt(n)
  # Availability ~ U(0.2, 0.9): inside the range; mean 0.55 with SE 0.7/sqrt(12 n) = 0.00143.
  a = np.asarray(p.availability)
  assert a.min() >= 0.2 and a.max() <= 0.9
  assert abs(a.mean() - 0.55) < 5 * 0.7 / math.sqrt(12 * n)


def test_sample_profiles_keys():
  a = sample_profiles(jax.random.PRNGKey(3), 8, availability_range=(0.1, 1.0))
  b = sample_profiles(jax.random.PRNGKey(3), 8, availability_range=(0.1, 1.0))
  c = sample_profiles(jax.random.PRNGKey(4), 8, availability_range=(0.1, 1.0))
  for fa, fb, fc in zip(a, b, c):
    np.testing.assert_array_equal(fa, fb)
    assert not np.any(np.asarray(fa) == np.asarray(fc))  # continuous draws: no coincidences


@pytest.mark.parametrize("kwargs,field", [
    (dict(availability_range=(0.0, 1.0)), "availability_range"),
    (dict(availability_range=(0.8, 0.5)), "availability_range"),
    (dict(availability_range=(0.5, 1.5)), "availability_range"),
    (dict(availability_range=(-0.1, 0.5)), "availability_range"),
    (dict(sigma=-0.1), "sigma"),
    (dict(sigma=float("nan")), "sigma"),
    (dict(compute_median=0.0), "compute_median"),
    (dict(uplink_median=-1e6), "uplink_median"),
])
def test_sample_profiles_rejects_bad_config(key, kwargs, field):
  with pytest.raises(ConfigError, match=field) as e:
    sample_profiles(key, 4, **kwargs)
  assert e.value.field == field


# ---------------------------------------------------------------- profile files


def test_save_load_round_trip_is_exact(tmp_path):
  p = sample_profiles(jax.random.PRNGKey(5), 8, sigma=1.3, availability_range=(0.05, 1.0))
  save_profiles(tmp_path / "p.csv", p)
  q = load_profiles(tmp_path / "p.csv")
  assert q.num_clients == 8
  for a, b in zip(p, q):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)  # float32 -> repr(float64) -> float32 is exact
  sub = load_profiles(tmp_path / "p.csv", num_clients=4)  # client k gets row k
  for a, b in zip(p, sub):
    np.testing.assert_array_equal(np.asarray(a)[:4], b)
  np.testing.assert_array_equal(load_profiles(tmp_path / "p.csv", num_clients=8).compute, p.compute)


def test_load_profiles_reads_a_hand_written_table(tmp_path):
  path = write_csv(tmp_path / "p.csv", ["availability", "downlink", "compute", "uplink"],
                   [[0.5, 8e6, 40, 2e5], [1, 1e7, 1000.5, 1e6]])  # column order is free
  p = load_profiles(path)
  np.testing.assert_array_equal(p.compute, np.array([40, 1000.5], np.float32))
  np.testing.assert_array_equal(p.uplink, np.array([2e5, 1e6], np.float32))
  np.testing.assert_array_equal(p.downlink, np.array([8e6, 1e7], np.float32))
  np.testing.assert_array_equal(p.availability, np.array([0.5, 1.0], np.float32))


@pytest.mark.parametrize("header,rows,num_clients,field", [
    (GOOD_HEADER[:3], [[1, 1, 1]], None, "profiles_file"),  # missing column
    (GOOD_HEADER, [], None, "profiles_file"),  # header only
    (GOOD_HEADER, [[1, 1, 1, 1]] * 3, 4, "profiles_file"),  # too few rows
    (GOOD_HEADER, [[1, 1, 1, 1], [1, "fast", 1, 1]], None, "profiles_file"),
    (GOOD_HEADER, [[1, 1, 1, 1], [0, 1, 1, 1]], None, "profiles_file.compute"),
    (GOOD_HEADER, [[-5, 1, 1, 1]], None, "profiles_file.compute"),
    (GOOD_HEADER, [[1, -1, 1, 1]], None, "profiles_file.uplink"),
    (GOOD_HEADER, [[1, 1, 0, 1]], None, "profiles_file.downlink"),
    (GOOD_HEADER, [[1, 1, 1, 0]], None, "profiles_file.availability"),
    (GOOD_HEADER, [[1, 1, 1, 0.5], [1, 1, 1, 1.5]], None, "profiles_file.availability"),
    (GOOD_HEADER, [[1, 1, 1, "nan"]], None, "profiles_file.availability"),
])
def test_load_profiles_errors(tmp_path, header, rows, num_clients, field):
  path = write_csv(tmp_path / "p.csv", header, rows)
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as e:
    load_profiles(path, num_clients=num_clients)
  assert e.value.field == field


def test_load_profiles_missing_file(tmp_path):
  with pytest.raises(ConfigError, match="profiles_file") as e:
    load_profiles(tmp_path / "nope.csv")
  assert e.value.field == "profiles_file"


def test_load_profiles_error_reports_offending_value(tmp_path):
  path = write_csv(tmp_path / "p.csv", GOOD_HEADER, [[1, 1, 1, 0.5], [1, 1, 1, 1.5]])
  with pytest.raises(ConfigError) as e:
    load_profiles(path)
  assert e.value.got == 1.5


# ---------------------------------------------------------------- FedAvg's simulated clock
