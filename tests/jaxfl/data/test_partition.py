"""Tests for jaxfl.data.partition: coverage, determinism, skew statistics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfl.data import partition
from jaxfl.errors import ConfigError

# Small inputs keep the whole file to a few seconds.
FAST = settings(max_examples=40, deadline=None)


@st.composite
def labelled(draw, max_n: int = 200, max_classes: int = 8):
  """(labels [N], num_clients) with 1 <= num_clients <= N."""
  num_classes = draw(st.integers(1, max_classes))
  labels = np.array(
      draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=max_n)),
      np.int64)
  num_clients = draw(st.integers(1, min(labels.shape[0], 20)))
  return labels, num_clients


seeds = st.integers(0, 2**32 - 1)


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
  for p in parts:
    assert p.dtype == np.int64
    assert np.all(np.diff(p) > 0), "each client's indices sorted and distinct"
  flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
  np.testing.assert_array_equal(np.sort(flat), np.arange(n))


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def differ(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
  return len(a) != len(b) or any(
      x.shape != y.shape or np.any(x != y) for x, y in zip(a, b))


def tv_from_global(labels: np.ndarray, parts, num_classes: int) -> np.ndarray:
  """[K] total-variation distance of each client's label law from the global one."""
  h = partition.label_histograms(labels, parts, num_classes).astype(np.float64)
  q = h / h.sum(axis=1, keepdims=True)
  g = np.bincount(labels, minlength=num_classes) / labels.shape[0]
  return 0.5 * np.abs(q - g).sum(axis=1)


