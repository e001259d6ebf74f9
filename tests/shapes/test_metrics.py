"""Chamfer, EMD, MMD, COV and 1-NNA: known answers and a seeded chance check."""

import numpy as np
import pytest

from shapes import data, metrics


def test_chamfer_and_emd_known_answers():
  x = np.array([[0.0, 0, 0]])
  y = np.array([[1.0, 0, 0], [0, 2, 0]])
  assert float(metrics.chamfer(x, y)) == pytest.approx(1.0 + (1 + 4) / 2)
  a = np.array([[0.0, 0, 0], [1, 0, 0]])
  b = np.array([[1.0, 0, 1], [0, 0, 1]])  # matched straight up: distance 1 each
  assert metrics.emd(a, b) == pytest.approx(1.0)
  assert metrics.emd(a, a) == 0.0


def test_coverage_mmd_and_one_nna_on_known_matrices():
  d = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])  # 3 samples x 2 references
  assert metrics.coverage(d) == 0.5 and metrics.mmd(d) == pytest.approx((0.1 + 0.7) / 2)
  # Two tight clusters far apart: every cloud's nearest neighbour is in its own set.
  near = np.array([[0.0, 1.0], [1.0, 0.0]])
  assert metrics.one_nna(near, np.full((2, 2), 9.0), near) == 1.0


@pytest.mark.slow
def test_one_nna_of_two_draws_of_the_same_generator_is_near_chance():
  a = data.generate("chair", 100, seed=0, split="test", points_per_part=64)
  b = data.generate("chair", 100, seed=1, split="test", points_per_part=64)
  ra = metrics.normalize(metrics.resample(a.points, a.exists, 128, seed=0))
  rb = metrics.normalize(metrics.resample(b.points, b.exists, 128, seed=1))
  d_aa, d_bb, d_ba = (np.asarray(metrics.pairwise_chamfer(x, y))
                      for x, y in ((ra, ra), (rb, rb), (rb, ra)))
  assert 0.35 <= metrics.one_nna(d_aa, d_ba.T, d_bb) <= 0.65  # two draws of one generator, N = 100
  assert metrics.coverage(d_aa) == 1.0 and metrics.mmd(d_aa) == 0.0
  assert metrics.one_nna(d_aa, np.asarray(metrics.pairwise_chamfer(ra, rb + 0.5)), d_bb) == 1.0
