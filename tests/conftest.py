"""Test configuration: 8 host CPU devices (for shard_map), rank promotion errors, keys,
fast compilation, and one XLA compilation cache for the session.

The cache (``JAX_COMPILATION_CACHE_DIR``, inherited by the launcher subprocesses the
tests start) lets the many runs of the same small programs -- a sweep relaunched after a
kill, the same FedAvg round in several backends -- compile once. It holds executables,
not results: every run still computes its own numbers.
"""

import os
import tempfile

# Must precede the first JAX operation anywhere in the test session.
# LLVM at -O0 halves XLA:CPU compile times (measured 8 s -> 4 s on a simulation's scan) and
# the suite compiles far more than it runs; XLA's own (HLO) passes are unchanged.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxfl-xla-cache-"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
  return jax.random.PRNGKey(0)
