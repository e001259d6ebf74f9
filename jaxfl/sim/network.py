"""Wide-area links: what a transfer or an all-reduce costs on the simulated clock.

A transfer of ``b`` bytes over a link of ``B`` bytes/s with latency ``l`` takes
``b / B + l`` seconds; a ring all-reduce among ``M`` workers moves ``2 (M - 1) / M`` times
the payload through each worker's link. DiLoCo's blocking sync is one all-reduce of the
whole model; Streaming DiLoCo's and CoCoDC's are one per fragment, overlapped with ``tau``
inner steps (Streaming DiLoCo, arXiv 2501.18512). The volume over bandwidth is the
comm-time simulation of the CoCoDC authors' released code (arXiv 2504.17672); the
per-transfer latency and the stall ``max(0, C - tau * t_step)`` when ``tau`` steps do not
hide a transfer are **assumed** (this project's simulated clock).

Examples:
  >>> WAN(bandwidth=5e6, latency=0.1).allreduce_time(10e6, num_workers=8)
  3.6
  >>> overlap_steps(1e6, 1e6, 0.5, 1.0, 4)  # 1.5 MB moved + 0.5 s latency = 2 steps
  2
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxfl.errors import ConfigError, check_number


@dataclasses.dataclass(frozen=True)
class WAN:
  """A wide-area link: an all-reduce of ``b`` bytes among ``M`` workers takes
  ``2 (M - 1) / M * b / bandwidth + latency`` seconds.

  Attributes:
    bandwidth: bytes per second per worker.
    latency: seconds per synchronisation.
  """

  bandwidth: float = 1e8
  latency: float = 0.1

  def __post_init__(self):
    check_number(self.bandwidth, "bandwidth", low=0, strict=True, unit="bytes per second")
    check_number(self.latency, "latency", low=0, unit="seconds")

  def allreduce_time(self, num_bytes, num_workers: int) -> float:
    return blocking_sync_time(num_bytes, self.bandwidth, self.latency, num_workers)


def allreduce_bytes(nbytes: float, num_workers: int) -> float:
  """Bytes each worker moves in a ring all-reduce of ``nbytes``: ``2(M-1)/M · nbytes``."""
  if not isinstance(num_workers, (int, np.integer)) or isinstance(num_workers, bool) or \
      num_workers < 1:
    raise ConfigError("num_workers", "an integer >= 1", num_workers)
  return 2.0 * (num_workers - 1) / num_workers * nbytes


def transfer_time(nbytes: float, bandwidth: float, latency: float) -> float:
  """Seconds of one transfer: ``nbytes / bandwidth + latency``."""
  if not (isinstance(bandwidth, (int, float, np.number)) and bandwidth > 0):
    raise ConfigError("bandwidth", "a positive number", bandwidth)
  if not (latency >= 0 and nbytes >= 0):
    raise ConfigError("latency" if not latency >= 0 else "nbytes", "a non-negative number",
                      latency if not latency >= 0 else nbytes)
  return nbytes / bandwidth + latency


def blocking_sync_time(model_bytes: float, bandwidth: float, latency: float,
                       num_workers: int) -> float:
  """Seconds blocking DiLoCo stalls every ``H`` steps: the full-model all-reduce."""
  return transfer_time(allreduce_bytes(model_bytes, num_workers), bandwidth, latency)


def overlap_steps(fragment_bytes: float, bandwidth: float, latency: float, step_time: float,
                  num_workers: int) -> int:
  """``tau = ceil(comm_time / step_time)``: inner steps one fragment all-reduce overlaps.

  ``comm_time`` moves :func:`allreduce_bytes` of the fragment plus one ``latency``
  (the comm-time model of CoCoDC's released code, arXiv 2504.17672, with a latency term
  added: an assumption).
  """
  if not (isinstance(step_time, (int, float, np.number)) and step_time > 0):
    raise ConfigError("step_time", "a positive number", step_time)
  comm = transfer_time(allreduce_bytes(fragment_bytes, num_workers), bandwidth, latency)
  return max(0, math.ceil(comm / step_time - 1e-9))


def overlap_stall(comm_time: float, tau: int, step_time: float) -> float:
  """Seconds a fragment sync stalls when ``tau`` steps do not hide it: ``max(0, C - tau·t)``."""
  return max(0.0, comm_time - tau * step_time)
