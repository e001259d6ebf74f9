"""Test configuration: 8 host CPU devices (for shard_map), rank promotion errors, keys,
fast compilation, and one XLA compilation cache for the session (removed at its end).

The cache (``JAX_COMPILATION_CACHE_DIR``, inherited by the launcher subprocesses the
tests start) lets the many runs of the same small programs -- a sweep relaunched after a
kill, the same FedAvg round in several backends -- compile once. It holds executables,
not results: every run still computes its own numbers.
"""

import atexit
import os
import shutil
import tempfile

# Must precede the first JAX operation anywhere in the test session.
# LLVM at -O0 halves XLA:CPU compile times (measured 8 s -> 4 s on a simulation's scan) and
# the suite compiles far more than it runs; XLA's own (HLO) passes are unchanged.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # made here: removed when this process ends
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxfl-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
#: The suite's XLA flags without LLVM -O0 (the optimisation level a user's process has).
USER_XLA_FLAGS = " ".join(f for f in os.environ["XLA_FLAGS"].split()
                          if f != "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def user_xla(monkeypatch):
  """Child processes started in this test compile at LLVM's default level, as a user's do:
  for an end-to-end run that computes more than it compiles (measured: the notebook 19.8 ->
  14.5 s, the README command 14.0 -> 10.3 s) and whose numbers are compared with nothing
  this process computed (the level may change float rounding)."""
  monkeypatch.setenv("XLA_FLAGS", USER_XLA_FLAGS)


@pytest.fixture
def key():
  return jax.random.PRNGKey(0)
