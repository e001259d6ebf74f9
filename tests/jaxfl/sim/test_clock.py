"""The simulated clock of synchronous rounds: known answers and FedAvg's clock."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.algorithms import FedAvg, server_optimizer
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import MLP, functional
from jaxfl.sim import (
  DeviceProfiles,
  client_times,
  round_time,
  sample_profiles,
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
