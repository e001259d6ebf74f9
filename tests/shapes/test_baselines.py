"""The global PCA and independent-parts baselines."""

import numpy as np
import pytest

from jaxfl.errors import ConfigError
from shapes import baselines, data, ssm


def test_global_pca_keeps_the_training_moments_and_blends_parts():
  s = data.generate("chair", 400, seed=0, points_per_part=24)
  g = baselines.fit_global_pca(s)
  x = baselines.shape_vectors(s.points, s.exists)
  # Every non-degenerate mode kept: projecting a training shape and back is exact.
  w = (x - g.mean) @ g.modes
  np.testing.assert_allclose(g.mean + w @ g.modes.T, x, atol=1e-9)
  pts, ex = baselines.sample_global_pca(g, 4000, seed=1)
  # Sample means of the existence channels: the training rates, within 4 standard errors.
  rates = s.exists.mean(0)
  assert np.all(np.abs(ex.mean(0) - rates) < 4 * np.sqrt(rates * (1 - rates) / 4000) + 0.05)
  assert (pts[~ex] == 0).all()
  # Directions without training variance stay fixed: every chair has a seat.
  assert ex[:, 0].all()


def test_independent_parts_keep_the_marginals_and_lose_the_rules():
  s = data.generate("chair", 400, seed=0, points_per_part=24)
  model = ssm.fit(s, num_modes=6)
  rates = s.exists.mean(0)
  pts, ex = baselines.sample_independent(model, rates, 4000, seed=2)
  assert np.all(np.abs(ex.mean(0) - rates) < 4 * np.sqrt(rates * (1 - rates) / 4000) + 1e-12)
  sampled = data.PartShapes("chair", s.labels, pts, ex, np.zeros((4000, 6), np.float32))
  # Two leg styles or none: 2 p (1 - p) with p(legs4) ~ 0.75, about 37%.
  bad = data.violations(sampled).mean()
  p = rates[2]
  assert bad > 2 * p * (1 - p) - 0.05
  with pytest.raises(ConfigError, match="rates"):
    baselines.sample_independent(model, rates[:2], 3, seed=0)
