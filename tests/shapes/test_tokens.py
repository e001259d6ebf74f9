"""PRISM part tokens: label round trips, duplicates, ordered slots."""

import jax
import numpy as np
import pytest

from jaxfl.errors import ConfigError
from shapes import data, ssm, tokens


def test_token_layout_and_bad_fields():
  spec = tokens.TokenSpec(num_labels=5, num_modes=4, alpha=3.0)
  assert (spec.num_classes, spec.dim) == (6, 10)  # 5 labels + empty; 4 modes + 6 classes
  np.testing.assert_array_equal(spec.means(), 3.0 * np.eye(6))
  for kwargs, field in [(dict(num_labels=0), "num_labels"), (dict(num_modes=2.5), "num_modes"),
                        (dict(alpha=0.0), "alpha"), (dict(alpha=float("inf")), "alpha"),
                        (dict(sigma=-0.1), "sigma"), (dict(sigma=float("nan")), "sigma")]:
    with pytest.raises(ConfigError) as e:
      tokens.TokenSpec(**{"num_labels": 5, "num_modes": 4, **kwargs})
    assert e.value.field == field


@pytest.mark.slow
def test_token_labels_round_trip_and_duplicates_are_dropped():
  s = data.generate("chair", 200, seed=0, points_per_part=24)
  model = ssm.fit(s, num_modes=6)
  spec = tokens.TokenSpec(num_labels=5, num_modes=6)
  # 100 label-noise draws of each of the 200 shapes: 10^5 slots.
  points, exists = np.tile(s.points, (100, 1, 1, 1)), np.tile(s.exists, (100, 1))
  z = jax.jit(lambda p, e, k: tokens.encode(spec, model, p, e, k))(points, exists,
                                                                   jax.random.key(1))
  out = jax.jit(lambda z: tokens.decode(spec, model, z))(z)
  assert float(np.mean(np.asarray(out.exists) == exists)) >= 0.999
  assert int(out.duplicates.sum()) == 0
  # The slot order does not matter.
  flipped = tokens.decode(spec, model, z[:, ::-1])
  np.testing.assert_array_equal(flipped.points, out.points)
  # Two slots claiming the back: the one nearer the back's mean is kept.
  one = np.array(z[0])
  back = np.asarray(spec.means()[2])
  one[:, 6:] = np.asarray(spec.means()[0])  # all empty
  one[0, 6:], one[1, 6:] = back + 0.05, back + 0.2
  one[0, :6], one[1, :6] = 1.0, -1.0
  dec = tokens.decode(spec, model, one)
  assert dec.exists.tolist() == [False, True, False, False, False] and int(dec.duplicates) == 1
  np.testing.assert_allclose(dec.coeffs[1], 1.0)


@pytest.mark.slow
def test_ordered_tokens_round_trip_and_empty_slots():
  s = data.generate("chair", 40, seed=3, points_per_part=24)
  model = ssm.fit(s, num_modes=4)
  spec = tokens.TokenSpec(num_labels=5, num_modes=4, alpha=3.0)
  z = tokens.encode(spec, model, s.points, s.exists, jax.random.key(0), shuffle=False)
  out = tokens.decode(spec, model, z, ordered=True)
  assert (np.asarray(out.exists) == s.exists).all()
  coeffs = np.asarray(ssm.encode(model, s.points, np.arange(5)))
  np.testing.assert_array_equal(np.asarray(out.coeffs)[s.exists], coeffs[s.exists])
  # Ordered decoding only asks "own label or empty": slot 0 carrying label 3's mean is
  # equidistant from its own and the empty mean, so a small pull either way decides.
  z = np.array(z)
  z[0, 0, 4:] = 3.0 * np.eye(6)[3] + 0.1 * np.eye(6)[0]
  assert not bool(tokens.decode(spec, model, z, ordered=True).exists[0, 0])
  z[0, 0, 4:] = 3.0 * np.eye(6)[3] + 0.1 * np.eye(6)[1]
  assert bool(tokens.decode(spec, model, z, ordered=True).exists[0, 0])
