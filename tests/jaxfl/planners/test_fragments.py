"""Fragments and send schedules: Streaming DiLoCo's fixed one and CoCoDC's adaptive one."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfl.errors import ConfigError
from jaxfl.models import transformer
from jaxfl.planners import fragments as fr
from jaxfl.sim import network


@pytest.fixture(scope="module")
def abstract_params():
  return jax.eval_shape(lambda: transformer.init(transformer.VARIANTS["tiny"], jax.random.key(0)))


units_and_fragments = st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, n), st.sampled_from(fr.PATTERNS)))


def brute_force(step, sent_at, in_flight, drift, sizes, H):
  """The rule written out longhand: forced, then never-sent, then argmax R."""
  free = [p for p in range(len(sent_at)) if not in_flight[p]]
  if not free:
    return -1, None
  interval = {p: step - sent_at[p] for p in free}
  stale = [p for p in free if interval[p] >= H]
  if stale:
    return max(stale, key=lambda p: (interval[p], -p)), None
  never = [p for p in free if sent_at[p] == -1]
  if never:
    return min(never), None
  ratio = {p: np.float32(drift[p]) / (np.float32(max(interval[p], 1)) * np.float32(sizes[p]))
           for p in free}
  return None, ratio


selection_cases = st.integers(1, 8).flatmap(lambda p: st.tuples(
    st.integers(1, 50),  # H
    st.integers(0, 200),  # step
    st.lists(st.integers(-1, 200), min_size=p, max_size=p),  # sent_at (clipped to <= step)
    st.lists(st.booleans(), min_size=p, max_size=p),
    # No subnormals: XLA:CPU flushes them to zero, which is not what the rule is about.
    st.lists(st.one_of(st.just(0.0), st.floats(0.0009765625, 1e3, width=32)), min_size=p,
             max_size=p),
    st.lists(st.integers(1, 10_000), min_size=p, max_size=p)))

_select = jax.jit(fr.select_fragment)


@settings(max_examples=100, deadline=None)
@given(units_and_fragments)
def test_fragments_partition_the_units(args):
  n, p, pattern = args
  frags = fr.fragment_units(n, p, pattern)
  assert len(frags) == p
  assert all(len(f) > 0 for f in frags)
  assert sorted(u for f in frags for u in f) == list(range(n))  # every unit exactly once
  sizes = [len(f) for f in frags]
  assert max(sizes) - min(sizes) <= 1
  if pattern == "sequential":  # contiguous runs, in order
    assert all(f == tuple(range(f[0], f[-1] + 1)) for f in frags)
    assert all(a[-1] + 1 == b[0] for a, b in zip(frags, frags[1:]))
  else:
    assert all(u % p == i for i, f in enumerate(frags) for u in f)


def test_fragment_labels_cover_every_leaf(abstract_params):
  units = fr.layer_units(2)
  assert units == ["embed", "block_0", "block_1", "ln_f+head"]
  for pattern in fr.PATTERNS:
    frags = fr.fragment_units(len(units), 2, pattern)
    labels = fr.fragment_labels(abstract_params, frags)
    assert jax.tree.structure(labels) == jax.tree.structure(abstract_params)
    unit_of = {u: p for p, f in enumerate(frags) for u in f}
    assert labels["pos_embed"] == labels["embed"]["embedding"] == unit_of[0]
    assert set(jax.tree.leaves(labels["blocks"][1])) == {unit_of[2]}
    edge = set(jax.tree.leaves(labels["head"])) | set(jax.tree.leaves(labels["ln_f"]))
    assert edge == {unit_of[3]}
    sizes = fr.fragment_sizes(abstract_params, labels, 2)
    assert sizes.sum() == 44290  # the tiny model's parameter count: every leaf labelled once
    assert (sizes > 0).all()
  # One fragment per unit: block i is its own fragment.
  labels = fr.fragment_labels(abstract_params, fr.fragment_units(4, 4))
  assert sorted(set(jax.tree.leaves(labels))) == [0, 1, 2, 3]
  mask = fr.fragment_mask(labels, 2)
  assert all(bool(m) == (lab == 2)
             for m, lab in zip(jax.tree.leaves(mask), jax.tree.leaves(labels)))


def test_fragment_drift_sums_l1_over_workers_per_fragment():
  glob = {"embed": {"embedding": jnp.zeros([2, 2])}, "blocks": {0: {"w": jnp.ones([3])}},
          "head": {"kernel": jnp.zeros([2])}}
  local = {"embed": {"embedding": jnp.stack([jnp.ones([2, 2]), -2 * jnp.ones([2, 2])])},
           "blocks": {0: {"w": jnp.stack([jnp.ones([3]), jnp.zeros([3])])}},
           "head": {"kernel": jnp.stack([jnp.array([0.5, 0.0]), jnp.array([0.0, -0.5])])}}
  labels = fr.fragment_labels(glob, [(0, 2), (1,)])  # strided: embed+head, block 0
  drift = fr.fragment_drift(glob, local, labels, 2)
  np.testing.assert_allclose(drift, [4 * 1 + 4 * 2 + 0.5 + 0.5, 0 + 3])
  jitted = jax.jit(fr.fragment_drift, static_argnums=3)(glob, local, labels, 2)
  np.testing.assert_allclose(jitted, drift)


@settings(max_examples=200, deadline=None)
@given(selection_cases)
@pytest.mark.slow
def test_select_fragment_follows_the_cocodc_rule(args):
  H, step, sent_at, in_flight, drift, sizes = args
  sent_at = [min(s, step) for s in sent_at]
  got = int(_select(step, np.array(sent_at), np.array(in_flight), np.array(drift, np.float32),
                    np.array(sizes), H))
  want, ratio = brute_force(step, sent_at, in_flight, drift, sizes, H)
  if all(in_flight):
    assert got == -1
    return
  assert got != -1 and not in_flight[got]  # never an in-flight fragment
  if ratio is None:
    assert got == want  # forced (stalest) or never-sent (lowest index)
  else:
    assert ratio[got] >= max(ratio.values()) * (1 - 1e-5)  # argmax of R (ties either way)


def test_select_fragment_priorities_by_hand():
  free = np.zeros(3, bool)
  sizes = np.array([10, 10, 10])
  # Forced beats never-sent and drift; the stalest of the stale wins.
  assert int(fr.select_fragment(100, [30, -1, 10], free, [0, 0, 9e9], sizes, 60)) == 1
  assert int(fr.select_fragment(50, [30, -1, 10], free, [0, 0, 9e9], sizes, 40)) == 1
  assert int(fr.select_fragment(50, [0, 45, 5], free, [0, 0, 9e9], sizes, 40)) == 0
  # An in-flight stale fragment is skipped.
  assert int(fr.select_fragment(50, [0, 45, 5], [True, False, False], [0, 0, 9e9], sizes, 40)) == 2
  # Never-sent beats drift, lowest index first.
  assert int(fr.select_fragment(5, [2, -1, -1], free, [9e9, 0, 0], sizes, 60)) == 1
  # R = drift / (I n): fragment 0 drifted more but over a longer interval and more params.
  assert int(fr.select_fragment(30, [0, 20, 25], free, [90, 20, 4], [30, 10, 10], 60)) == 1
  assert int(fr.select_fragment(30, [0, 20, 25], np.ones(3, bool), [1, 1, 1], sizes, 60)) == -1
  # A fragment sent this step and already back (tau = 0): I floored at 1, no 0/0.
  assert int(fr.select_fragment(30, [30, 29, 29], free, [0, 1, 2], sizes, 60)) == 2


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12).flatmap(lambda p: st.tuples(
    st.just(p), st.integers(p, 80), st.integers(0, 500))))
def test_streaming_schedule_syncs_each_fragment_once_per_interval(args):
  p, H, offset = args
  phases = [fr.streaming_send_step(q, H, p, offset) for q in range(p)]
  assert len(set(phases)) == p  # distinct phases
  for q in range(p):  # offsets spread by H/P (floored)
    assert (phases[q] - offset) % H == q * H // p
  start = 37  # any window of H consecutive steps
  seen = [int(fr.streaming_fragment_at(t, H, p, offset)) for t in range(start, start + H)]
  assert sorted(s for s in seen if s >= 0) == list(range(p))  # each exactly once
  for t, s in zip(range(start, start + H), seen):
    if s >= 0:
      assert t % H == phases[s]


def test_streaming_fragment_at_traces_inside_jit():
  traced = jax.jit(lambda t: fr.streaming_fragment_at(t, 60, 3, offset=5))
  assert [int(traced(t)) for t in (5, 6, 25, 45, 65, 125)] == [0, -1, 1, 2, 0, 0]
  assert jax.lax.scan(lambda c, t: (c, fr.streaming_fragment_at(t, 6, 3)), 0,
                      jnp.arange(6))[1].tolist() == [0, -1, 1, -1, 2, -1]


def test_capacity_formulas_on_hand_computed_numbers():
  # 1 MB at 1 MB/s + 0.5 s latency = 1.5 s a transfer; 60 steps of 1 s hold 40.
  assert fr.transmissions_per_interval(60, 1.0, 1e6, 1e6, 0.5, num_fragments=3) == 3
  assert fr.transmissions_per_interval(60, 1.0, 1e6, 1e6, 0.5, num_fragments=100) == 40
  assert fr.transmissions_per_interval(3, 0.1, 1e6, 1e6, 0.5, num_fragments=4) == 1  # floor 0 -> 1
  assert fr.transmissions_per_interval(3, 0.1, 0.0, 1.0, 0.1, num_fragments=4) == 3  # 0.3/0.1
  assert fr.send_interval(60, 3) == 20
  assert fr.send_interval(60, 40) == 1
  # 4 workers: all-reduce moves 2·3/4 = 1.5 MB per MB; at 1 MB/s + 0.5 s: 2 s -> 2 steps of 1 s.
  assert network.allreduce_bytes(1e6, 4) == 1.5e6
  assert network.overlap_steps(1e6, 1e6, 0.5, 1.0, 4) == 2
  assert network.overlap_steps(1e6, 1e6, 0.6, 1.0, 4) == 3
  assert network.overlap_steps(1e6, 1e6, 0.0, 0.5, 1) == 0  # one worker: nothing to all-reduce
  # Blocking DiLoCo: 10 MB model over 8 workers = 17.5 MB at 5 MB/s + 0.1 s.
  assert network.blocking_sync_time(10e6, 5e6, 0.1, 8) == pytest.approx(3.6)
  assert network.overlap_stall(6.0, 5, 1.0) == 1.0
  assert network.overlap_stall(6.0, 7, 1.0) == 0.0
  # §2.6's clock: C/P = 20/3 per fragment (2 workers move 1x the bytes) -> tau = 7 hides it.
  assert network.overlap_steps(20 / 3, 1.0, 0.0, 1.0, 2) == math.ceil(20 / 3) == 7


def test_bad_inputs_name_the_field(abstract_params):
  cases = [
      (lambda: fr.fragment_units(6, 0), "num_fragments"),
      (lambda: fr.fragment_units(6, 7), "num_fragments"),
      (lambda: fr.fragment_units(0, 1), "num_units"),
      (lambda: fr.fragment_units(6, 3, "zigzag"), "pattern"),
      (lambda: fr.layer_units(-1), "num_layers"),
      (lambda: fr.fragment_labels(abstract_params, [(0, 1), (2,)]), "fragments"),
      (lambda: fr.fragment_labels(abstract_params, [(0, 1), (1, 2, 3)]), "fragments"),
      (lambda: fr.fragment_labels({"weird": jnp.zeros(2)}, [(0, 1)]), "params"),
      (lambda: fr.streaming_send_step(0, 2, 3), "num_fragments"),
      (lambda: fr.streaming_send_step(3, 60, 3), "fragment"),
      (lambda: fr.streaming_send_step(0, 0, 1), "H"),
      (lambda: fr.select_fragment(0, [0, 0], [False], [0, 0], [1, 1], 5), "sent_at"),
      (lambda: fr.select_fragment(0, [0], [False], [0], [1], 0), "H"),
      (lambda: fr.transmissions_per_interval(60, 1.0, 1e6, 0.0, 0.5, 3), "bandwidth"),
      (lambda: fr.transmissions_per_interval(60, 1.0, 1e6, 1e6, -1.0, 3), "latency"),
      (lambda: fr.transmissions_per_interval(60, 0.0, 1e6, 1e6, 0.5, 3), "step_time"),
      (lambda: fr.transmissions_per_interval(0, 1.0, 1e6, 1e6, 0.5, 3), "H"),
      (lambda: fr.send_interval(60, 0), "N"),
      (lambda: fr.send_interval(60, 61), "N"),
      (lambda: network.overlap_steps(1e6, 1e6, 0.5, 1.0, 0), "num_workers"),
  ]
  for fn, field in cases:
    with pytest.raises(ConfigError) as err:
      fn()
    assert err.value.field == field
