"""The simulated clock of synchronous rounds.

A synchronous round ends when its slowest participant has downloaded the model,
trained, and uploaded its update:

.. math::
  T_{round} = \\max_{k \\in S} \\left( \\frac{B_{down}}{d_k} + \\frac{n_k}{c_k}
              + \\frac{B_{up}}{u_k} \\right)

with :math:`n_k` samples processed by client :math:`k` at :math:`c_k` samples/s and
:math:`B` bytes over bandwidths :math:`d_k, u_k` (FedScale's latency model, Lai et
al. 2022, arXiv 2105.11367). Real CPU seconds are reported separately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfl.sim.profiles import DeviceProfiles


def client_times(profiles: DeviceProfiles, samples: jax.Array, bytes_up: float,
                 bytes_down: float) -> jax.Array:
  """Seconds each client spends on one round: download + compute + upload."""
  return bytes_down / profiles.downlink + samples / profiles.compute + bytes_up / profiles.uplink


def round_time(profiles: DeviceProfiles, samples: jax.Array, participating: jax.Array,
               bytes_up: float, bytes_down: float) -> jax.Array:
  """Simulated seconds of one synchronous round: its slowest participant.

  Args:
    profiles: the participants' profiles (already gathered), each ``[m]``.
    samples: samples each participant trains on this round, ``[m]``.
    participating: ``[m]`` bool; non-participants (offline, padding) do not count.
    bytes_up: bytes each participant uploads.
    bytes_down: bytes each participant downloads.

  Returns:
    Scalar float32; 0 if nobody participated.
  """
  t = client_times(profiles, samples.astype(jnp.float32), bytes_up, bytes_down)
  return jnp.max(jnp.where(participating, t, 0.0))


def tree_bytes(tree) -> int:
  """Bytes needed to send every array of a pytree uncompressed."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
