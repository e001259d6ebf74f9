"""Device profiles: how fast each client computes and communicates, and how often it is online.

System heterogeneity follows the FedScale model (Lai et al. 2022, arXiv 2105.11367):
each client has a compute speed, an uplink and a downlink bandwidth and an
availability. Profiles are sampled from lognormal distributions (heavy right tail,
as in measured device populations) from a key derived from the run seed, or read
from a table file with one row per client.
"""

from __future__ import annotations

import csv
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.errors import ConfigError

COLUMNS = ("compute", "uplink", "downlink", "availability")


class DeviceProfiles(NamedTuple):
  """Per-client system profile, each a float32 array of shape ``[num_clients]``.

  Attributes:
    compute: training speed in samples per second (one sample = forward + backward).
    uplink: client-to-server bandwidth in bytes per second.
    downlink: server-to-client bandwidth in bytes per second.
    availability: probability that the client is online in a given round, in (0, 1].
  """

  compute: jax.Array
  uplink: jax.Array
  downlink: jax.Array
  availability: jax.Array

  @property
  def num_clients(self) -> int:
    return int(self.compute.shape[0])


def uniform_profiles(num_clients: int, *, compute: float = 1000.0, uplink: float = 1e6,
                     downlink: float = 1e7, availability: float = 1.0) -> DeviceProfiles:
  """Identical clients (the homogeneous baseline)."""
  full = lambda v: jnp.full([num_clients], v, jnp.float32)
  return DeviceProfiles(full(compute), full(uplink), full(downlink), full(availability))


def sample_profiles(key: jax.Array, num_clients: int, *, compute_median: float = 1000.0,
                    uplink_median: float = 1e6, downlink_median: float = 1e7, sigma: float = 0.5,
                    availability_range: tuple[float, float] = (1.0, 1.0)) -> DeviceProfiles:
  r"""Lognormal device profiles.

  :math:`\log s_k \sim \mathcal N(\log m, \sigma^2)` independently for compute,
  uplink and downlink (medians ``m``); availability uniform in ``availability_range``.

  Args:
    key: PRNG key (derive it from the run seed with ``fold_in``).
    num_clients: number of profiles.
    compute_median: median samples per second.
    uplink_median: median uplink bytes per second.
    downlink_median: median downlink bytes per second.
    sigma: standard deviation of the log of each quantity; 0 gives identical clients.
    availability_range: ``(low, high)`` with ``0 < low <= high <= 1``.
  """
  lo, hi = availability_range
  if not 0 < lo <= hi <= 1:
    raise ConfigError("availability_range", "0 < low <= high <= 1", availability_range)
  if not (math.isfinite(sigma) and sigma >= 0):
    raise ConfigError("sigma", "a non-negative finite number", sigma)
  for name, median in (("compute_median", compute_median), ("uplink_median", uplink_median),
                       ("downlink_median", downlink_median)):
    if not (math.isfinite(median) and median > 0):
      raise ConfigError(name, "a positive finite number", median)
  kc, ku, kd, ka = jax.random.split(key, 4)
  lognormal = lambda k, median: median * jnp.exp(sigma * jax.random.normal(k, [num_clients]))
  availability = jax.random.uniform(ka, [num_clients], minval=lo, maxval=hi)
  return DeviceProfiles(lognormal(kc, compute_median), lognormal(ku, uplink_median),
                        lognormal(kd, downlink_median), availability.astype(jnp.float32))


def load_profiles(path: str | os.PathLike, num_clients: int | None = None) -> DeviceProfiles:
  """Read profiles from a CSV table with header ``compute,uplink,downlink,availability``.

  With ``num_clients`` given, the table must have at least that many rows and the
  first ``num_clients`` are used (client k gets row k).
  """
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise ConfigError("profiles_file", "a readable CSV file", str(path)) from e
  if not rows or any(c not in rows[0] for c in COLUMNS):
    raise ConfigError("profiles_file", f"a CSV header with columns {list(COLUMNS)}", str(path))
  if num_clients is not None:
    if len(rows) < num_clients:
      raise ConfigError("profiles_file", f"at least {num_clients} rows (one per client)", len(rows))
    rows = rows[:num_clients]
  try:
    table = {c: np.array([float(r[c]) for r in rows], np.float32) for c in COLUMNS}
  except ValueError as e:
    raise ConfigError("profiles_file", "numeric values in every column", str(e)) from e
  for c in ("compute", "uplink", "downlink"):
    bad = ~(np.isfinite(table[c]) & (table[c] > 0))
    if bad.any():
      row = int(np.argmax(bad))
      raise ConfigError(f"profiles_file.{c}", f"positive values (row {row + 1})",
                        float(table[c][row]))
  a = table["availability"]
  bad = ~((a > 0) & (a <= 1))
  if bad.any():
    row = int(np.argmax(bad))
    raise ConfigError("profiles_file.availability", f"values in (0, 1] (row {row + 1})",
                      float(a[row]))
  return DeviceProfiles(*(jnp.asarray(table[c]) for c in COLUMNS))


def save_profiles(path: str | os.PathLike, profiles: DeviceProfiles) -> None:
  """Write profiles in the table format :func:`load_profiles` reads."""
  cols = [np.asarray(getattr(profiles, c)) for c in COLUMNS]
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(COLUMNS)
    for row in zip(*cols):
      w.writerow([repr(float(v)) for v in row])
