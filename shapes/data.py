"""Procedural part-based shapes: chairs, tables and lamps as labelled part point sets.

Every part is sampled at **fixed template points** of a primitive (box surface, cylinder
side and caps, frustum), mapped by the part's parameters, so point ``i`` of a part label is
the same template point in every shape: correspondences within a label are exact by
construction (PRISM, arXiv 2504.04454, builds its part SSMs on corresponded part points,
which it obtains with a learned correspondence model; here none is needed). A part set
with several instances (four legs, two arms) splits its points evenly among them.

Categories and part labels (a procedural stand-in, this project's design: PRISM's own data,
arXiv 2504.04454, is PartNet-segmented ShapeNet), with the correlations and rules a joint
model has to learn:

* **chair**: ``seat``; ``back`` (p = 0.9, width tied to the seat's, tilted back);
  ``legs4`` (p = 0.75) or else ``pedestal``; ``arms`` (p = 0.35, only with a back, length
  tied to the seat depth).
* **table**: ``top``; ``legs4`` (p = 0.7) or else ``pedestal``; ``shelf`` (p = 0.3, sized
  from the top, only with four legs).
* **lamp**: ``base``; ``pole``; ``shade``; ``arm`` (p = 0.4: a horizontal arm that moves the
  shade sideways, so the shade's position depends on the arm's presence and length).

Frame: y up, z front, metres; the floor is y = 0. Points get Gaussian jitter
(``jitter``, default 2 mm) after sampling. Shapes are deterministic given ``(category,
split, seed)`` (``numpy.random.default_rng``) and cached as ``.npz`` under
``<data_dir>/shapes/`` (``data_dir``: ``$JAXFL_DATA_DIR`` or ``~/.cache/jaxfl/tfds``).

Examples:
  >>> s = generate("chair", 3, seed=0, points_per_part=64)
  >>> s.labels
  ('seat', 'back', 'legs4', 'pedestal', 'arms')
  >>> s.points.shape, s.exists.shape
  ((3, 5, 64, 3), (3, 5))
  >>> bool(np.all(s.exists[:, 0])), int(violations(s).sum())
  (True, 0)
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import NamedTuple

import numpy as np

from jaxfl.errors import ConfigError

#: Part labels per category, in slot order.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "chair": ("seat", "back", "legs4", "pedestal", "arms"),
    "table": ("top", "legs4", "pedestal", "shelf"),
    "lamp": ("base", "pole", "shade", "arm"),
}
SPLITS = ("train", "test")
#: Bumped whenever generation changes, so stale caches are never read.
VERSION = 1
#: Templates are drawn once from this fixed seed (they define the correspondences).
TEMPLATE_SEED = 20250404


class PartShapes(NamedTuple):
  """A batch of part-based shapes of one category.

  Attributes:
    category: the category name.
    labels: part labels, one slot each.
    points: float32 ``[N, m, p, 3]``: slot ``j``'s ``p`` corresponded points (zeros when
      the part is absent).
    exists: bool ``[N, m]``: which parts each shape has.
    attrs: float32 ``[N, A]`` generating parameters (named by :data:`ATTRS`), for
      correlation checks; NaN where the part is absent.
  """

  category: str
  labels: tuple[str, ...]
  points: np.ndarray
  exists: np.ndarray
  attrs: np.ndarray

  def __len__(self) -> int:
    return self.points.shape[0]

  def point_cloud(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape ``i``'s existing points ``[n, 3]`` and their part labels ``[n]`` (slot ids)."""
    keep = self.exists[i]
    pts = self.points[i][keep]
    lab = np.repeat(np.flatnonzero(keep), pts.shape[1])
    return pts.reshape(-1, 3), lab


#: Generating parameters recorded per shape.
ATTRS: dict[str, tuple[str, ...]] = {
    "chair": ("seat_width", "seat_depth", "seat_height", "back_width", "back_height",
              "arm_length"),
    "table": ("top_width", "top_depth", "top_height", "shelf_height"),
    "lamp": ("base_radius", "pole_height", "shade_radius", "arm_length"),
}


# ----------------------------------------------------------------------------- templates


def _template_rng(name: str) -> np.random.Generator:
  return np.random.default_rng([TEMPLATE_SEED, int(hashlib.sha256(name.encode()).hexdigest()[:8],
                                                   16)])


