"""jaxfl: federated and distributed learning as pure-functional JAX building blocks.

Start with :mod:`jaxfl.runtime` (the client axis), :mod:`jaxfl.algorithms` (FedAvg and
the FedOpt family), :mod:`jaxfl.transforms` (aggregators as optax transforms) and
:mod:`jaxfl.data` (embedded data and non-IID partitioners).
"""

import os

__version__ = "0.1.0"

ENV_CACHE_DIR = "JAXFL_CACHE_DIR"


def cache_dir() -> str:
  """Where jaxfl keeps what it can rebuild (pre-trained models, compiled programs):
  ``$JAXFL_CACHE_DIR`` if set (and non-empty), else ``~/.cache/jaxfl``."""
  return os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache",
                                                       "jaxfl")
