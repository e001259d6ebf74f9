"""Delay compensation: DC-ASGD (Zheng et al. 2017) and CoCoDC's per-tensor form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.errors import ConfigError
from jaxfl.transforms import cocodc_correction, cocodc_merge, dc_asgd


def _tree(key, scale=1.0):
  """Several leaves of different shapes (scalar, vector, matrix, 3-d)."""
  ks = jax.random.split(key, 4)
  return {"b": scale * jax.random.normal(ks[0], ()),
          "v": scale * jax.random.normal(ks[1], (5,)),
          "w": scale * jax.random.normal(ks[2], (3, 4)),
          "k": {"t": scale * jax.random.normal(ks[3], (2, 3, 2))}}


def _assert_tree_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_tree_close(a, b, rtol=1e-6, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# --- DC-ASGD ---------------------------------------------------------------------------

def test_dc_asgd_hand_example():
  # g = [1, 2], w - w_bak = [0.5, -1], lam = 0.1: g + 0.1 * g^2 * d = [1.05, 1.6].
  dc = dc_asgd(0.1)
  w, w_bak = jnp.array([1.5, 0.0]), jnp.array([1.0, 1.0])
  u, state = dc.update(jnp.array([1.0, 2.0]), dc.init(w), w, backup=w_bak)
  np.testing.assert_allclose(np.asarray(u), [1.05, 1.6], rtol=1e-6)
  assert int(state.count) == 1 and state.mean_square is None


@pytest.mark.parametrize("make", [lambda: dc_asgd(0.0), lambda: dc_asgd(adaptive=True, lam0=0.0)])
def test_dc_asgd_zero_strength_is_plain_update(make):
  g, w, w_bak = _tree(jax.random.key(0)), _tree(jax.random.key(1)), _tree(jax.random.key(2))
  dc = make()
  u, _ = dc.update(g, dc.init(w), w, backup=w_bak)
  _assert_tree_equal(u, g)
  # Same through a chain with SGD: the step is exactly -lr * g.
  opt, plain = optax.chain(make(), optax.sgd(0.1)), optax.sgd(0.1)
  step, _ = opt.update(g, opt.init(w), w, backup=w_bak)
  ref, _ = plain.update(g, plain.init(w), w)
  _assert_tree_equal(step, ref)


def _quadratic_case(lam):
  """f(w) = 1/2 w^T A w, A = diag(1, 4, 9): stale g = A w_bak, true gradient A w.

  w_bak = (2, 1.1, 0.6) gives g = (2, 4.4, 5.4), g^2 = (4, 19.36, 29.16); with lam = 0.25,
  lam g^2 = (1, 4.84, 7.29), close to A. Exact correction A d with d = w - w_bak =
  (0.1, -0.05, 0.08); the compensated error is (A - lam g^2) d = (0, 0.042, 0.1368).
  """
  a = jnp.array([1.0, 4.0, 9.0])
  w_bak = jnp.array([2.0, 1.1, 0.6])
  w = w_bak + jnp.array([0.1, -0.05, 0.08])
  stale, true = a * w_bak, a * w
  dc = dc_asgd(lam)
  comp, _ = dc.update(stale, dc.init(w), w, backup=w_bak)
  return float(jnp.linalg.norm(stale - true)), float(jnp.linalg.norm(comp - true))


def test_dc_asgd_quadratic_closer_to_true_gradient():
  stale_err, comp_err = _quadratic_case(0.25)
  # ||A d|| = ||(0.1, -0.2, 0.72)|| = sqrt(0.5684) = 0.7539; ||(0, 0.042, 0.1368)|| = 0.1431.
  assert stale_err == pytest.approx(0.75392, rel=1e-4)
  assert comp_err == pytest.approx(0.14310, rel=1e-3)
  assert comp_err < 0.2 * stale_err
  # The check can fail: lam = 1 makes lam g^2 = 4 A roughly, an over-correction worse
  # than no correction (error ||(-0.3, 0.768, -1.6128)|| = 1.811).
  stale_err, bad_err = _quadratic_case(1.0)
  assert bad_err == pytest.approx(1.8113, rel=1e-3)
  assert bad_err > stale_err


def test_dc_asgd_adaptive_matches_formula_over_three_steps():
  lam0, m, eps = 2.0, 0.95, 1e-7
  dc = dc_asgd(adaptive=True, lam0=lam0, momentum=m, eps=eps)
  rng = np.random.default_rng(0)
  gs = rng.normal(size=(3, 4)).astype(np.float32)
  ws = rng.normal(size=(3, 4)).astype(np.float32)
  baks = ws + 0.1 * rng.normal(size=(3, 4)).astype(np.float32)
  state = dc.init(jnp.zeros(4))
  ms = np.zeros(4, np.float64)
  for t in range(3):
    u, state = dc.update(jnp.asarray(gs[t]), state, jnp.asarray(ws[t]), backup=jnp.asarray(baks[t]))
    g = gs[t].astype(np.float64)
    ms = m * ms + (1 - m) * g * g
    lam_t = lam0 / np.sqrt(ms + eps)
    expected = g + lam_t * g * g * (ws[t].astype(np.float64) - baks[t])
    np.testing.assert_allclose(np.asarray(state.mean_square), ms, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5, atol=1e-6)
  assert int(state.count) == 3
  # First step by hand: MS_1 = 0.05 g^2, so lam_1 g^2 = 2 |g| / sqrt(0.05) = 8.944 |g|.
  np.testing.assert_allclose(lam0 / np.sqrt(0.05), 8.94427, rtol=1e-5)


@pytest.mark.slow
def test_dc_asgd_chain_jit_vmap():
  lam = 0.04
  g, w, w_bak = _tree(jax.random.key(3)), _tree(jax.random.key(4)), _tree(jax.random.key(5))
  opt = optax.chain(dc_asgd(lam), optax.sgd(0.1))
  step, _ = jax.jit(opt.update)(g, opt.init(w), w, backup=w_bak)
  expected = jax.tree.map(lambda g, w, b: -0.1 * (g + lam * g * g * (w - b)), g, w, w_bak)
  _assert_tree_close(step, expected, rtol=1e-5, atol=1e-7)

  # vmap over a worker axis: each worker has its own stale gradient and backup weights.
  n = 3
  gs = jax.vmap(_tree)(jax.random.split(jax.random.key(6), n))
  baks = jax.vmap(_tree)(jax.random.split(jax.random.key(7), n))
  opt = optax.chain(dc_asgd(adaptive=True), optax.sgd(0.1))

  def worker(g, b):
    return opt.update(g, opt.init(w), w, backup=b)

  steps, states = jax.jit(jax.vmap(worker))(gs, baks)
  for i in range(n):
    gi, bi = jax.tree.map(lambda x: x[i], gs), jax.tree.map(lambda x: x[i], baks)
    ref, _ = worker(gi, bi)
    _assert_tree_close(jax.tree.map(lambda x: x[i], steps), ref, rtol=1e-5, atol=1e-7)
  assert states[0].count.shape == (n,)


def test_dc_asgd_bad_input():
  with pytest.raises(ConfigError, match="lam"):
    dc_asgd(-0.1)
  with pytest.raises(ConfigError, match="momentum"):
    dc_asgd(adaptive=True, momentum=1.0)
  with pytest.raises(ConfigError, match="eps"):
    dc_asgd(eps=0.0)
  dc = dc_asgd()
  with pytest.raises(ConfigError, match="backup"):
    dc.update(jnp.ones(2), dc.init(jnp.ones(2)), jnp.ones(2))
  with pytest.raises(ConfigError, match="params"):
    dc.update(jnp.ones(2), dc.init(jnp.ones(2)), backup=jnp.ones(2))


# --- CoCoDC ----------------------------------------------------------------------------

def test_cocodc_correction_norm_is_lam0_times_progress_norm():
  lam0 = 0.2
  g1, d = _tree(jax.random.key(10), 0.3), _tree(jax.random.key(11), 0.5)
  dc = cocodc_correction(lam0)
  out, state = dc.update(g1, dc.init(g1), discrepancy=d)
  assert int(state.count) == 1
  for o, g, dd in zip(jax.tree.leaves(out), jax.tree.leaves(g1), jax.tree.leaves(d), strict=True):
    corr = np.asarray(o, np.float64) - np.asarray(g, np.float64)
    np.testing.assert_allclose(np.linalg.norm(corr), lam0 * np.linalg.norm(g), rtol=1e-6)
    # Direction: along C = g1 * g1 * D.
    c = np.asarray(g, np.float64) ** 2 * np.asarray(dd, np.float64)
    np.testing.assert_allclose(corr, lam0 * np.linalg.norm(g) * c / np.linalg.norm(c),
                               rtol=1e-5, atol=1e-7)


def test_cocodc_zero_lam0_and_zero_tau():
  g_new, staged, now = (_tree(jax.random.key(k)) for k in (20, 21, 22))
  # lam0 = 0: the local progress replayed on the new global value, bit for bit.
  merged = cocodc_merge(g_new, staged, now, lam0=0.0)
  _assert_tree_equal(merged, jax.tree.map(lambda g, l, s: g + (l - s), g_new, now, staged))
  dc = cocodc_correction(0.0)
  g1 = jax.tree.map(jnp.subtract, staged, now)
  out, _ = dc.update(g1, dc.init(g1), discrepancy=jax.tree.map(jnp.subtract, g_new, staged))
  _assert_tree_equal(out, g1)
  # tau = 0: nothing happened since the send (g1 = 0), so the merge is exactly theta^G_new.
  _assert_tree_equal(cocodc_merge(g_new, staged, staged, lam0=0.2), g_new)


def test_cocodc_merge_matches_transform_and_vmaps_per_worker():
  lam0 = 0.5
  n = 3
  g_new = _tree(jax.random.key(30))
  staged = jax.vmap(_tree)(jax.random.split(jax.random.key(31), n))
  now = jax.tree.map(lambda s, e: s - 0.1 * e, staged,
                     jax.vmap(_tree)(jax.random.split(jax.random.key(32), n)))
  merged = jax.jit(jax.vmap(lambda s, l: cocodc_merge(g_new, s, l, lam0)))(staged, now)
  dc = cocodc_correction(lam0)
  for i in range(n):
    s, l = jax.tree.map(lambda x: x[i], staged), jax.tree.map(lambda x: x[i], now)
    g1 = jax.tree.map(jnp.subtract, s, l)
    g1c, _ = dc.update(g1, dc.init(g1), discrepancy=jax.tree.map(jnp.subtract, g_new, s))
    # Per-worker lambda_i: worker i's merge uses only its own norms.
    _assert_tree_close(jax.tree.map(lambda x: x[i], merged),
                       jax.tree.map(jnp.subtract, g_new, g1c), rtol=1e-6, atol=1e-6)


def test_cocodc_bad_input():
  with pytest.raises(ConfigError, match="lam0"):
    cocodc_correction(-1.0)
  with pytest.raises(ConfigError, match="eps"):
    cocodc_merge(jnp.ones(2), jnp.ones(2), jnp.ones(2), eps=-1.0)
  dc = cocodc_correction()
  with pytest.raises(ConfigError, match="discrepancy"):
    dc.update(jnp.ones(2), dc.init(jnp.ones(2)))


def test_low_precision_leaves_keep_their_dtype():
  # The products are formed in float32 (bf16 would underflow), then cast back.
  g = jnp.array([1.0, 2.0], jnp.bfloat16)
  w, w_bak = jnp.array([0.5, -1.0], jnp.bfloat16), jnp.zeros(2, jnp.bfloat16)
  dc = dc_asgd(0.1)
  u, _ = dc.update(g, dc.init(w), w, backup=w_bak)
  assert u.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(u, np.float32), [1.05, 1.6], rtol=1e-2)
  merged = cocodc_merge(w, w_bak, g, lam0=0.2)
  assert merged.dtype == jnp.bfloat16


# --- hyperparameters as arrays (optax.inject_hyperparams) ------------------------------

def _run_jitted(opt, grads, params, **extra):
  """Three jitted steps of ``opt`` (hyperparameters in its state arrive as tracers)."""
  step = jax.jit(lambda g, s: opt.update(g, s, params, **extra))
  state, outs = opt.init(params), []
  for g in grads:
    out, state = step(g, state)
    outs.append(out)
  return outs


@pytest.mark.parametrize("adaptive", [False, True])
def test_dc_asgd_under_inject_hyperparams_matches_float_hyperparameters(adaptive):
  hyper = dict(lam=0.3, lam0=1.5, momentum=0.8, eps=1e-6)
  w, w_bak = _tree(jax.random.key(40)), _tree(jax.random.key(41))
  grads = [_tree(jax.random.key(42 + i)) for i in range(3)]

  def server(learning_rate, lam, lam0, momentum, eps):  # a user's server optimizer
    return optax.chain(dc_asgd(lam, adaptive=adaptive, lam0=lam0, momentum=momentum, eps=eps),
                       optax.sgd(learning_rate))

  expected = _run_jitted(server(0.5, **hyper), grads, w, backup=w_bak)
  injected = optax.inject_hyperparams(server)(learning_rate=0.5, **hyper)
  for out, ref in zip(_run_jitted(injected, grads, w, backup=w_bak), expected, strict=True):
    _assert_tree_close(out, ref, rtol=1e-6, atol=1e-7)
  # The transform itself, injected directly (``adaptive``, a bool, stays static).
  direct = optax.inject_hyperparams(dc_asgd)(adaptive=adaptive, **hyper)
  plain = dc_asgd(adaptive=adaptive, **hyper)
  for out, ref in zip(_run_jitted(direct, grads, w, backup=w_bak),
                      _run_jitted(plain, grads, w, backup=w_bak), strict=True):
    _assert_tree_close(out, ref, rtol=1e-6, atol=1e-7)


def test_cocodc_correction_under_inject_hyperparams_matches_float_hyperparameters():
  g1, d = _tree(jax.random.key(50), 0.3), _tree(jax.random.key(51), 0.5)
  injected = optax.inject_hyperparams(cocodc_correction)(lam0=0.4, eps=1e-6)
  out = _run_jitted(injected, [g1], g1, discrepancy=d)[0]
  ref = _run_jitted(cocodc_correction(0.4, 1e-6), [g1], g1, discrepancy=d)[0]
  _assert_tree_close(out, ref, rtol=1e-6, atol=1e-7)


def test_array_hyperparameters_are_taken_and_bad_ones_named():
  # Scalar arrays pass unchecked (their values may be tracers); Python numbers are checked.
  dc_asgd(jnp.float32(0.1), adaptive=True, lam0=jnp.array(2.0), momentum=jnp.array(0.9),
          eps=jnp.array(1e-7))
  cocodc_correction(jnp.array(0.2), jnp.array(1e-8))
  with pytest.raises(ConfigError, match="momentum"):
    dc_asgd(momentum=jnp.full([2], 0.9))  # a scalar is expected
  with pytest.raises(ConfigError, match="eps"):
    cocodc_correction(eps="1e-8")
  with pytest.raises(ConfigError, match="lam0"):
    dc_asgd(lam0=True)
