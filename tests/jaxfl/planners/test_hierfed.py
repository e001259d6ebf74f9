"""HierFedLoRA's plan (reconstruction, arXiv 2503.21213): near-IID groups, then each
group's intra-group aggregation frequency and fine-tuning depth under the round budget."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfl.errors import ConfigError
from jaxfl.planners import grouping
from jaxfl.planners.hierfed import (
    frequency_and_depth,
    group_divergences,
    mix_divergence,
    near_iid_groups,
)


def skewed(rng, n, c, alpha=0.1):
  """Devices holding Dirichlet(alpha)-skewed mixes of c classes, 20-200 samples each."""
  p = rng.dirichlet(np.full(c, alpha), size=n)
  return np.stack([rng.multinomial(m, q) for m, q in zip(rng.integers(20, 200, n), p)])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 24), g=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_every_device_is_in_exactly_one_group_and_sizes_differ_by_at_most_one(n, g, seed):
  g = min(g, n)
  hist = skewed(np.random.default_rng(seed), n, 5)
  groups = near_iid_groups(hist, g)
  assert len(groups) == g
  assert sorted(np.concatenate(groups).tolist()) == list(range(n))
  sizes = [len(x) for x in groups]
  assert max(sizes) - min(sizes) <= 1


def test_greedy_groups_are_at_most_half_as_divergent_as_random_ones():
  """Seeded: 20 devices over 6 classes, 4 groups; random groupings averaged over 50 draws."""
  for seed in range(5):
    rng = np.random.default_rng(seed)
    hist = skewed(rng, 20, 6)
    greedy = mix_divergence(near_iid_groups(hist, 4), hist)
    random = np.mean([mix_divergence(grouping.random_groups(20, 4, rng), hist)
                      for _ in range(50)])
    assert greedy <= 0.5 * random, (seed, greedy, random)


def test_a_perfectly_splittable_population_gets_zero_divergence():
  hist = np.array([[10, 0, 0], [0, 10, 0], [0, 0, 10]] * 2)
  groups = near_iid_groups(hist, 2)
  np.testing.assert_allclose(group_divergences(groups, hist), 0.0, atol=1e-12)
  assert mix_divergence([np.arange(3), np.arange(3, 6)], hist) == pytest.approx(0.0)
  assert mix_divergence([np.array([0, 3]), np.array([1, 2, 4, 5])], hist) > 0.3


def test_ties_go_to_the_group_of_the_closest_speed():
  hist = np.array([[5, 5]] * 4)  # every device the population's mix: only speed decides
  groups = near_iid_groups(hist, 2, speed=np.array([1.0, 1.0, 9.0, 9.0]))
  assert [g.tolist() for g in groups] == [[0, 1], [2, 3]]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.floats(2.0, 50.0))
def test_each_group_runs_its_frequency_at_its_depth_within_the_budget(seed, budget):
  rng = np.random.default_rng(seed)
  n, layers = 12, 6
  speed = rng.uniform(0.5, 2.0, n)
  step_time = (1.0 + np.arange(layers))[None, :] / speed[:, None]  # deeper: slower
  hist = skewed(rng, n, 4)
  groups = near_iid_groups(hist, 3, speed)
  plan = frequency_and_depth(groups, step_time, group_divergences(groups, hist), budget)
  for g, f, d in zip(groups, plan.frequency, plan.depth):
    assert 1 <= f <= 8 and 1 <= d <= layers
    assert f * step_time[g, d - 1].max() <= budget + 1e-9
  assert plan.round_time <= budget + 1e-9


def test_a_near_iid_group_aggregates_more_often_than_a_skewed_one():
  step_time = np.tile(np.arange(1.0, 5.0), (4, 1))  # 4 devices, 4 depths, equal speed
  groups = [np.array([0, 1]), np.array([2, 3])]
  plan = frequency_and_depth(groups, step_time, [0.0, 5.0], budget=8.0, kappa=1.0)
  assert plan.frequency[0] > plan.frequency[1]
  # Known answers (kappa = 1, t(d) = d, budget 8): the IID group's utility is
  # (1 - e^-d) f with f <= 8 / d, so (1 - e^-1) 8 = 5.06 beats (1 - e^-2) 4 = 3.46; the
  # skewed group's drift penalty 1 + 5 (f - 1) leaves one round at the deepest depth (0.98).
  assert (plan.frequency[0], plan.depth[0]) == (8, 1)
  assert (plan.frequency[1], plan.depth[1]) == (1, 4)
  assert plan.round_time == 8.0


@pytest.mark.parametrize("call,field", [
    (lambda: near_iid_groups([[1, 2], [3, 4]], 3), "num_groups"),
    (lambda: near_iid_groups([[1, 2], [3, 4]], 0), "num_groups"),
    (lambda: near_iid_groups([[0, 0], [3, 4]], 1), "hist"),
    (lambda: near_iid_groups([[1, 2], [3, 4]], 1, speed=[1.0]), "speed"),
    (lambda: frequency_and_depth([np.array([0])], [[5.0, 6.0]], [0.0], budget=4.0), "budget"),
    (lambda: frequency_and_depth([np.array([0])], [[5.0, 6.0]], [0.0], budget=9.0,
                                 max_frequency=0), "max_frequency"),
    (lambda: frequency_and_depth([np.array([0])], [[0.0, 6.0]], [0.0], budget=9.0),
     "step_time"),
])
def test_bad_input_names_the_field(call, field):
  with pytest.raises(ConfigError, match=f"^{field}: expected"):
    call()
