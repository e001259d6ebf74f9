"""Experiment runners: the modules :func:`sweeps.sweep.run_sweep` drives.

A runner is the importable body of an experiment (usable from a notebook): ``validate``,
``prepare``, ``families`` (:mod:`sweeps.families`) and/or the per-run ``run_specs``,
``rounds`` and ``execute``, and ``report`` (see :mod:`sweeps.sweep`). The launcher only
parses flags and calls ``run_sweep`` (or ``sweeps.grid.run_grid``) with it.
"""

from __future__ import annotations

import importlib

EXPERIMENTS = ("fedavg", "bench_fl", "air_fedga", "lm_pretrain", "fedlora", "bench_lm",
               "cocodc", "prism", "bench_shapes")


def get(name: str):
  from jaxfl.errors import ConfigError

  if name not in EXPERIMENTS:
    raise ConfigError("experiment", f"one of {list(EXPERIMENTS)}", name)
  return importlib.import_module(f"sweeps.experiments.{name}")
