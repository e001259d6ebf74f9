"""Experiment runners: ``validate(config)`` and ``run(config, workdir) -> claims document``.

A runner is the importable body of an experiment (usable from a notebook); the
launcher only parses flags, validates, and calls it.
"""

from __future__ import annotations

import importlib

EXPERIMENTS = ("fedavg", "bench_fl")


def get(name: str):
  from jaxfl.errors import ConfigError

  if name not in EXPERIMENTS:
    raise ConfigError("experiment", f"one of {list(EXPERIMENTS)}", name)
  return importlib.import_module(f"sweeps.experiments.{name}")
