"""Errors for bad input.

Every user-facing validation failure raises :class:`ConfigError`, which names the
offending field and what was expected. Entry points (``sweeps.launch``) turn it into
one line on stderr and exit code 2, before anything is written. Library objects name
their own parameters; a config block built into one (``sweeps.configs.common.build``)
prefixes the block's path (:meth:`ConfigError.within`).
"""

from __future__ import annotations

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
