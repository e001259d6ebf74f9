"""What every experiment config shares, and building library objects from config blocks.

:func:`base` holds the fields every experiment has (its name and variant, the first seed and
how many, tuning seeds, the data and cache folders); an experiment's ``get_config`` starts
from it, and its ``validate`` from :func:`check`. A config *block* (a nested
``ConfigDict``) carries exactly the fields of one frozen library dataclass, and
:func:`build` constructs it: validation is construction, the library raises
:class:`~jaxfl.errors.ConfigError` with its own parameter names, and ``build`` prefixes
the block's path, so the launcher's one-line error reads
``config.pretrain.steps: expected a positive integer, got 0``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, TypeVar

import ml_collections

from jaxfl.errors import ConfigError, check_number

T = TypeVar("T")

VARIANTS = ("quick", "full")


def base(experiment: str, variant: str, *, num_seeds: int,
         num_tuning_seeds: int | None = None, data_dir: bool = True,
         cache_dir: bool = False) -> ml_collections.ConfigDict:
  """A config holding the shared fields.

  Args:
    experiment: the runner's name (:data:`sweeps.experiments.EXPERIMENTS`).
    variant: ``'quick'`` (minutes on a CPU) or ``'full'`` (accelerator scale).
    num_seeds: reported seeds ``seed .. seed + num_seeds - 1``.
    num_tuning_seeds: seeds ``seed + 1000 + i`` that tuning grids run on (none if None).
    data_dir: whether the experiment reads datasets (``data_dir`` field).
    cache_dir: whether the experiment keeps a model cache (``cache_dir`` field).
  """
  if variant not in VARIANTS:
    # A plain ValueError: config_flags re-raises it with its own message prepended.
    raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
  c = ml_collections.ConfigDict()
  c.experiment = experiment
  c.variant = variant
  c.seed = 0
  c.num_seeds = num_seeds
  if num_tuning_seeds is not None:
    c.num_tuning_seeds = num_tuning_seeds
  if data_dir:
    c.data_dir = ""  # "" = $JAXFL_DATA_DIR or ~/.cache/jaxfl/tfds
  if cache_dir:
    c.cache_dir = ""  # "" = $JAXFL_CACHE_DIR or ~/.cache/jaxfl
  return c


def check(c) -> None:
  """Check the fields :func:`base` made (each experiment's ``validate`` starts here).

  Raises:
    ConfigError: a negative or fractional ``seed``, ``num_seeds`` or ``num_tuning_seeds``
      below 1, or a ``data_dir``/``cache_dir`` that exists and is not a directory.
  """
  check_number(c.seed, "seed", low=0, integer=True)
  check_number(c.num_seeds, "num_seeds", low=1, integer=True)
  if "num_tuning_seeds" in c:
    check_number(c.num_tuning_seeds, "num_tuning_seeds", low=1, integer=True)
  for field in ("data_dir", "cache_dir"):
    path = c.get(field, "")
    if not isinstance(path, str) or (path and os.path.exists(path) and not os.path.isdir(path)):
      raise ConfigError(field, "a directory (or '' for the default)", path)


def build(cls: type[T], values, path: str, **fixed: Any) -> T:
  """``cls(**values, **fixed)``: a library object from the config block at ``path``.

  Args:
    cls: a frozen dataclass of the library.
    values: the block (a ``ConfigDict`` or mapping); lists become tuples, as the
      dataclasses' sequence fields are tuples.
    path: the block's path in the config, prefixed to the library's error.
    fixed: fields the experiment sets from elsewhere in the config (e.g. ``max_len``).

  Raises:
    ConfigError: ``<path>.<field>`` for a bad value, or ``<path>`` naming unknown fields.
  """
  given = dict(values.items() if hasattr(values, "items") else values)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(given) - names)
  if unknown:
    raise ConfigError(path, f"fields among {sorted(names - set(fixed))}", unknown)
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
  try:
    return cls(**given, **fixed)
  except ConfigError as e:
    raise e.within(path) from None
