"""skip_inactive: dropped groups get a zero update and keep their optimizer statistics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.errors import ConfigError
from jaxfl.peft.layerdrop import layer_index_tree
from jaxfl.transforms import SkipInactiveState, skip_inactive

# ----------------------------------------------------------------------------- drop_rates


@jax.jit
def _params():
  keys = iter(jax.random.split(jax.random.key(7), 16))
  block = lambda: {"attn": {"kernel": jax.random.normal(next(keys), (4, 4))},
                   "ln": {"scale": jax.random.normal(next(keys), (4,))}}
  return {"embed": jax.random.normal(next(keys), (5, 4)),
          "blocks": {i: block() for i in range(3)}}


@jax.jit
def _grads(step, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(1), step), len(leaves))
  # Non-zero gradients for every block, the dropped ones too.
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _changed(a, b):
  return all(bool(np.any(np.asarray(x) != np.asarray(y))) for x, y in zip(jax.tree.leaves(a),
                                                                       jax.tree.leaves(b)))


def _lora_params():
  keys = iter(jax.random.split(jax.random.key(3), 16))
  block = lambda: {"kernel": jax.random.normal(next(keys), (4, 4)),
                   "lora_a": jax.random.normal(next(keys), (4, 2)),
                   "lora_b": jax.random.normal(next(keys), (2, 4))}
  return {"embed": jax.random.normal(next(keys), (5, 4)),
          "blocks": {i: block() for i in range(3)},
          "head": {"kernel": jax.random.normal(next(keys), (4, 2))}}


def _labels(params):
  def label(path, _):
    name = path[-1].key if isinstance(path[-1], jax.tree_util.DictKey) else None
    return "lora" if isinstance(name, str) and name.startswith("lora") else "frozen"

  return jax.tree_util.tree_map_with_path(label, params)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.slow
def test_skip_inactive_adam_freezes_dropped_block(static):
  params = _params()
  tx = skip_inactive(optax.adam(1e-2), layer_index_tree(params))
  # Jitted, with the mask static (closed over) or traced (an argument): eager dispatch of
  # every Adam op costs more than compiling one program on CPU.
  if static:
    update = lambda keep: jax.jit(lambda g, s, p: tx.update(g, s, p, keep=keep))
  else:
    update = lambda keep: functools.partial(jax.jit(
        lambda g, s, p, k: tx.update(g, s, p, keep=k)), k=jnp.array(keep))
  state = tx.init(params)
  # A first step with every block, so mu and nu are non-zero before the dropped step.
  updates, state = update((True, True, True))(_grads(0, params), state, params)
  params = optax.apply_updates(params, updates)
  updates, new_state = update((True, False, True))(_grads(1, params), state, params)
  new_params = optax.apply_updates(params, updates)

  adam, new_adam = state.inner_state[0], new_state.inner_state[0]
  _assert_tree_equal(new_params["blocks"][1], params["blocks"][1])
  _assert_tree_equal(jax.tree.map(jnp.zeros_like, updates["blocks"][1]), updates["blocks"][1])
  _assert_tree_equal(new_adam.mu["blocks"][1], adam.mu["blocks"][1])
  _assert_tree_equal(new_adam.nu["blocks"][1], adam.nu["blocks"][1])
  parts = {"embed": lambda t: t["embed"], "block 0": lambda t: t["blocks"][0],
           "block 2": lambda t: t["blocks"][2]}
  for name, get in parts.items():
    assert _changed(get(new_params), get(params)), name
    assert _changed(get(new_adam.mu), get(adam.mu)) and _changed(get(new_adam.nu), get(adam.nu))
  # Documented deviation: the shared step count advances for every block.
  assert int(new_adam.count) == 2
  np.testing.assert_array_equal(new_state.active_steps, [2, 1, 2])


def test_skip_inactive_all_kept_is_plain_adam_bit_for_bit():
  params = _params()
  adam = optax.adam(1e-2)
  tx = skip_inactive(adam, layer_index_tree(params))
  p_ref, s_ref = params, adam.init(params)
  p, s = params, tx.init(params)
  for step in range(3):
    g = _grads(step, params)
    u_ref, s_ref = adam.update(g, s_ref, p_ref)
    keep = jnp.ones(3, bool) if step % 2 else None  # traced all-True, then the default
    u, s = tx.update(g, s, p, keep=keep)
    _assert_tree_equal(u, u_ref)
    _assert_tree_equal(s.inner_state, s_ref)
    p_ref, p = optax.apply_updates(p_ref, u_ref), optax.apply_updates(p, u)
  _assert_tree_equal(p, p_ref)
  # Also inside jit, against jitted plain adam.
  u_ref, _ = jax.jit(adam.update)(_grads(9, params), s_ref, p_ref)
  u, _ = jax.jit(lambda g, s, p, k: tx.update(g, s, p, keep=k))(_grads(9, params), s, p,
                                                                 jnp.ones(3, bool))
  _assert_tree_equal(u, u_ref)


@pytest.mark.slow
def test_skip_inactive_jit_scan_with_traced_keep():
  params = _params()
  tx = skip_inactive(optax.adam(1e-2), layer_index_tree(params))
  keeps = jnp.array([[True, False, True], [False, False, True], [True, False, False],
                     [True, False, True], [False, False, False]])
  grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(t, params) for t in range(len(keeps))])

  @jax.jit
  def run(params, grads, keeps):
    def step(carry, xs):
      params, state = carry
      g, keep = xs
      updates, state = tx.update(g, state, params, keep=keep)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), (grads, keeps))
    return params, state

  final, state = run(params, grads, keeps)
  # Block 1 is dropped at every step: never moved, Adam's statistics still zero.
  _assert_tree_equal(final["blocks"][1], params["blocks"][1])
  _assert_tree_equal(state.inner_state[0].mu["blocks"][1],
                     jax.tree.map(jnp.zeros_like, params["blocks"][1]))
  np.testing.assert_array_equal(state.active_steps, keeps.sum(0))
  assert int(state.inner_state[0].count) == len(keeps)
  # Same as stepping eagerly with static masks (compiled vs eager: to rounding).
  p, s = params, tx.init(params)
  for t, keep in enumerate(np.asarray(keeps)):
    g = jax.tree.map(lambda x, t=t: x[t], grads)
    u, s = tx.update(g, s, p, keep=tuple(keep.tolist()))
    p = optax.apply_updates(p, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), final, p)


@pytest.mark.parametrize("order", ["outside", "inside"])
@pytest.mark.slow
def test_skip_inactive_with_partition_labels(order):
  params = _lora_params()
  layers = layer_index_tree(params)
  transforms = lambda inner: {"lora": inner, "frozen": optax.set_to_zero()}
  if order == "outside":  # the wrapper around a partitioned optimizer (label function)
    tx = skip_inactive(optax.partition(transforms(optax.adam(1e-2)), _labels), layers)
    lora_state = lambda s: s.inner_state.inner_states["lora"].inner_state[0]
  else:  # inside the trainable partition only (label tree); `keep` is passed through
    tx = optax.partition(transforms(skip_inactive(optax.adam(1e-2), layers)), _labels(params))
    lora_state = lambda s: s.inner_states["lora"].inner_state.inner_state[0]

  update = jax.jit(lambda g, s, p, k: tx.update(g, s, p, keep=k))  # compiled once
  state = tx.init(params)
  p = params
  for step, keep in enumerate([[True, True, True], [True, False, True], [False, False, True]]):
    before, before_state = p, state
    updates, state = update(_grads(step, p), state, p, jnp.array(keep))
    p = optax.apply_updates(p, updates)
    for i, kept in enumerate(keep):
      lora = {k: v for k, v in p["blocks"][i].items() if k.startswith("lora")}
      lora_before = {k: v for k, v in before["blocks"][i].items() if k.startswith("lora")}
      mu = {k: v for k, v in lora_state(state).mu["blocks"][i].items() if k.startswith("lora")}
      mu_before = {k: v for k, v in lora_state(before_state).mu["blocks"][i].items()
                   if k.startswith("lora")}
      if kept:
        assert _changed(lora, lora_before) and _changed(mu, mu_before)
      else:
        _assert_tree_equal(lora, lora_before)
        _assert_tree_equal(mu, mu_before)
  # Frozen leaves never change, kept or not.
  for i in range(3):
    np.testing.assert_array_equal(p["blocks"][i]["kernel"], params["blocks"][i]["kernel"])
  np.testing.assert_array_equal(p["embed"], params["embed"])
  np.testing.assert_array_equal(p["head"]["kernel"], params["head"]["kernel"])


def test_skip_inactive_state_and_errors():
  params = _params()
  tx = skip_inactive(optax.sgd(0.1, momentum=0.9), layer_index_tree(params))
  state = tx.init(params)
  assert isinstance(state, SkipInactiveState) and state.active_steps.shape == (3,)
  with pytest.raises(ConfigError) as err:
    tx.update(_grads(0, params), state, params, keep=jnp.ones(4, bool))
  assert err.value.field == "keep"
  with pytest.raises(ConfigError) as err:
    tx.update(_grads(0, params), state, params, keep=jnp.ones(3))
  assert err.value.field == "keep"
  with pytest.raises(ConfigError) as err:
    skip_inactive(optax.adam(1e-2), {"embed": -1})
  assert err.value.field == "layer_of"
  # Momentum traces are per-parameter state too: frozen for the dropped block.
  _, new = tx.update(_grads(0, params), state, params, keep=(False, True, True))
  _assert_tree_equal(new.inner_state[0].trace["blocks"][0], state.inner_state[0].trace["blocks"][0])
  assert _changed(new.inner_state[0].trace["blocks"][1], state.inner_state[0].trace["blocks"][1])