@functools.lru_cache(maxsize=64)
def box_template(n: int) -> np.ndarray:
  """``[n, 3]`` points on the surface of the unit cube ``[-0.5, 0.5]^3``: equal counts per
  face (the remainder on the first faces), uniform within a face."""
  rng = _template_rng(f"box{n}")
  out = []
  for f in range(6):
    k = n // 6 + (f < n % 6)
    uv = rng.uniform(-0.5, 0.5, (k, 2))
    axis, side = divmod(f, 2)
    face = np.insert(uv, axis, side - 0.5, axis=1)
    out.append(face)
  return _frozen(np.concatenate(out))


@functools.lru_cache(maxsize=64)
def cylinder_template(n: int, caps: bool = True) -> np.ndarray:
  """``[n, 3]`` points ``(cos θ, h, sin θ)`` on a unit-radius cylinder, ``h ∈ [0, 1]`` (y
  up): two thirds on the side, the rest on the two caps (radius in the unit disc)."""
  rng = _template_rng(f"cyl{n}{caps}")
  n_side = n if not caps else n - 2 * (n // 6)
  theta = rng.uniform(0, 2 * np.pi, n_side)
  side = np.stack([np.cos(theta), rng.uniform(0, 1, n_side), np.sin(theta)], axis=1)
  if not caps:
    return _frozen(side)
  parts = [side]
  for h in (0.0, 1.0):
    k = n // 6
    r = np.sqrt(rng.uniform(0, 1, k))
    t = rng.uniform(0, 2 * np.pi, k)
    parts.append(np.stack([r * np.cos(t), np.full(k, h), r * np.sin(t)], axis=1))
  return _frozen(np.concatenate(parts))


def _frozen(a: np.ndarray) -> np.ndarray:
  """Templates are cached and shared: read-only, so no caller can change them."""
  a.setflags(write=False)
  return a


def place_box(template, center, size, tilt: float = 0.0, pivot=None) -> np.ndarray:
  """The template box scaled to ``size``, rotated by ``tilt`` radians about the x axis
  through ``pivot`` (default: its centre) and moved to ``center``."""
  p = template * np.asarray(size) + np.asarray(center)
  if tilt:
    pivot = np.asarray(center if pivot is None else pivot)
    c, s = np.cos(tilt), np.sin(tilt)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    p = (p - pivot) @ rot.T + pivot
  return p


def place_cylinder(template, base_center, radius_bottom, height, radius_top=None,
                   axis: str = "y") -> np.ndarray:
  """The template cylinder (a frustum when ``radius_top`` differs) from ``base_center``,
  along +y or +x."""
  radius_top = radius_bottom if radius_top is None else radius_top
  h = template[:, 1]
  r = radius_bottom + (radius_top - radius_bottom) * h
  local = np.stack([template[:, 0] * r, h * height, template[:, 2] * r], axis=1)
  if axis == "x":
    local = local[:, [1, 0, 2]]
  return local + np.asarray(base_center)


# ----------------------------------------------------------------------------- categories


def _split(n: int, k: int) -> list[int]:
  return [n // k + (i < n % k) for i in range(k)]


def _chair(rng, p: int):
  parts = {}
  w, d = rng.uniform(0.40, 0.60), rng.uniform(0.38, 0.55)
  t, h = rng.uniform(0.03, 0.07), rng.uniform(0.40, 0.50)
  parts["seat"] = place_box(box_template(p), (0, h - t / 2, 0), (w, t, d))
  has_back = rng.uniform() < 0.9
  wb = hb = arm_len = np.nan
  if has_back:
    wb, hb, tb = w * rng.uniform(0.85, 1.0), rng.uniform(0.30, 0.55), rng.uniform(0.03, 0.05)
    tilt = np.deg2rad(rng.uniform(0, 18))
    center = (0, h + hb / 2, -d / 2 + tb / 2)
    parts["back"] = place_box(box_template(p), center, (wb, hb, tb), tilt=-tilt,
                              pivot=(0, h, -d / 2 + tb / 2))
  if rng.uniform() < 0.75:
    r, inset = rng.uniform(0.015, 0.035), rng.uniform(0.02, 0.06)
    legs = []
    for k, (sx, sz) in zip(_split(p, 4), ((-1, -1), (1, -1), (-1, 1), (1, 1)), strict=True):
      x, z = sx * (w / 2 - inset - r), sz * (d / 2 - inset - r)
      legs.append(place_box(box_template(k), (x, (h - t) / 2, z), (2 * r, h - t, 2 * r)))
    parts["legs4"] = np.concatenate(legs)
  else:
    rc, rb = rng.uniform(0.025, 0.05), rng.uniform(0.18, 0.28)
    k1, k2 = _split(p, 2)
    disc = place_cylinder(cylinder_template(k2), (0, 0, 0), rb, 0.02)
    column = place_cylinder(cylinder_template(k1, caps=False), (0, 0.02, 0), rc, h - t - 0.02)
    parts["pedestal"] = np.concatenate([column, disc])
  if has_back and rng.uniform() < 0.35:
    ha, arm_len = rng.uniform(0.15, 0.25), d * rng.uniform(0.7, 1.0)
    arms = [place_box(box_template(k), (sx * w / 2, h + ha, -d / 2 + arm_len / 2),
                      (0.04, 0.04, arm_len)) for k, sx in zip(_split(p, 2), (-1, 1), strict=True)]
    parts["arms"] = np.concatenate(arms)
  return parts, (w, d, h, wb, hb, arm_len)


def _table(rng, p: int):
  parts = {}
  w, d = rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.9)
  t, h = rng.uniform(0.03, 0.06), rng.uniform(0.65, 0.78)
  parts["top"] = place_box(box_template(p), (0, h - t / 2, 0), (w, t, d))
  shelf_h = np.nan
  if rng.uniform() < 0.7:
    r, inset = rng.uniform(0.02, 0.04), rng.uniform(0.03, 0.08)
    legs = []
    for k, (sx, sz) in zip(_split(p, 4), ((-1, -1), (1, -1), (-1, 1), (1, 1)), strict=True):
      x, z = sx * (w / 2 - inset - r), sz * (d / 2 - inset - r)
      legs.append(place_box(box_template(k), (x, (h - t) / 2, z), (2 * r, h - t, 2 * r)))
    parts["legs4"] = np.concatenate(legs)
    if rng.uniform() < 0.3 / 0.7:  # a shelf needs legs to rest on: p(shelf) = 0.3 overall
      shelf_h = h * rng.uniform(0.2, 0.35)
      scale = rng.uniform(0.7, 0.9)
      parts["shelf"] = place_box(box_template(p), (0, shelf_h, 0), (w * scale, 0.02, d * scale))
  else:
    rc, rb = rng.uniform(0.04, 0.08), rng.uniform(0.25, 0.4)
    k1, k2 = _split(p, 2)
    disc = place_cylinder(cylinder_template(k2), (0, 0, 0), rb, 0.03)
    column = place_cylinder(cylinder_template(k1, caps=False), (0, 0.03, 0), rc, h - t - 0.03)
    parts["pedestal"] = np.concatenate([column, disc])
  return parts, (w, d, h, shelf_h)


def _lamp(rng, p: int):
  parts = {}
  rb, tb = rng.uniform(0.08, 0.15), rng.uniform(0.02, 0.04)
  parts["base"] = place_cylinder(cylinder_template(p), (0, 0, 0), rb, tb)
  hp, rp = rng.uniform(0.3, 0.6), rng.uniform(0.01, 0.02)
  parts["pole"] = place_cylinder(cylinder_template(p, caps=False), (0, tb, 0), rp, hp)
  top = tb + hp
  arm_len = np.nan
  x_shade = 0.0
  if rng.uniform() < 0.4:
    arm_len = rng.uniform(0.1, 0.25)
    parts["arm"] = place_cylinder(cylinder_template(p, caps=False), (0, top - 0.02, 0), 0.012,
                                  arm_len, axis="x")
    x_shade = arm_len
  rs_bot, hs = rng.uniform(0.1, 0.2), rng.uniform(0.1, 0.2)
  rs_top = rs_bot * rng.uniform(0.4, 0.7)
  # With an arm the shade hangs from its end; without, it sits on the pole.
  y_shade = top - hs if x_shade else top - 0.3 * hs
  parts["shade"] = place_cylinder(cylinder_template(p, caps=False), (x_shade, y_shade, 0), rs_bot,
                                  hs, radius_top=rs_top)
  return parts, (rb, hp, rs_bot, arm_len)


_MAKERS = {"chair": _chair, "table": _table, "lamp": _lamp}


def _check(category: str, num: int, points_per_part: int) -> None:
  if category not in CATEGORIES:
    raise ConfigError("category", f"one of {sorted(CATEGORIES)}", category)
  if not (isinstance(num, int) and num > 0):
    raise ConfigError("num", "a positive integer", num)
  if not (isinstance(points_per_part, int) and points_per_part >= 24):
    raise ConfigError("points_per_part", "an integer >= 24 (4 instances x 6 box faces)",
                      points_per_part)


def generate(category: str, num: int, *, seed: int, split: str = "train",
             points_per_part: int = 256, jitter: float = 0.002) -> PartShapes:
  """``num`` shapes of ``category``, deterministic in ``(seed, split)``."""
  _check(category, num, points_per_part)
  if split not in SPLITS:
    raise ConfigError("split", f"one of {SPLITS}", split)
  labels = CATEGORIES[category]
  rng = np.random.default_rng([seed, SPLITS.index(split), sorted(CATEGORIES).index(category)])
  m, p = len(labels), points_per_part
  points = np.zeros((num, m, p, 3), np.float32)
  exists = np.zeros((num, m), bool)
  attrs = np.zeros((num, len(ATTRS[category])), np.float32)
  for i in range(num):
    parts, values = _MAKERS[category](rng, p)
    for j, name in enumerate(labels):
      if name in parts:
        pts = parts[name] + rng.normal(0.0, jitter, parts[name].shape) if jitter else parts[name]
        points[i, j] = pts
        exists[i, j] = True
    attrs[i] = values
  return PartShapes(category, labels, points, exists, attrs)


def violations(shapes: PartShapes) -> np.ndarray:
  """bool ``[N]``: shapes that break their category's structural rules (a required part
  missing, two leg styles or none, arms without a back, a shelf without four legs)."""
  e = {name: shapes.exists[:, j] for j, name in enumerate(shapes.labels)}
  if shapes.category == "chair":
    bad = ~e["seat"] | (e["legs4"] == e["pedestal"]) | (e["arms"] & ~e["back"])
  elif shapes.category == "table":
    bad = ~e["top"] | (e["legs4"] == e["pedestal"]) | (e["shelf"] & ~e["legs4"])
  else:
    bad = ~e["base"] | ~e["pole"] | ~e["shade"]
  return bad


def existence_patterns(exists: np.ndarray) -> np.ndarray:
  """int ``[N]``: each shape's part-existence pattern as a bit mask (slot ``j`` = bit ``j``)."""
  return (np.asarray(exists, np.int64) << np.arange(exists.shape[1])).sum(axis=1)


def pattern_tv(a: np.ndarray, b: np.ndarray) -> float:
  """Total variation distance between the existence-pattern distributions of two sets of
  shapes (``exists`` arrays): :math:`\\frac12 \\sum_s |P_a(s) - P_b(s)|`.

  >>> pattern_tv(np.array([[1, 0], [1, 1]], bool), np.array([[1, 0], [1, 0]], bool))
  0.5
  """
  pa, pb = existence_patterns(a), existence_patterns(b)
  keys = np.union1d(pa, pb)
  fa = np.array([np.mean(pa == k) for k in keys])
  fb = np.array([np.mean(pb == k) for k in keys])
  return float(0.5 * np.abs(fa - fb).sum())


# ----------------------------------------------------------------------------- cache


def default_data_dir() -> str:
  return os.environ.get("JAXFL_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "jaxfl", "tfds")


def load(category: str, split: str, num: int, *, seed: int = 0, points_per_part: int = 256,
         jitter: float = 0.002, data_dir: str | None = None) -> PartShapes:
  """:func:`generate`'s shapes, cached as ``<data_dir>/shapes/<key>.npz`` (written
  atomically; the key covers every argument and :data:`VERSION`)."""
  _check(category, num, points_per_part)
  if split not in SPLITS:
    raise ConfigError("split", f"one of {SPLITS}", split)
  root = os.path.join(data_dir or default_data_dir(), "shapes")
  key = f"v{VERSION}-{category}-{split}-n{num}-s{seed}-p{points_per_part}-j{jitter:g}"
  path = os.path.join(root, key + ".npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return PartShapes(category, CATEGORIES[category], f["points"], f["exists"], f["attrs"])
  shapes = generate(category, num, seed=seed, split=split, points_per_part=points_per_part,
                    jitter=jitter)
  try:
    os.makedirs(root, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, points=shapes.points, exists=shapes.exists, attrs=shapes.attrs)
    os.replace(tmp, path)
  except OSError as e:
    raise ConfigError("data_dir", "a directory that can be created and written",
                      data_dir) from e
  return shapes
