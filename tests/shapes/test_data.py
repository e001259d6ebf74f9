"""Procedural part shapes: determinism, structural rules, correspondences, the cache."""

import numpy as np
import pytest

from jaxfl.errors import ConfigError
from shapes import data


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
