"""ConfigError and the number checks every library dataclass validates with."""

import math

import numpy as np
import pytest

from jaxfl.errors import ConfigError, check_number, is_number


def test_is_number_takes_python_and_numpy_reals_but_not_bools_or_strings():
  assert all(is_number(v) for v in (1, 2.5, np.float32(1.0), np.int64(3), math.inf))
  assert not any(is_number(v) for v in (True, "1", None, 1j, (1,)))


@pytest.mark.parametrize("value,kw,expected", [
    (0, dict(low=1, integer=True), "a positive integer"),
    (2.0, dict(low=1, integer=True), "a positive integer"),  # integral float refused
    (-1, dict(low=0, integer=True), "a non-negative integer"),
    (1, dict(low=2, integer=True), "an integer >= 2"),
    (0.0, dict(low=0, strict=True), "a positive finite number"),
    (-0.5, dict(low=0), "a non-negative finite number"),
    (math.inf, dict(low=0), "a non-negative finite number"),
    (math.nan, dict(finite=False), "a number"),
    (0.5, dict(low=1.0, strict=True, unit="s"), "a finite number > 1.0 (s)"),
    ("3", dict(), "a finite number"),
    (True, dict(), "a finite number"),
])
def test_check_number_refuses_with_the_expected_phrase(value, kw, expected):
  with pytest.raises(ConfigError) as e:
    check_number(value, "f", **kw)
  assert (e.value.field, e.value.expected, e.value.got) == ("f", expected, value)


@pytest.mark.parametrize("value,kw", [
    (1, dict(low=1, integer=True)), (0, dict(low=0, integer=True)),
    (np.int32(4), dict(low=1, integer=True)),
    (1e-9, dict(low=0, strict=True)), (0.0, dict(low=0)), (math.inf, dict(low=0, finite=False)),
    (-3.0, dict()),
])
def test_check_number_returns_an_accepted_value(value, kw):
  assert check_number(value, "f", **kw) == value


def test_within_prefixes_the_block_path():
  e = ConfigError("steps", "a positive integer", 0).within("model.pretrain")
  assert (e.field, str(e)) == ("model.pretrain.steps",
                               "model.pretrain.steps: expected a positive integer, got 0")
  assert ConfigError("x", "y").within("").field == "x"