# Fixed, balanced data for the statistical checks: N = 10000, C = 10, K = 10, so an
# even split gives n_k = 1000 samples per client and n_c / K = 100 per (class, client).
N_STAT, C_STAT, K_STAT = 10_000, 10, 10
LABELS_STAT = np.random.default_rng(123).permutation(
    np.repeat(np.arange(C_STAT), N_STAT // C_STAT))


# ---------------------------------------------------------------- exact cover

@FAST
@given(labelled(), st.floats(1e-3, 1e3), seeds)
def test_dirichlet_covers_each_sample_once_and_is_deterministic(data, alpha, seed):
  labels, k = data
  # min_size=0: coverage must hold for every draw, not just the accepted ones.
  parts = partition.dirichlet(labels, k, alpha, seed=seed, min_size=0)
  assert len(parts) == k
  assert_exact_cover(parts, labels.shape[0])
  assert_same(parts, partition.dirichlet(labels, k, alpha, seed=seed, min_size=0))


@FAST
@given(labelled(), st.floats(1e-2, 1e2), st.integers(0, 5), seeds)
def test_dirichlet_respects_min_size_or_names_alpha(data, alpha, min_size, seed):
  labels, k = data
  if k * min_size > labels.shape[0]:
    with pytest.raises(ConfigError) as e:
      partition.dirichlet(labels, k, alpha, seed=seed, min_size=min_size)
    assert e.value.field == "num_clients"
    return
  try:
    parts = partition.dirichlet(labels, k, alpha, seed=seed, min_size=min_size,
                                max_retries=20)
  except ConfigError as e:
    assert e.field == "alpha"  # retries exhausted: the advice is about alpha
    return
  assert min(len(p) for p in parts) >= min_size
  assert_exact_cover(parts, labels.shape[0])


@FAST
@given(labelled(), st.integers(1, 4), seeds)
def test_shards_cover_each_sample_once_and_is_deterministic(data, spc, seed):
  labels, k = data
  n = labels.shape[0]
  if k * spc > n:
    spc = n // k
  parts = partition.shards(labels, k, spc, seed=seed)
  assert len(parts) == k
  assert_exact_cover(parts, n)
  assert_same(parts, partition.shards(labels, k, spc, seed=seed))
  # Each client holds spc shards of size floor(N/S) or ceil(N/S).
  s = k * spc
  sizes = np.array([len(p) for p in parts])
  assert np.all(sizes >= spc * (n // s)) and np.all(sizes <= spc * -(-n // s))


@FAST
@given(st.integers(1, 300), st.integers(1, 30), seeds)
def test_iid_covers_each_sample_once_and_is_deterministic(n, k, seed):
  k = min(k, n)
  parts = partition.iid(n, k, seed=seed)
  assert len(parts) == k
  assert_exact_cover(parts, n)
  assert max(map(len, parts)) - min(map(len, parts)) <= 1
  assert_same(parts, partition.iid(n, k, seed=seed))


@FAST
@given(st.lists(st.integers(0, 15), min_size=1, max_size=200))
def test_natural_one_client_per_group(ids):
  group_ids = np.array(ids)
  parts = partition.natural(group_ids)
  assert len(parts) == len(set(ids))
  assert_exact_cover(parts, group_ids.shape[0])
  firsts = [group_ids[p[0]] for p in parts]
  assert firsts == sorted(set(ids)), "one client per group, in group-id order"
  for p in parts:
    assert np.all(group_ids[p] == group_ids[p[0]])


@FAST
@given(st.lists(st.integers(0, 15), min_size=1, max_size=200), st.data(), seeds)
def test_natural_sampled_groups(ids, data, seed):
  group_ids = np.array(ids)
  num_groups = len(set(ids))
  k = data.draw(st.integers(1, num_groups))
  parts = partition.natural(group_ids, num_clients=k, seed=seed)
  assert len(parts) == k
  chosen = [group_ids[p[0]] for p in parts]
  assert len(set(chosen)) == k, "groups drawn without replacement"
  # Each chosen group's samples are all kept, and only they.
  flat = np.sort(np.concatenate(parts))
  np.testing.assert_array_equal(flat, np.flatnonzero(np.isin(group_ids, chosen)))
  assert_same(parts, partition.natural(group_ids, num_clients=k, seed=seed))


# ------------------------------------------------------------ seeds and RNG use

def _all_partitioners(seed):
  labels = LABELS_STAT[:500]
  return {
      "iid": partition.iid(500, 10, seed=seed),
      "dirichlet": partition.dirichlet(labels, 10, 0.5, seed=seed),
      "shards": partition.shards(labels, 10, 2, seed=seed),
      "natural": partition.natural(np.arange(500) % 50, num_clients=10, seed=seed),
  }


def test_different_seeds_differ():
  a, b = _all_partitioners(0), _all_partitioners(1)
  for name in a:
    assert differ(a[name], b[name]), name


def test_generator_seed_is_deterministic_and_global_rng_untouched():
  np.random.seed(0)
  before = np.random.get_state()[1].copy()
  a = _all_partitioners(np.random.default_rng(7))
  b = _all_partitioners(np.random.default_rng(7))
  for name in a:
    assert_same(a[name], b[name])
  np.testing.assert_array_equal(np.random.get_state()[1], before)


# --------------------------------------------------------------- skew statistics

def test_dirichlet_large_alpha_is_near_iid():
  alpha = 1e4
  parts = partition.dirichlet(LABELS_STAT, K_STAT, alpha, seed=0)
  tv = tv_from_global(LABELS_STAT, parts, C_STAT)
  # Dir(alpha 1_K) shares behave like binomial proportions with n_eff = K alpha + 1
  # trials: p_{c,k} has mean 1/K and sd sqrt((1/K)(1-1/K)/(K alpha+1)), i.e. relative
  # standard error r = sqrt((K-1)/(K alpha+1)) ~= 0.0095 here. Client k's frequency
  # of class c is ~ pi_c (1 + d_{c,k} - mean_c d_{c,k}) with d of sd r, so its
  # deviation from pi_c has sd <= sqrt(2) r pi_c. Allowing 4 sd on every class,
  # TV = 1/2 sum_c |q_{k,c} - pi_c| <= 2 sqrt(2) r ~= 0.027. Floor rounding moves each
  # count by < 1 sample, i.e. each q_{k,c} by < 2/n_k, adding < C/n_k = 0.01.
  # Total ~= 0.037, about the mean TV (~0.037) of a plain random (multinomial) split
  # of the same sizes, so every client must be at least as close to the global law
  # as a typical IID client; observed max is ~0.006.
  r = math.sqrt((K_STAT - 1) / (K_STAT * alpha + 1))
  n_min = min(len(p) for p in parts)
  tol = 2 * math.sqrt(2) * r + C_STAT / n_min
  assert tv.max() <= tol, (tv.max(), tol)


def test_dirichlet_small_alpha_is_skewed():
  alpha = 0.05
  parts = partition.dirichlet(LABELS_STAT, K_STAT, alpha, seed=0)
  tv = tv_from_global(LABELS_STAT, parts, C_STAT)
  # For Dir(alpha 1_K), E sum_k p_{c,k}^2 = (alpha+1)/(K alpha+1) = 0.7, so each class
  # effectively lands on ~1/0.7 ~= 1.4 clients; with K = C a client then holds ~1.4
  # classes' worth, and a client holding m whole classes has TV = 1 - m/C ~= 0.86.
  # An IID split sits at ~0.04 (see above), so a mean TV above 0.5 is unmistakable
  # skew while leaving room for the min_size conditioning (observed ~0.8).
  assert tv.mean() > 0.5, tv.mean()
  # Same story in counts: an IID client needs 9 of 10 classes to cover 90% of its
  # samples; here the average client needs at most 3 (observed ~2).
  h = partition.label_histograms(LABELS_STAT, parts, C_STAT).astype(np.float64)
  q = -np.sort(-h / h.sum(axis=1, keepdims=True), axis=1)
  classes_for_90 = (np.cumsum(q, axis=1) < 0.9 - 1e-12).sum(axis=1) + 1
  assert classes_for_90.mean() <= 3, classes_for_90


def test_dirichlet_skew_decreases_with_alpha():
  mean_tv = [
      tv_from_global(LABELS_STAT,
                     partition.dirichlet(LABELS_STAT, K_STAT, a, seed=0),
                     C_STAT).mean()
      for a in (0.1, 1.0, 100.0)
  ]
  # Observed ~0.68 > ~0.34 > ~0.04: gaps far larger than the seed-to-seed spread.
  assert mean_tv[0] > mean_tv[1] > mean_tv[2], mean_tv


def test_dirichlet_min_size_is_enforced_by_resampling():
  labels = np.random.default_rng(7).integers(0, 10, 1000)
  free = partition.dirichlet(labels, 20, 0.3, seed=0, min_size=0)
  # Without the constraint this seed's first draw leaves a client under 20 ...
  assert min(map(len, free)) < 20
  parts = partition.dirichlet(labels, 20, 0.3, seed=0, min_size=20)
  # ... and with it every client has at least 20.
  assert min(map(len, parts)) >= 20
  assert_exact_cover(parts, 1000)


def test_shards_aligned_with_classes_give_few_labels_per_client():
  # 10 balanced classes of 60, K=15, 2 shards each: S=30 shards of 20, so every
  # class is exactly 3 shards and no shard straddles a class boundary.
  labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 60))
  spc = 2
  parts = partition.shards(labels, 15, spc, seed=0)
  assert_exact_cover(parts, 600)
  hist = partition.label_histograms(labels, parts, 10)
  assert np.all((hist > 0).sum(axis=1) <= spc)
  assert np.all(hist % 20 == 0), "whole shards only"
  assert {len(p) for p in parts} == {40}


# ---------------------------------------------------------------- pad_clients

@FAST
@given(st.integers(1, 100), st.integers(1, 10), seeds)
def test_pad_clients_round_trip(n, k, seed):
  k = min(k, n)
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3, 2)).astype(np.float32)
  y = rng.integers(1, 5, size=n).astype(np.int32)  # nonzero, so padding shows
  parts = partition.dirichlet(y, k, 0.3, seed=seed, min_size=0)
  x_pad, y_pad, counts = partition.pad_clients(x, y, parts)
  n_max = max(len(p) for p in parts)
  assert x_pad.shape == (k, n_max, 3, 2) and x_pad.dtype == np.float32
  assert y_pad.shape == (k, n_max) and y_pad.dtype == np.int32
  assert counts.dtype == np.int32
  np.testing.assert_array_equal(counts, [len(p) for p in parts])
  for i, p in enumerate(parts):
    np.testing.assert_array_equal(x_pad[i, :counts[i]], x[p])
    np.testing.assert_array_equal(y_pad[i, :counts[i]], y[p])
    assert np.all(x_pad[i, counts[i]:] == 0) and np.all(y_pad[i, counts[i]:] == 0)


