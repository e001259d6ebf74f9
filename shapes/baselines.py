"""Baselines for part-based shape generation (the comparisons PRISM's claims are made against).

* **Global PCA** (no parts): one linear Gaussian model over whole shapes. A shape is the
  concatenation of its slots' points in label order, absent parts zero-filled, plus a 0/1
  existence channel per label; PCA on those vectors, samples
  :math:`x = \\mu + Q \\Lambda^{1/2} w`, :math:`w \\sim \\mathcal N(0, I)`, a part exists
  when its channel exceeds 0.5. A linear model blends the zero-filled "absent" geometry
  with real parts (ghost and shrunken parts): what a part-aware representation avoids.
* **Independent parts** (no joint model): each part exists with its training frequency,
  independently of the others, and its geometry is drawn from its own SSM,
  :math:`v \\sim \\mathcal N(0, I)` (:mod:`shapes.ssm`). Parts look right; their
  co-occurrence and correlations (back width against seat width, arms only with a back)
  are lost.

Both are this project's choice of baseline (assumed; PRISM's own baselines, arXiv
2504.04454, are other published generators).

Examples:
  >>> from shapes import data
  >>> s = data.generate("table", 300, seed=0, points_per_part=24)
  >>> g = fit_global_pca(s)
  >>> pts, ex = sample_global_pca(g, 5, seed=0)
  >>> pts.shape, ex.shape
  ((5, 4, 24, 3), (5, 4))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfl.errors import ConfigError
from shapes import ssm as ssm_lib


class GlobalPCA(NamedTuple):
  """PCA of flattened shapes ``[m * p * 3 + m]`` (points then existence channels)."""

  mean: np.ndarray
  modes: np.ndarray  # [D, r]
  std: np.ndarray  # [r]
  num_labels: int
  points_per_part: int


def shape_vectors(points, exists) -> np.ndarray:
  """``[N, m p 3 + m]``: zero-filled points in label order, then the existence channels."""
  points, exists = np.asarray(points, np.float64), np.asarray(exists, bool)
  flat = np.where(exists[..., None, None], points, 0.0).reshape(points.shape[0], -1)
  return np.concatenate([flat, exists.astype(np.float64)], axis=1)


def fit_global_pca(shapes, num_modes: int | None = None) -> GlobalPCA:
  """PCA of every training shape's vector; ``num_modes=None`` keeps every mode with
  non-zero variance (so the samples have the training covariance exactly)."""
  x = shape_vectors(shapes.points, shapes.exists)
  if num_modes is not None and not (isinstance(num_modes, int) and num_modes > 0):
    raise ConfigError("num_modes", "a positive integer or None", num_modes)
  mean, modes, std, _ = ssm_lib.fit_label(x, num_modes or min(x.shape))
  keep = std > 0  # fit_label pads degenerate modes with zeros
  _, m, p, _ = shapes.points.shape
  return GlobalPCA(mean, modes[:, keep], std[keep], m, p)


def sample_global_pca(model: GlobalPCA, num: int, *, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """``num`` shapes: ``(points [num, m, p, 3], exists [num, m])``."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((num, model.std.size))
  x = model.mean + (w * model.std) @ model.modes.T
  m, p = model.num_labels, model.points_per_part
  exists = x[:, -m:] > 0.5
  points = x[:, :-m].reshape(num, m, p, 3)
  return np.where(exists[..., None, None], points, 0.0).astype(np.float32), exists


def sample_independent(ssm: ssm_lib.PartSSMs, rates, num: int, *, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """``num`` shapes whose parts exist independently with probabilities ``rates [m]`` and
  whose geometry is each label's SSM at :math:`v \\sim \\mathcal N(0, I)`."""
  rates = np.asarray(rates, np.float64)
  m = ssm.mean.shape[0]
  if rates.shape != (m,) or not np.all((rates >= 0) & (rates <= 1)):
    raise ConfigError("rates", f"{m} probabilities in [0, 1]", rates)
  rng = np.random.default_rng(seed)
  exists = rng.uniform(size=(num, m)) < rates
  v = rng.standard_normal((num, m, ssm.num_modes)).astype(np.float32)
  points = np.asarray(ssm_lib.decode(ssm, v, np.arange(m)))
  return np.where(exists[..., None, None], points, 0.0).astype(np.float32), exists
