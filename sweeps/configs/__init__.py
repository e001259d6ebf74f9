"""Experiment configs, loaded by path: sweeps/configs/<name>.py[:variant].

Every module here but :mod:`sweeps.configs.common` (the shared fields and block builder) is
one experiment's config.
"""

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The experiment configs in this folder, sorted: ``['air_fedga', 'bench_fl', ...]``."""
  return sorted(f[:-3] for f in os.listdir(FOLDER)
                if f.endswith(".py") and f not in ("__init__.py", "common.py"))
