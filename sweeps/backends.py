"""Remote backends for sweeps (placeholder until implemented): see sweeps/sweep.py."""

from __future__ import annotations

from absl import flags

from jaxfl.errors import ConfigError


def define_flags(fv: flags.FlagValues) -> None:
  del fv


def options_from_flags(fv: flags.FlagValues, backend: str) -> dict:
  del fv, backend
  return {}


def get(name: str, options: dict):
  del options
  raise ConfigError("--backend", "'local' (remote backends are not implemented yet)", name)
