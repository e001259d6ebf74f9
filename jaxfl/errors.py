"""Errors for bad input.

Every user-facing validation failure raises :class:`ConfigError`, which names the
offending field and what was expected. Entry points (``sweeps.launch``) turn it into
one line on stderr and exit code 2, before anything is written. Library objects name
their own parameters; a config block built into one (``sweeps.configs.common.build``)
prefixes the block's path (:meth:`ConfigError.within`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class ConfigError(ValueError):
  """Bad input: ``field`` held ``got`` but ``expected`` was required."""

  def __init__(self, field: str, expected: str, got: Any = None):
    self.field = field
    self.expected = expected
    self.got = got
    got_part = "" if got is None else f", got {got!r}"
    super().__init__(f"{field}: expected {expected}{got_part}")

  def within(self, path: str) -> ConfigError:
    """The same error for the field of a block at ``path``: a library object raises with
    its own parameter names, and whoever built it from a config block names the block.

    >>> str(ConfigError("steps", "a positive integer", 0).within("pretrain"))
    'pretrain.steps: expected a positive integer, got 0'
    """
    return ConfigError(f"{path}.{self.field}" if path else self.field, self.expected, self.got)


def check(condition: bool, field: str, expected: str, got: Any = None) -> None:
  """Raise :class:`ConfigError` unless ``condition`` holds."""
  if not condition:
    raise ConfigError(field, expected, got)


def is_number(value: Any) -> bool:
  """A real number (Python or NumPy scalar), not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(value: Any, field: str, *, low: float | None = None, strict: bool = False,
                 integer: bool = False, finite: bool = True, unit: str = "") -> Any:
  """Return ``value`` if it is a number in range, else raise :class:`ConfigError`.

  Args:
    value: the value to check.
    field: its name in the error.
    low: the least allowed value (None: unbounded); ``strict`` excludes it.
    integer: require an integer (a float with an integral value is refused).
    finite: refuse ``inf`` and ``nan`` (``nan`` is refused always).
    unit: said in the error, e.g. ``"seconds"``.

  >>> check_number(3, "steps", low=1, integer=True)
  3
  >>> check_number(0.0, "bandwidth", low=0, strict=True, unit="bytes/s")
  Traceback (most recent call last):
  ...
  jaxfl.errors.ConfigError: bandwidth: expected a positive finite number (bytes/s), got 0.0
  """
  if integer:
    kind = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    what = {(0, True): "a positive integer", (0, False): "a non-negative integer",
            (1, False): "a positive integer"}.get((low, strict))
    what = what or ("an integer" if low is None else f"an integer {'>' if strict else '>='} {low}")
  else:
    kind = is_number(value) and not math.isnan(value) and (math.isfinite(value) or not finite)
    word = "finite number" if finite else "number"
    what = {(0, True): f"a positive {word}", (0, False): f"a non-negative {word}"}.get(
        (low, strict))
    what = what or (f"a {word}" if low is None else
                    f"a {word} {'>' if strict else '>='} {low}")
  in_range = kind and (low is None or (value > low if strict else value >= low))
  if not in_range:
    raise ConfigError(field, f"{what} ({unit})" if unit else what, value)
  return value
