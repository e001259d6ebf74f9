"""Part SSMs: degrees of freedom and the held-out round-trip floor."""

import numpy as np
import pytest

from shapes import data, ssm


def test_box_part_ssm_has_exactly_its_degrees_of_freedom():
  """A seat is linear in (width, thickness, depth, height): 4 modes explain everything."""
  s = data.generate("chair", 200, seed=0, points_per_part=48, jitter=0.0)
  curve = ssm.explained_variance_curve(s.points[:, 0].reshape(200, -1))
  assert curve[3] > 1 - 1e-9 and curve[2] < 0.9999


@pytest.mark.slow
def test_ssm_round_trip_error_is_the_jitter_floor():
  train = data.generate("table", 400, seed=0, points_per_part=48)
  test = data.generate("table", 100, seed=0, split="test", points_per_part=48)
  model = ssm.fit(train, num_modes=12)
  assert (model.explained > 0.98).all()
  for j in range(len(test.labels)):
    x = test.points[test.exists[:, j], j]
    rec = np.asarray(ssm.decode(model, ssm.encode(model, x, j), j))
    rmse = np.sqrt(((rec - x) ** 2).sum(-1).mean())
    # Jitter sigma 2 mm per axis gives sqrt(3) * 2 mm = 3.5 mm of irreducible error.
    assert rmse < 0.0045, (test.labels[j], rmse)
  # Whitened coefficients of the training parts: mean 0, unit variance per mode.
  v = np.asarray(ssm.encode(model, train.points[train.exists[:, 0], 0], 0))
  np.testing.assert_allclose(v.mean(0), 0, atol=1e-3)
  np.testing.assert_allclose(v.std(0, ddof=1)[model.std[0] > 0], 1, atol=1e-3)
