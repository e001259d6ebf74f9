"""Timing helpers shared by the benchmarks (``bench_*``): round-robin timing of jitted
programs, the machine's matmul peak, and where the numbers were measured.

Kept apart from the benchmarks so that one can be imported without another's data
dependencies (``bench_fl`` needs tensorflow-datasets; ``bench_shapes`` does not).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int, repeats: int,
                     log=None) -> dict[str, list[float]]:
  """Seconds per call of each zero-argument function, timed round-robin.

  Each function is called ``warmup`` times (compilation, allocator and cache
  warm-up), then ``repeats`` rounds of one timed call per function, each ended by
  ``jax.block_until_ready`` on its output.
  """
  for name, fn in fns.items():
    t0 = time.perf_counter()
    for _ in range(warmup):
      jax.block_until_ready(fn())
    if log:
      log(f"  warm-up {name}: {warmup} calls in {time.perf_counter() - t0:.2f} s")
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times


def make_matmul(n: int, key: jax.Array) -> Callable[[], jax.Array]:
  """A zero-argument jitted float32 ``[n, n] @ [n, n]`` (``2 n^3`` flops): the practical peak."""
  ka, kb = jax.random.split(key)
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  return lambda: mm(a, b)


def environment() -> dict:
  """Where the numbers were measured (the run's ``info``)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return dict(backend=jax.default_backend(), device=jax.devices()[0].device_kind,
              cpu_cores=cores, jax_version=jax.__version__,
              xla_flags=os.environ.get("XLA_FLAGS", ""))
