"""Device profiles and the simulated clock: known answers, statistics, files, FedAvg's clock."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.algorithms import FedAvg, server_optimizer
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import MLP, functional
from jaxfl.sim import (
  DeviceProfiles,
  client_times,
  load_profiles,
  round_time,
  sample_profiles,
  save_profiles,
  tree_bytes,
  uniform_profiles,
)

# MLP(64, (8,), 10): 64*8 + 8 + 8*10 + 10 = 610 float32 parameters = 2440 bytes.
NUM_PARAMS = 610


def tiny_model(seed=0):
  """``(apply_fn, params)`` of MLP(64, (8,), 10).

  The parameters are drawn in numpy into the model's abstract structure: NNX's eager
  initialisation compiles a dozen small XLA programs (~4 s on 2 cores) for nothing here.
  """
  apply_fn, abstract = functional(nnx.eval_shape(lambda: MLP(64, (8,), 10, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  return apply_fn, jax.tree.map(
      lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), abstract)


def synthetic_clients(counts, n_max=16, seed=0):
  rng = np.random.default_rng(seed)
  num = len(counts)
  x = rng.normal(size=(num, n_max, 64)).astype(np.float32)
  y = rng.integers(0, 10, (num, n_max)).astype(np.int32)
  for k, n in enumerate(counts):
    x[k, n:], y[k, n:] = 0, 0
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts, jnp.int32))


# ---------------------------------------------------------------- clock


def hand_profiles():
  # Client 3 is by far the slowest (1 sample/s, 1 B/s) but does not participate below.
  return DeviceProfiles(compute=jnp.array([100.0, 200.0, 50.0, 1.0]),
                        uplink=jnp.array([1000.0, 500.0, 2000.0, 1.0]),
                        downlink=jnp.array([4000.0, 1000.0, 8000.0, 1.0]),
                        availability=jnp.ones([4]))


def test_client_times_hand_computed():
  samples = jnp.array([20, 40, 10, 1000], jnp.int32)
  t = client_times(hand_profiles(), samples.astype(jnp.float32), bytes_up=1000, bytes_down=2000)
  # down + compute + up:
  #   0: 2000/4000 + 20/100   + 1000/1000 = 0.5  + 0.2 + 1.0 = 1.7
  #   1: 2000/1000 + 40/200   + 1000/500  = 2.0  + 0.2 + 2.0 = 4.2
  #   2: 2000/8000 + 10/50    + 1000/2000 = 0.25 + 0.2 + 0.5 = 0.95
  #   3: 2000/1    + 1000/1   + 1000/1    = 4000
  np.testing.assert_allclose(t, [1.7, 4.2, 0.95, 4000.0], rtol=1e-6)


@pytest.mark.parametrize("participating,expected", [
    ([True, True, True, False], 4.2),  # the slowest client (3) is not participating: ignored
    ([True, False, True, False], 1.7),
    ([False, False, True, False], 0.95),
    ([True, True, True, True], 4000.0),
    ([False, False, False, False], 0.0),  # nobody participated: the round takes no time
])
def test_round_time_is_slowest_participant(participating, expected):
  samples = jnp.array([20, 40, 10, 1000], jnp.int32)
  t = round_time(hand_profiles(), samples, jnp.array(participating), bytes_up=1000,
                 bytes_down=2000)
  assert t.shape == () and t.dtype == jnp.float32
  np.testing.assert_allclose(t, expected, rtol=1e-6)


def test_round_time_jits():
  samples = jnp.array([20, 40, 10, 1000], jnp.int32)
  f = jax.jit(round_time, static_argnames=("bytes_up", "bytes_down"))
  t = f(hand_profiles(), samples, jnp.array([True, True, True, False]), bytes_up=1000,
        bytes_down=2000)
  np.testing.assert_allclose(t, 4.2, rtol=1e-6)


def test_tree_bytes():
  _, params = tiny_model()
  assert tree_bytes(params) == 4 * NUM_PARAMS
  mixed = {"a": jnp.zeros([3], jnp.float32), "b": jnp.zeros([2, 2], jnp.int8),
           "c": jnp.zeros([5], jnp.bfloat16)}
  assert tree_bytes(mixed) == 3 * 4 + 4 * 1 + 5 * 2


# ---------------------------------------------------------------- profiles


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


def write_csv(path, header, rows):
  path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
  return path


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


GOOD_HEADER = ["compute", "uplink", "downlink", "availability"]


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


def test_fedavg_round_time_homogeneous():
  apply_fn, params = tiny_model()
  compute, uplink, downlink, steps, batch = 100.0, 1000.0, 4000.0, 2, 4
  alg = FedAvg(softmax_cross_entropy(apply_fn), optax.sgd(0.1), server_optimizer("fedavg"),
               batch_size=batch, clients_per_round=4, local_steps=steps,
               profiles=uniform_profiles(8, compute=compute, uplink=uplink, downlink=downlink))
  state = alg.init(params, jax.random.PRNGKey(1))
  nbytes = 4 * NUM_PARAMS
  # 2440/4000 + 2*4/100 + 2440/1000 = 0.61 + 0.08 + 2.44 = 3.13 s
  expected = nbytes / downlink + steps * batch / compute + nbytes / uplink
  assert expected == pytest.approx(3.13, rel=1e-12)
  data = synthetic_clients([16] * 8)
  state, metrics = alg.jit_round(state, data)
  assert int(metrics.participants) == 4
  np.testing.assert_array_equal(metrics.client.samples, [steps * batch] * 4)
  np.testing.assert_allclose(metrics.round_time, expected, rtol=1e-6)
  np.testing.assert_allclose(state.sim_time, expected, rtol=1e-6)
  state, metrics = alg.jit_round(state, data)
  np.testing.assert_allclose(metrics.round_time, expected, rtol=1e-6)
  np.testing.assert_allclose(state.sim_time, 2 * expected, rtol=1e-6)
  assert int(state.round) == 2


def test_fedavg_round_time_heterogeneous_is_max_over_participants():
  apply_fn, params = tiny_model()
  # sigma = 1 spreads speeds ~e^2 apart; low availability leaves sampled slots offline.
  profiles = sample_profiles(jax.random.PRNGKey(7), 8, sigma=1.0, availability_range=(0.2, 0.7))
  counts = [16, 3, 9, 12, 5, 16, 1, 7]  # ragged: ceil(n/4) steps, so samples differ per client
  alg = FedAvg(softmax_cross_entropy(apply_fn), optax.sgd(0.1), server_optimizer("fedavg"),
               batch_size=4, clients_per_round=4, local_steps=None, local_epochs=1.0,
               max_local_steps=4, profiles=profiles)
  state = alg.init(params, jax.random.PRNGKey(2))
  data = synthetic_clients(counts)
  nbytes = 4 * NUM_PARAMS
  c, u, d = (np.asarray(f, np.float64) for f in profiles[:3])
  total, partial_rounds, slower_offline = 0.0, 0, 0
  for _ in range(8):
    state, metrics = alg.jit_round(state, data)
    ids = np.asarray(metrics.client_ids)
    steps = np.asarray(metrics.client.steps)
    samples = np.asarray(metrics.client.samples, np.float64)
    part = steps > 0  # every participant trains >= 1 step (all counts >= 1)
    assert int(metrics.participants) == part.sum()
    np.testing.assert_array_equal(steps[part], np.ceil(np.asarray(counts)[ids[part]] / 4))
    np.testing.assert_array_equal(samples, 4 * steps)
    times = nbytes / d[ids] + samples / c[ids] + nbytes / u[ids]
    expected = times[part].max() if part.any() else 0.0
    np.testing.assert_allclose(metrics.round_time, expected, rtol=1e-5)
    total += expected
    partial_rounds += int(part.sum() < 4)
    # An offline slot would have been slower had it trained (same samples as if online).
    would_be = nbytes / d[ids] + 4 * np.ceil(np.asarray(counts)[ids] / 4) / c[ids] + nbytes / u[ids]
    slower_offline += int(np.any(would_be[~part] > expected))
  # The masking path was exercised: some rounds had offline slots, and in some of them an
  # offline client was slower than every participant (so counting it would change the answer).
  assert partial_rounds > 0 and slower_offline > 0
  np.testing.assert_allclose(state.sim_time, total, rtol=1e-5)
