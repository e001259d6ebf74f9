"""The Air-FedGA grouping planner: partitions, constraints, and what each term buys."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfl.errors import ConfigError
from jaxfl.planners import grouping

TIERS = np.repeat([1.0, 2.0, 4.0, 8.0], 5)  # the quick config's 20 workers


def assert_partition(groups, n):
  assert sorted(np.concatenate(groups).tolist()) == list(range(n))  # each worker exactly once
  assert all(len(g) > 0 for g in groups)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, n), st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n),
    st.integers(0, 2**31 - 1))))
def test_speed_sorted_and_random_groups_partition_the_workers(args):
  n, m, times, seed = args
  times = np.asarray(times)
  for groups in (grouping.speed_sorted(times, m),
                 grouping.random_groups(n, m, np.random.default_rng(seed))):
    assert len(groups) == m
    assert_partition(groups, n)
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1  # near-equal sizes
  # Speed-sorted groups are contiguous in speed: every member of an earlier group is at
  # most as slow as every member of a later one.
  sorted_groups = grouping.speed_sorted(times, m)
  for a, b in zip(sorted_groups, sorted_groups[1:]):
    assert times[a].max() <= times[b].min()


def test_speed_sorted_groups_waste_half_the_idle_time_of_random_ones():
  sorted_idle = grouping.idle_time(grouping.speed_sorted(TIERS, 4), TIERS)
  assert sorted_idle == 0.0  # each tier is one group
  rng = np.random.default_rng(0)
  random_idle = np.mean([grouping.idle_time(grouping.random_groups(20, 4, rng), TIERS)
                         for _ in range(200)])
  assert random_idle > 30.0  # a random group of 5 nearly always holds a tier-8 worker


def test_label_divergence_is_zero_for_identical_groups_and_positive_for_skewed():
  hist = np.array([[5, 5], [5, 5], [10, 0], [0, 10]], float)
  assert grouping.label_divergence([np.array([0]), np.array([1])], hist[:2]) == 0.0
  assert grouping.label_divergence([np.array([0, 1]), np.array([2, 3])], hist) == 0.0
  skewed = grouping.label_divergence([np.array([0, 2]), np.array([1, 3])], hist)
  p = np.array([0.75, 0.25])  # each group's labels against the population's (0.5, 0.5)
  assert skewed == pytest.approx(2 * np.sum(p * np.log(p / 0.5)))


def test_members_array_pads_with_minus_one():
  out = grouping.members_array([np.array([3, 1]), np.array([0])], 3, 4)
  assert out.tolist() == [[3, 1, -1, -1], [0, -1, -1, -1], [-1, -1, -1, -1]]
  with pytest.raises(ConfigError, match="groups"):
    grouping.members_array([np.arange(5)], 2, 4)


@pytest.fixture(scope="module")
def plan():
  rng = np.random.default_rng(0)
  path_gain = rng.uniform(0.2, 1.0, 20)
  counts = rng.integers(40, 100, 20).astype(float)
  hist = rng.multinomial(60, np.ones(10) / 10, size=20).astype(float)
  return grouping.plan_groups(TIERS, path_gain, counts, hist, candidates=(1, 2, 4, 5),
                              noise_var=0.1, comm_time=0.2, draws=32, seed=0)


def test_plan_partitions_the_workers_and_scores_every_candidate(plan):
  assert_partition(plan.groups, 20)
  assert set(plan.estimated_time) == set(plan.objective) == {1, 2, 4, 5}
  assert len(plan.groups) == min(plan.estimated_time, key=plan.estimated_time.get)
  # Local search starts at J = 3 (each term relative to the speed-sorted start) and only
  # accepts swaps that lower it.
  assert all(0 < j <= 3.0 + 1e-9 for j in plan.objective.values())
  # One group: nothing to swap, and its labels are the population's (KL term 0).
  assert plan.objective[1] == pytest.approx(2.0)


def test_plan_is_deterministic(plan):
  rng = np.random.default_rng(0)
  path_gain = rng.uniform(0.2, 1.0, 20)
  counts = rng.integers(40, 100, 20).astype(float)
  hist = rng.multinomial(60, np.ones(10) / 10, size=20).astype(float)
  again = grouping.plan_groups(TIERS, path_gain, counts, hist, candidates=(1, 2, 4, 5),
                               noise_var=0.1, comm_time=0.2, draws=32, seed=0)
  assert [g.tolist() for g in again.groups] == [g.tolist() for g in plan.groups]


def test_with_only_idle_time_weighted_the_plan_keeps_the_tiers():
  rng = np.random.default_rng(1)
  plan = grouping.plan_groups(TIERS, rng.uniform(0.2, 1.0, 20), np.full(20, 50.0),
                              rng.multinomial(50, np.ones(10) / 10, size=20).astype(float),
                              candidates=(4,), noise_var=0.1, weights=(1.0, 0.0, 0.0), draws=8)
  assert [sorted(g.tolist()) for g in plan.groups] == [list(range(i, i + 5))
                                                       for i in range(0, 20, 5)]


def test_expected_mse_of_a_single_member_is_the_optimal_single_user_mse():
  # One member with weight 1: the optimal policy sends at full power with
  # eta = ((sigma^2 + Q) / sqrt(Q))^2, so MSE = sigma^2 / (sigma^2 + Q) for each draw.
  gains = np.array([[0.5, 9.0], [2.0, 9.0], [1.0, 9.0]])
  got = grouping.expected_mse(np.array([0]), np.array([10.0, 10.0]), gains, np.ones(2), 0.1)
  assert got == pytest.approx(np.mean(0.1 / (0.1 + gains[:, 0])), rel=1e-5)


def test_bad_group_counts_name_the_field():
  with pytest.raises(ConfigError, match="num_groups"):
    grouping.speed_sorted(TIERS, 0)
  with pytest.raises(ConfigError, match="num_groups"):
    grouping.random_groups(3, 4, np.random.default_rng(0))
  with pytest.raises(ConfigError, match="candidates"):
    grouping.plan_groups(TIERS, np.ones(20), np.ones(20), np.ones([20, 2]), candidates=(),
                         noise_var=0.1)
