"""Grids of configs: the launcher's ``--sweep``.

:func:`run_grid` runs every point of an experiment's ``get_sweep()`` as its own config (its
own hash, so its own runs), reports each point under ``<experiment>/sweep/<point>/`` and
tabulates every point's claims in ``<experiment>/sweep.md``; an experiment may add
``report_sweep(folder, [(point, config, claims doc)])`` for a report across the points.
A point maps field names to values; ``"comm.bits_per_param"`` names a block's field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from jaxfl.errors import ConfigError
from sweeps import report
from sweeps.provenance import point_name
from sweeps.sweep import run_sweep


def point_config(config, point: Mapping[str, Any]):
  """``config`` with a grid point's values (``"comm.bits_per_param"`` names a block's field);
  unknown keys raise ConfigError naming them."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for key, value in point.items():
      *blocks, name = key.split(".")
      block = c
      for part in blocks:
        block = block.get(part) if hasattr(block, "get") else None
      if not hasattr(block, "get") or name not in block:
        raise ConfigError(f"get_sweep()[{key!r}]", "a field of the config", key)
      try:
        block[name] = value
      except TypeError as e:
        raise ConfigError(f"get_sweep()[{key!r}]", f"a value of the field's type ({e})",
                          value) from None
  return c


def run_grid(runner, config, grid: Sequence[Mapping[str, Any]], workdir: str,
             **kwargs) -> list[dict]:
  """Run every grid point's sweep; write ``<experiment>/sweep.md``; return the claims docs.

  Every point's config is validated before any point runs. ``kwargs`` go to
  :func:`run_sweep` (backend, vmap_seeds...).
  """
  if not grid:
    raise ConfigError("--sweep", "an experiment whose get_sweep() returns grid points", [])
  points = [(dict(p), point_config(config, p)) for p in grid]
  for _, c in points:
    runner.validate(c)
  docs = []
  for point, c in points:
    out = os.path.join(config.experiment, "sweep", point_name(point))
    docs.append(run_sweep(runner, c, workdir, out=out, sweep_point=point, **kwargs))
  if all(d is not None for d in docs):
    folder = os.path.join(workdir, config.experiment)
    report.write_sweep_table(folder, [(p, os.path.join("sweep", point_name(p)), d)
                                      for (p, _), d in zip(points, docs)])
    if hasattr(runner, "report_sweep"):  # e.g. a regime map over the grid
      runner.report_sweep(folder, [(p, c, d) for (p, c), d in zip(points, docs)])
  return docs

