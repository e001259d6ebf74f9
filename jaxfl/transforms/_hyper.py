"""Hyperparameters that may be arrays: Python numbers are checked now, arrays pass through.

``optax.inject_hyperparams`` (and a sweep that vmaps a transform over a grid) calls a
transform's factory with its numeric hyperparameters as JAX arrays: concrete 0-d arrays in
``init``, tracers under ``jit``. A tracer's value cannot be checked at all, and a concrete
array's only by a host round trip on every ``update``, so only Python (and NumPy) numbers
are range-checked, when the transform is built; an array must be a scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxfl.errors import ConfigError, check, is_number


def check_hyperparam(value: Any, field: str, ok: Callable[[Any], bool], expected: str) -> None:
  """ConfigError naming ``field`` unless ``value`` is a number with ``ok(value)`` or a
  scalar array (a tracer included), whose range is the caller's to trust."""
  if is_number(value):
    check(ok(value), field, expected, value)
  elif isinstance(value, (jax.Array, np.ndarray)):  # tracers are jax.Arrays
    check(value.ndim == 0, field, f"{expected}, as a number or a scalar array",
          f"an array of shape {tuple(value.shape)}")
  else:
    raise ConfigError(field, f"{expected}, as a number or a scalar array", value)
