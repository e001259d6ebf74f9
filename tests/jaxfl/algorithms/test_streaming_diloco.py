"""Streaming DiLoCo and CoCoDC engines: schedules, fragment-local updates, the clock."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms.streaming_diloco import StreamingDiLoCo
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData
from jaxfl.loop import scan_rounds
from jaxfl.sim import WAN

PARAMS = {"a": jnp.zeros(3), "b": jnp.zeros(()), "c": jnp.zeros(2)}
LABELS = {"a": 0, "b": 1, "c": 2}
NESTEROV = optax.sgd(0.7, momentum=0.9, nesterov=True)


def loss(w, x, y):
  return jnp.mean((x @ w["a"] + w["b"] + jnp.sum(w["c"]) - y) ** 2)


def data(m=2, n=8):
  x = jax.random.normal(jax.random.key(0), (m, n, 3))
  y = x @ jnp.array([1.0, -1.0, 2.0]) + jnp.arange(m)[:, None]  # each worker its own offset
  return ClientData(x, y, jnp.full([m], n, jnp.int32))


_RUNS = {}


def run(alg, state, d, n):
  """``n`` rounds as one jitted scan (compiled once per engine and length)."""
  key = (id(alg), n)
  if key not in _RUNS:
    _RUNS[key] = (alg, jax.jit(lambda s, x: scan_rounds(alg, s, x, num_rounds=n)[:2]))
  return _RUNS[key][1](state, d)


def engine(**kw):
  base = dict(num_workers=2, inner_steps=6, batch_size=4, labels=LABELS, num_fragments=3,
              overlap=2)
  return StreamingDiLoCo(loss, optax.adamw(1e-2), NESTEROV, **(base | kw))


def test_streaming_schedule_staggers_the_fragments():
  alg = engine()
  state, metrics = run(alg, alg.init(PARAMS, jax.random.key(0)), data(), 12)
  assert metrics.worker_loss.shape == (12, 2) and metrics.loss.shape == (12,)
  np.testing.assert_allclose(metrics.loss, metrics.worker_loss.mean(1), rtol=1e-6)
  # Phases 0, 2, 4 of H = 6: the last sends are at 6, 8, 10; 10 + overlap 2 is still ahead.
  assert state.sent_at.tolist() == [6, 8, 10]
  assert state.receive_at.tolist() == [-1, -1, 12]


def test_a_receive_changes_only_its_fragment():
  alg = engine()
  state, _ = run(alg, alg.init(PARAMS, jax.random.key(0)), data(), 3)  # fragment 0 back at 2
  assert np.any(state.params["a"] != 0)
  assert np.all(state.params["b"] == 0) and np.all(state.params["c"] == 0)
  mu = state.outer_state.inner_state[0].trace
  assert np.any(mu["a"] != 0) and np.all(mu["b"] == 0) and np.all(mu["c"] == 0)


@pytest.mark.slow
def test_alpha_one_never_touches_the_workers():
  """With alpha = 1 the merge keeps the local value: workers train as if alone."""
  alg = engine(alpha=1.0)
  d = data()
  state, _ = run(alg, alg.init(PARAMS, jax.random.key(3)), d, 8)
  inner = optax.adamw(1e-2)
  for m in range(2):
    w, opt = PARAMS, inner.init(PARAMS)
    for t in range(8):
      k = jax.random.fold_in(jax.random.fold_in(state.key, t), m)
      idx = jax.random.randint(k, (4,), 0, 8)
      g = jax.grad(loss)(w, d.x[m][idx], d.y[m][idx])
      u, opt = inner.update(g, opt, w)
      w = optax.apply_updates(w, u)
    for name in PARAMS:
      np.testing.assert_allclose(state.workers[name][m], w[name], rtol=1e-5, atol=1e-6)


def test_cocodc_sends_never_sent_then_stale_fragments_and_never_one_in_flight():
  alg = engine(mode="cocodc", send_every=2, overlap=3)
  state = alg.init(PARAMS, jax.random.key(0))
  sends = []
  for _ in range(14):
    before = state.sent_at
    state, _ = alg.jit_round(state, data())
    changed = np.flatnonzero(np.asarray(state.sent_at) != np.asarray(before))
    sends.append(int(changed[0]) if changed.size else -1)
  # h = 2: sends at even steps. Steps 0, 2, 4 send the never-sent 0, 1, 2 (fragment 0 is
  # back at step 3, 1 at 5, 2 at 7); from then on the choice is by staleness or drift,
  # and never a fragment whose all-reduce is still in flight.
  assert sends[:5] == [0, -1, 1, -1, 2]
  assert all(s == -1 for s in sends[1::2])
  assert all(s >= 0 for s in sends[::2])


def test_unhidden_communication_stalls_the_clock():
  # Fragment a: 12 bytes; all-reduce among 2 workers = 12 bytes / 4 B/s + 1 s = 4 s, of
  # which overlap 2 x step 0.5 s = 1 s is hidden: a 3 s stall at its receive.
  alg = engine(step_time=0.5, wan=WAN(bandwidth=4.0, latency=1.0))
  np.testing.assert_allclose(alg.fragment_comm_time(PARAMS), [4.0, 2.0, 3.0])
  state, _ = run(alg, alg.init(PARAMS, jax.random.key(0)), data(), 3)
  assert float(state.sim_time) == pytest.approx(3 * 0.5 + 3.0)


@pytest.mark.slow
def test_low_precision_outer_gradients():
  d = data()
  base = engine()
  exact, _ = run(base, base.init(PARAMS, jax.random.key(0)), d, 12)
  q8 = engine(outer_bits=8)
  s8, _ = run(q8, q8.init(PARAMS, jax.random.key(0)), d, 12)
  q2 = engine(outer_bits=2)
  s2, _ = run(q2, q2.init(PARAMS, jax.random.key(0)), d, 12)
  err = lambda s: max(float(jnp.max(jnp.abs(s.params[k] - exact.params[k]))) for k in PARAMS)
  scale = max(float(jnp.max(jnp.abs(exact.params[k]))) for k in PARAMS)
  assert 0 < err(s8) < 0.02 * scale < err(s2)  # 8 bits: close to float32; 2 bits: not
  np.testing.assert_allclose(q8.fragment_comm_time(PARAMS) - 0.1,
                             (engine().fragment_comm_time(PARAMS) - 0.1) / 4)  # latency 0.1 s


@pytest.mark.parametrize("kwargs, field", [
    (dict(mode="ring"), "mode"), (dict(overlap=6), "overlap"), (dict(overlap=0), "overlap"),
    (dict(num_fragments=7, labels={"a": 0, "b": 1, "c": 2}), "num_fragments"),
    (dict(alpha=1.5), "alpha"), (dict(lam0=-1.0), "lam0"),
    (dict(labels={"a": 0, "b": 1, "c": 5}), "labels"), (dict(send_every=0), "send_every"),
    (dict(outer_bits=16), "outer_bits"),
])
def test_bad_arguments_name_the_field(kwargs, field):
  with pytest.raises(ConfigError, match=field):
    engine(**kwargs)


@pytest.mark.parametrize("mode", ["streaming", "cocodc"])
@pytest.mark.slow
def test_traced_hyperparameters_match_concrete_ones(mode):
  """A vmapped sweep over (outer lr, alpha or lam0, overlap) equals building each engine
  with Python numbers: the experiment's tuning grid relies on it."""
  d = data()
  grid = [(0.4, 0.5, 1), (1.0, 0.2, 4)]
  knob = "alpha" if mode == "streaming" else "lam0"

  def run(lr, k, tau):
    alg = StreamingDiLoCo(
        loss, optax.adamw(1e-2), optax.sgd(lr, momentum=0.9, nesterov=True), num_workers=2,
        inner_steps=6, batch_size=4, labels=LABELS, num_fragments=3, overlap=tau, mode=mode,
        **{knob: k})
    state, _, _ = scan_rounds(alg, alg.init(PARAMS, jax.random.key(5)), d, num_rounds=14)
    return state.params, state.sim_time

  lrs, knobs, taus = (np.asarray(v) for v in zip(*grid, strict=True))
  batched = jax.jit(jax.vmap(run))(lrs.astype(np.float32), knobs.astype(np.float32),
                                   taus.astype(np.int32))
  for i, (lr, k, tau) in enumerate(grid):
    params, sim_time = jax.jit(lambda lr=lr, k=k, tau=tau: run(lr, k, tau))()
    for name in PARAMS:
      np.testing.assert_allclose(batched[0][name][i], params[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1][i], sim_time, rtol=1e-6)
