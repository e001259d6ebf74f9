"""The grouped asynchronous engine: event order, staleness, mixing and degenerate cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfl.algorithms import grouped_async as ga
from jaxfl.errors import ConfigError
from jaxfl.evaluation import make_evaluate
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import MLP, functional
from jaxfl.sim import Comm, group_upload_time

N, N_MAX = 8, 24
COMPUTE = jnp.asarray([1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0])
GAIN = jnp.linspace(0.3, 1.0, N)
COMM = Comm(bandwidth_hz=1e4, bits_per_param=8.0, noise_var=0.1, download_time=0.05,
               max_upload_time=2.0)


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, N_MAX, 16)).astype(np.float32)
  w = rng.normal(size=(16, 4))
  y = np.argmax(x @ w, -1).astype(np.int32)
  counts = rng.integers(8, N_MAX + 1, N).astype(np.int32)
  x_test = rng.normal(size=(200, 16)).astype(np.float32)
  y_test = np.argmax(x_test @ w, -1).astype(np.int32)
  apply_fn, params = functional(MLP(16, (16,), 4, rngs=nnx.Rngs(0)))
  return dict(params=params,
              clients=ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts)),
              loss_fn=softmax_cross_entropy(apply_fn),
              evaluate=make_evaluate(apply_fn, x_test, y_test))


def members(groups, s=None):
  s = s or max(len(g) for g in groups)
  out = -np.ones([len(groups), s], np.int32)
  for i, g in enumerate(groups):
    out[i, :len(g)] = g
  return jnp.asarray(out)


_COMPILED = {}


def simulate(setup, groups, method, *, t_max=20.0, key=0, policies=(), beta0=None, comm=COMM):
  """One run; compiled once per (groups, method, comm, t_max, policies) for the module."""
  spec = (tuple(map(tuple, groups)), method, comm, t_max, policies, beta0 is None)
  if spec not in _COMPILED:
    mem = members(groups)
    rounds, events = ga.bounds(np.asarray(COMPUTE), [[np.asarray(g) for g in groups]],
                               t_max=t_max, jitter_low=0.9)
    _COMPILED[spec] = events, jax.jit(lambda k, b: ga.GroupedAsync(
        loss_fn=setup["loss_fn"], learning_rate=0.1, batch_size=4, local_steps=3,
        method=method, comm=comm, members=mem, compute_time=COMPUTE, path_gain=GAIN,
        t_max=t_max, jitter=(0.9, 1.1), rounds=rounds, events=events, policies=policies,
        beta0=b).simulate(setup["params"], k, setup["clients"], setup["evaluate"]))
  events, fn = _COMPILED[spec]
  return jax.device_get(fn(jax.random.PRNGKey(key), beta0)), events


SPEED_GROUPS = [[0, 1, 2, 3], [4, 5, 6, 7]]
AIR_FEDGA = ga.Method("aircomp", synchronous=False, beta0=0.6)


@pytest.mark.slow
def test_events_are_in_time_order_and_every_arrival_by_t_max_is_kept(setup):
  trace, events = simulate(setup, SPEED_GROUPS, AIR_FEDGA)
  valid = trace.valid
  assert np.all(np.diff(trace.time) >= 0)
  assert valid.sum() < events  # the static bound never cuts off a valid arrival
  assert np.all(trace.time[valid] <= 20.0) and np.all(trace.time[~valid] > 20.0)
  fast = trace.time[valid & (trace.group == 0)]
  slow = trace.time[valid & (trace.group == 1)]
  # Group 0's round: compute 1 s x [0.9, 1.1], upload 1 s per 10^4 params, download 0.05 s.
  num_params = sum(x.size for x in jax.tree.leaves(setup["params"]))
  up = num_params / 1e4
  assert np.all(np.diff(fast) >= 0.9 + up + 0.05 - 1e-5)
  assert np.all(np.diff(fast) <= 1.1 + up + 0.05 + 1e-5)
  assert np.all(np.diff(slow) >= 2.7 + up + 0.05 - 1e-5)
  assert len(fast) > 2 * len(slow)


@pytest.mark.slow
def test_staleness_counts_the_updates_since_the_group_got_its_model(setup):
  trace, _ = simulate(setup, SPEED_GROUPS, AIR_FEDGA)
  last = {}  # group -> global version when it received its model
  version = 0
  for g, tau, ok in zip(trace.group, trace.staleness, trace.valid):
    if not ok:
      continue
    assert tau == version - last.get(int(g), 0)
    version += 1
    last[int(g)] = version
  assert trace.staleness[trace.valid & (trace.group == 1)].max() >= 2  # the slow group lags


@pytest.mark.slow
def test_one_group_async_with_full_mixing_is_the_synchronous_method(setup):
  one = [list(range(N))]
  sync, _ = simulate(setup, one, ga.Method("aircomp", synchronous=True))
  # M = 1, tau = 0 and beta0 = 1 give beta = 1: the same run.
  asyn, _ = simulate(setup, one, ga.Method("aircomp", synchronous=False, beta0=1.0))
  np.testing.assert_array_equal(sync.accuracy, asyn.accuracy)
  np.testing.assert_array_equal(sync.loss, asyn.loss)
  assert np.all(sync.staleness[sync.valid] == 0)


@pytest.mark.slow
def test_a_synchronous_methods_beta0_is_its_server_step_size(setup):
  one = [list(range(N))]
  sync = ga.Method("aircomp", synchronous=True)
  full, _ = simulate(setup, one, sync, beta0=1.0)
  default, _ = simulate(setup, one, sync)
  np.testing.assert_array_equal(full.accuracy, default.accuracy)  # beta0 = 1: FedAvg
  # A half step is asynchronous mixing at beta0 = 0.5 with one fresh group (beta = 0.5).
  half, _ = simulate(setup, one, sync, beta0=0.5)
  mixed, _ = simulate(setup, one, ga.Method("aircomp", synchronous=False), beta0=0.5)
  np.testing.assert_array_equal(half.accuracy, mixed.accuracy)
  assert not np.array_equal(half.accuracy, full.accuracy)


@pytest.mark.slow
def test_noiseless_aircomp_with_channel_inversion_is_exact_aggregation(setup):
  one = [list(range(N))]
  quiet = Comm(bandwidth_hz=1e4, bits_per_param=8.0, noise_var=1e-12, download_time=0.05)
  air, _ = simulate(setup, one, ga.Method("aircomp", True, policy="zero_forcing"), comm=quiet,
                    t_max=15.0)
  exact, _ = simulate(setup, one, ga.Method("ideal", True), comm=quiet, t_max=60.0)
  n = int(air.valid.sum())
  assert n >= 3 and exact.valid.sum() >= n  # TDMA rounds are longer; compare the first n
  np.testing.assert_allclose(air.loss[:n], exact.loss[:n], rtol=1e-4)
  assert np.all(air.mse[:n] < 1e-9)


@pytest.mark.slow
def test_aircomp_noise_costs_accuracy_and_mse_grows_as_snr_falls(setup):
  one = [list(range(N))]
  noisy = Comm(bandwidth_hz=1e4, bits_per_param=8.0, noise_var=10.0, download_time=0.05)
  clean, _ = simulate(setup, one, ga.Method("aircomp", True), t_max=30.0)
  dirty, _ = simulate(setup, one, ga.Method("aircomp", True), t_max=30.0, comm=noisy)
  n = int(clean.valid.sum())
  # Sending nothing costs sum_k w_k^2: the MSE's ceiling. At 10 dB the optimal policy is
  # far below it; at -20 dB (sigma^2 = 10 against |h|^2 <= ~1) it nearly reaches it.
  w = np.asarray(setup["clients"].count, float)
  ceiling = np.sum((w / w.sum()) ** 2)
  assert clean.mse[:n].mean() < 0.25 * ceiling
  assert 0.6 * ceiling < dirty.mse[:n].mean() <= ceiling
  assert dirty.loss[n - 1] > clean.loss[n - 1]


@pytest.mark.slow
def test_policies_report_their_mse_on_the_same_channels(setup):
  trace, _ = simulate(setup, SPEED_GROUPS, AIR_FEDGA,
                      policies=("optimal", "zero_forcing", "full_power"))
  v = trace.valid
  opt, zf, full = (trace.mse_by_policy[p][v] for p in ("optimal", "zero_forcing", "full_power"))
  np.testing.assert_allclose(trace.mse[v], opt, rtol=1e-6)  # the method's own policy
  assert np.all(opt <= zf * (1 + 1e-5)) and np.all(opt <= full * (1 + 1e-5))


def test_digital_upload_time_is_bits_over_the_shannon_rate():
  gains = jnp.asarray([1.0, 0.1, 0.0])
  mask = jnp.asarray([True, True, False])
  comm = Comm(bandwidth_hz=100.0, bits_per_param=8.0, noise_var=1.0, max_upload_time=50.0)
  # 10 params x 8 bits over 100 log2(1 + |h|^2 / 1) bits/s: 0.8 s at |h|^2 = 1.
  each = [0.8, 80 / (100 * np.log2(1.1))]
  assert float(group_upload_time(gains, mask, 10, "digital", comm)) == \
      pytest.approx(max(each), rel=1e-5)
  assert float(group_upload_time(gains, mask, 10, "tdma", comm)) == \
      pytest.approx(sum(each), rel=1e-5)
  assert float(group_upload_time(gains, mask, 10, "aircomp", comm)) == \
      pytest.approx(0.1)
  capped = Comm(bandwidth_hz=100.0, bits_per_param=8.0, noise_var=1.0, max_upload_time=2.0)
  assert float(group_upload_time(jnp.asarray([1e-9]), jnp.asarray([True]), 10, "digital",
                                 capped)) == 2.0  # a deep fade


def test_time_to_target_and_accuracy_at():
  trace = ga.Trace(time=jnp.asarray([1.0, 2.0, 3.0, 9.0]), valid=jnp.asarray([1, 1, 1, 0], bool),
                   group=jnp.zeros(4, jnp.int32), staleness=jnp.zeros(4, jnp.int32),
                   accuracy=jnp.asarray([0.2, 0.6, 0.5, 0.99]), loss=jnp.zeros(4),
                   mse=jnp.zeros(4), mse_by_policy={}, initial_accuracy=jnp.float32(0.1))
  assert float(ga.time_to_target(trace, 0.55)) == 2.0
  assert float(ga.time_to_target(trace, 0.9)) == np.inf  # only an invalid event reaches it
  assert float(ga.time_to_target(trace, 0.05)) == 0.0  # the initial model already does
  np.testing.assert_allclose(ga.accuracy_at(trace, jnp.asarray([0.5, 1.0, 2.5, 10.0])),
                             [0.1, 0.2, 0.6, 0.5])


def test_same_key_same_trace_other_key_differs(setup):
  a, _ = simulate(setup, SPEED_GROUPS, AIR_FEDGA, key=3)
  b, _ = simulate(setup, SPEED_GROUPS, AIR_FEDGA, key=3)
  c, _ = simulate(setup, SPEED_GROUPS, AIR_FEDGA, key=4)
  np.testing.assert_array_equal(a.accuracy, b.accuracy)
  np.testing.assert_array_equal(a.time, b.time)
  assert not np.array_equal(a.time, c.time)


def test_bad_method_fields_name_them():
  with pytest.raises(ConfigError, match="uplink"):
    ga.Method("pigeon", False)
  with pytest.raises(ConfigError, match="beta0"):
    ga.Method("aircomp", False, beta0=1.5)