def test_pad_clients_empty_client():
  x = np.arange(6.0).reshape(3, 2)
  y = np.array([1, 2, 3])
  x_pad, y_pad, counts = partition.pad_clients(
      x, y, [np.array([2, 0]), np.array([], np.int64)])
  np.testing.assert_array_equal(counts, [2, 0])
  np.testing.assert_array_equal(x_pad, [[[4, 5], [0, 1]], [[0, 0], [0, 0]]])
  np.testing.assert_array_equal(y_pad, [[3, 1], [0, 0]])


def test_label_histograms_rows_sum_to_sizes():
  labels = np.array([0, 1, 1, 2, 2, 2])
  h = partition.label_histograms(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])],
                                 4)
  np.testing.assert_array_equal(h, [[1, 0, 1, 0], [0, 2, 2, 0]])


# ------------------------------------------------------------------- errors

LAB = np.repeat(np.arange(4), 5)  # N = 20


@pytest.mark.parametrize("call, field", [
    (lambda: partition.dirichlet(LAB, 0, 1.0, seed=0), "num_clients"),
    (lambda: partition.dirichlet(LAB, -3, 1.0, seed=0), "num_clients"),
    (lambda: partition.dirichlet(LAB, 2.5, 1.0, seed=0), "num_clients"),
    (lambda: partition.dirichlet(LAB, True, 1.0, seed=0), "num_clients"),
    (lambda: partition.dirichlet(LAB, 21, 1.0, seed=0), "num_clients"),
    (lambda: partition.dirichlet(LAB, 11, 1.0, seed=0, min_size=2), "num_clients"),
    (lambda: partition.dirichlet(LAB, 4, 0.0, seed=0), "alpha"),
    (lambda: partition.dirichlet(LAB, 4, -1.0, seed=0), "alpha"),
    (lambda: partition.dirichlet(LAB, 4, float("nan"), seed=0), "alpha"),
    (lambda: partition.dirichlet(LAB, 4, float("inf"), seed=0), "alpha"),
    # Feasible in count but hopeless in practice: retries run out.
    (lambda: partition.dirichlet(LAB, 10, 1e-3, seed=0, min_size=2), "alpha"),
    (lambda: partition.dirichlet(LAB, 4, 1.0, seed=None), "seed"),
    (lambda: partition.shards(LAB, 0, 2, seed=0), "num_clients"),
    (lambda: partition.shards(LAB, 21, 1, seed=0), "num_clients"),
    (lambda: partition.shards(LAB, 4, 0, seed=0), "shards_per_client"),
    (lambda: partition.shards(LAB, 4, -1, seed=0), "shards_per_client"),
    (lambda: partition.shards(LAB, 4, 6, seed=0), "shards_per_client"),
    (lambda: partition.iid(20, 0, seed=0), "num_clients"),
    (lambda: partition.iid(20, 21, seed=0), "num_clients"),
    (lambda: partition.natural(LAB, num_clients=0, seed=0), "num_clients"),
    (lambda: partition.natural(LAB, num_clients=5, seed=0), "num_clients"),
    (lambda: partition.natural(LAB, num_clients=2), "seed"),
    (lambda: partition.pad_clients(np.zeros((3, 2)), np.zeros(4), [np.arange(3)]),
     "y"),
    (lambda: partition.pad_clients(np.zeros(3), np.zeros(3), [np.array([3])]),
     "parts"),
    (lambda: partition.pad_clients(np.zeros(3), np.zeros(3), []), "parts"),
    (lambda: partition.label_histograms(LAB, [np.arange(20)], 3), "labels"),
])
def test_config_errors_name_the_field(call, field):
  with pytest.raises(ConfigError) as e:
    call()
  assert e.value.field == field, str(e.value)


def test_too_many_clients_message_states_the_bound():
  with pytest.raises(ConfigError, match=r"at most 20 \(the number of samples\)"):
    partition.dirichlet(LAB, 21, 1.0, seed=0)
