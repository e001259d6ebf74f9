"""Procedural part shapes, part SSMs, part tokens and the generation metrics (PRISM)."""

import jax
import numpy as np
import pytest

from jaxfl.errors import ConfigError
from shapes import baselines, data, metrics, ssm, tokens


def test_generation_is_deterministic_and_seeded():
  a = data.generate("chair", 20, seed=3, points_per_part=48)
  b = data.generate("chair", 20, seed=3, points_per_part=48)
  c = data.generate("chair", 20, seed=4, points_per_part=48)
  t = data.generate("chair", 20, seed=3, split="test", points_per_part=48)
  assert np.array_equal(a.points, b.points) and np.array_equal(a.exists, b.exists)
  assert not np.array_equal(a.points, c.points) and not np.array_equal(a.points, t.points)


@pytest.mark.parametrize("category", sorted(data.CATEGORIES))
def test_rules_hold_and_existence_rates_match_the_design(category):
  s = data.generate(category, 2000, seed=0, points_per_part=24, jitter=0.0)
  assert not data.violations(s).any()
  rates = dict(zip(s.labels, s.exists.mean(axis=0), strict=True))
  design = {"chair": {"seat": 1.0, "back": 0.9, "legs4": 0.75, "pedestal": 0.25,
                      "arms": 0.9 * 0.35},
            "table": {"top": 1.0, "legs4": 0.7, "pedestal": 0.3, "shelf": 0.3},
            "lamp": {"base": 1.0, "pole": 1.0, "shade": 1.0, "arm": 0.4}}[category]
  for name, p in design.items():  # binomial: 4 standard errors at n = 2000
    assert abs(rates[name] - p) <= 4 * np.sqrt(p * (1 - p) / 2000) + 1e-12, name
  assert (s.points[~s.exists] == 0).all()


def test_parts_are_corresponded_and_correlated():
  s = data.generate("chair", 300, seed=0, points_per_part=48, jitter=0.0)
  # A seat is the template box scaled and moved: every point's x over shapes is
  # (template x) * width, the same template point in every shape.
  seat_x = s.points[:, 0, :, 0]  # [N, p]
  ratio = seat_x / s.attrs[:, :1]  # divide by the seat width
  assert np.allclose(ratio, ratio[0], atol=1e-5)
  w, wb = s.attrs[:, 0], s.attrs[:, 3]
  has_back = ~np.isnan(wb)
  assert np.corrcoef(w[has_back], wb[has_back])[0, 1] > 0.8


def test_load_caches_and_rejects_bad_input(tmp_path):
  a = data.load("lamp", "test", 10, seed=1, points_per_part=24, data_dir=str(tmp_path))
  files = list((tmp_path / "shapes").iterdir())
  assert len(files) == 1 and files[0].suffix == ".npz"
  b = data.load("lamp", "test", 10, seed=1, points_per_part=24, data_dir=str(tmp_path))
  assert np.array_equal(a.points, b.points) and b.labels == data.CATEGORIES["lamp"]
  for kwargs, field in ((dict(category="sofa"), "category"), (dict(split="val"), "split"),
                        (dict(num=0), "num"), (dict(points_per_part=8), "points_per_part")):
    args = dict(category="lamp", split="test", num=10) | kwargs
    with pytest.raises(ConfigError) as e:
      data.load(**args, data_dir=str(tmp_path))
    assert e.value.field == field


def test_pattern_tv_known_answer():
  a = np.array([[1, 0], [1, 1], [1, 1], [1, 0]], bool)
  assert data.pattern_tv(a, a) == 0.0
  assert data.pattern_tv(a, np.array([[1, 0]] * 4, bool)) == 0.5


def test_box_part_ssm_has_exactly_its_degrees_of_freedom():
  """A seat is linear in (width, thickness, depth, height): 4 modes explain everything."""
  s = data.generate("chair", 200, seed=0, points_per_part=48, jitter=0.0)
  curve = ssm.explained_variance_curve(s.points[:, 0].reshape(200, -1))
  assert curve[3] > 1 - 1e-9 and curve[2] < 0.9999


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


def test_one_nna_of_two_draws_of_the_same_generator_is_near_chance():
  a = data.generate("chair", 100, seed=0, split="test", points_per_part=64)
  b = data.generate("chair", 100, seed=1, split="test", points_per_part=64)
  ra = metrics.normalize(metrics.resample(a.points, a.exists, 128, seed=0))
  rb = metrics.normalize(metrics.resample(b.points, b.exists, 128, seed=1))
  d_aa, d_bb, d_ba = (np.asarray(metrics.pairwise_chamfer(x, y))
                      for x, y in ((ra, ra), (rb, rb), (rb, ra)))
  assert 0.35 <= metrics.one_nna(d_aa, d_ba.T, d_bb) <= 0.65  # the digest's check, N = 100
  assert metrics.coverage(d_aa) == 1.0 and metrics.mmd(d_aa) == 0.0
  assert metrics.one_nna(d_aa, np.asarray(metrics.pairwise_chamfer(ra, rb + 0.5)), d_bb) == 1.0


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
