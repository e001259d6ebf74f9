"""Part statistical shape models: one whitened linear PCA model per part label.

PRISM (arXiv 2504.04454) models each part label with a linear SSM over corresponded
part points. Stack the ``n`` instances of a label as rows :math:`X \\in \\mathbb R^{n
\\times 3p}`; with the mean :math:`\\mu` and the eigendecomposition of the sample
covariance :math:`\\frac{1}{n-1}(X - \\mu)^\\top (X - \\mu) = Q \\Lambda Q^\\top` (by SVD
of the centred data), a part :math:`x` is encoded by its whitened coefficients on the
top :math:`q` modes and decoded back,

.. math::
  v = \\Lambda_q^{-1/2} Q_q^\\top (x - \\mu) \\sim \\mathcal N(0, I_q), \\qquad
  \\hat x = \\mu + Q_q \\Lambda_q^{1/2} v .

(The mean subtraction follows the authors' public SSM code; the review of the paper
writes :math:`\\hat Q^\\top X \\Lambda^{-1/2}`.) The reconstruction error of a training
part is the variance in the dropped modes: the explained variance
:math:`\\sum_{i \\le q} \\lambda_i / \\sum_i \\lambda_i` is reported per label.

Labels are stacked into one :class:`PartSSMs` with a common ``q`` (labels that need fewer
modes have zero-variance padding modes, whose coefficients encode to 0), so encoding
and decoding are ``jnp`` functions that jit and vmap over shapes and slots.

Examples:
  >>> from shapes import data
  >>> s = data.generate("lamp", 200, seed=0, points_per_part=48)
  >>> ssm = fit(s, num_modes=8)
  >>> ssm.mean.shape, ssm.modes.shape
  ((4, 144), (4, 144, 8))
  >>> v = encode(ssm, s.points[:, 0], 0)            # the bases' coefficients
  >>> err = np.abs(np.asarray(decode(ssm, v, 0)) - s.points[:, 0]).max()
  >>> bool(err < 0.02)
  True
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxfl.errors import ConfigError


class PartSSMs(NamedTuple):
  """One PCA model per part label, stacked over labels ``m``.

  Attributes:
    mean: ``[m, 3p]`` mean part.
    modes: ``[m, 3p, q]`` orthonormal modes :math:`Q_q` (zero columns where a label has
      fewer than ``q`` non-degenerate modes).
    std: ``[m, q]`` :math:`\\sqrt{\\lambda}` of each mode (0 for padding).
    explained: ``[m]`` fraction of the label's variance the ``q`` modes keep.
    count: ``[m]`` training instances per label.
  """

  mean: np.ndarray
  modes: np.ndarray
  std: np.ndarray
  explained: np.ndarray
  count: np.ndarray

  @property
  def num_modes(self) -> int:
    return self.modes.shape[-1]


def fit_label(x: np.ndarray, num_modes: int) -> tuple[np.ndarray, ...]:
  """PCA of ``x`` ``[n, 3p]`` (float64): ``(mean, modes [3p, q], std [q], explained)``."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  mean = x.mean(axis=0)
  if n < 2:
    raise ConfigError("shapes", "at least 2 instances of every part label", n)
  _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
  var = s**2 / (n - 1)
  total = var.sum()
  k = min(num_modes, int(np.sum(var > 1e-12 * max(total, 1e-30))))
  modes = np.zeros((x.shape[1], num_modes))
  std = np.zeros(num_modes)
  modes[:, :k] = vt[:k].T
  std[:k] = np.sqrt(var[:k])
  explained = float(var[:k].sum() / total) if total > 0 else 1.0
  return mean, modes, std, explained


def fit(shapes, num_modes: int) -> PartSSMs:
  """Fit every label's SSM on the shapes that have that part (``shapes``: a
  :class:`shapes.data.PartShapes`)."""
  if not (isinstance(num_modes, int) and num_modes > 0):
    raise ConfigError("num_modes", "a positive integer", num_modes)
  n, m, p, _ = shapes.points.shape
  parts = [fit_label(shapes.points[shapes.exists[:, j], j].reshape(-1, 3 * p), num_modes)
           for j in range(m)]
  mean, modes, std, explained = (np.stack(v) for v in zip(*parts, strict=True))
  return PartSSMs(mean.astype(np.float32), modes.astype(np.float32), std.astype(np.float32),
                  explained, shapes.exists.sum(axis=0))


def encode(ssm: PartSSMs, points, label):
  """Whitened coefficients ``[..., q]`` of parts ``[..., p, 3]`` under ``label``'s model
  (``label``: int, or an int array broadcasting against the leading dims)."""
  points = jnp.asarray(points)
  flat = points.reshape(*points.shape[:-2], -1)
  mean, modes, std = _select(ssm, label, flat.ndim - 1)
  proj = jnp.einsum("...d,...dq->...q", flat - mean, modes)
  return jnp.where(std > 0, proj / jnp.where(std > 0, std, 1.0), 0.0)


def _select(ssm: PartSSMs, label, lead: int):
  """``label``'s mean, modes and std, with size-1 axes in front up to ``lead`` leading axes
  (explicit, so broadcasting never promotes ranks)."""
  out = []
  for a in (ssm.mean, ssm.modes, ssm.std):
    x = jnp.asarray(a)[label]
    extra = lead - jnp.ndim(label)
    if extra < 0:
      raise ConfigError("label", f"at most {lead} axes (the parts' leading axes)",
                        jnp.shape(label))
    out.append(x.reshape((1,) * extra + x.shape))
  return out


def decode(ssm: PartSSMs, coeffs, label):
  """Parts ``[..., p, 3]`` from whitened coefficients ``[..., q]`` under ``label``'s model."""
  coeffs = jnp.asarray(coeffs)
  mean, modes, std = _select(ssm, label, coeffs.ndim - 1)
  flat = mean + jnp.einsum("...dq,...q->...d", modes, coeffs * std)
  return flat.reshape(*flat.shape[:-1], -1, 3)


def explained_variance_curve(x: np.ndarray) -> np.ndarray:
  """Cumulative explained-variance fractions of all modes of ``x`` ``[n, 3p]``."""
  x = np.asarray(x, np.float64)
  s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
  var = s**2
  return np.cumsum(var) / var.sum()
