"""Drawing part-based shapes with matplotlib (3D scatters coloured by part label)."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from shapes import ssm as ssm_lib


def decode_parts(ssm: ssm_lib.PartSSMs, coeffs, exists) -> tuple[np.ndarray, np.ndarray]:
  """Stored SSM coefficients ``[n, m, modes]`` (and existence) back to part points."""
  coeffs, exists = np.asarray(coeffs, np.float32), np.asarray(exists, bool)
  points = np.asarray(ssm_lib.decode(ssm, coeffs, np.arange(exists.shape[-1])))
  return points, exists


def draw_shape(ax, points, exists, labels, title: str, half: float) -> None:
  """One shape's existing parts as a 3D scatter coloured by part label (y is up) in the
  cube ``[-half, half]^2 x [0, 2 half]``."""
  for j, lab in enumerate(labels):
    if exists[j]:
      p = points[j]
      ax.scatter(p[:, 0], p[:, 2], p[:, 1], s=1.5, color=f"C{j}", label=lab, depthshade=False)
  ax.set(xlim=(-half, half), ylim=(-half, half), zlim=(0, 2 * half))
  ax.set_title(title, fontsize=9, y=0.92)
  ax.set_box_aspect((1, 1, 1))
  ax.view_init(elev=20, azim=-60)
  ax.set_axis_off()


def part_legend(fig, labels) -> None:
  """One legend entry per part label, in :func:`draw_shape`'s colours."""
  handles = [Line2D([], [], ls="", marker="o", color=f"C{j}")
             for j in range(len(labels))]
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
