"""Test configuration: 8 host CPU devices (for shard_map), rank promotion errors, keys."""

import os

# Must precede the first JAX operation anywhere in the test session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
  return jax.random.PRNGKey(0)
