"""Per-round client sampling among the clients that are online."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_clients(key: jax.Array, availability: jax.Array,
                   num_sampled: int) -> tuple[jax.Array, jax.Array]:
  """Sample ``num_sampled`` distinct clients uniformly among those online this round.

  Client k is online with probability ``availability[k]``, independently (resolved to
  float32's uniform grid, 2**-23). Sampling is
  uniform without replacement among online clients; if fewer than ``num_sampled``
  are online, the extra slots hold offline clients marked as not participating
  (the round's shapes stay static).

  Args:
    key: this round's sampling key.
    availability: ``[num_clients]`` probabilities in (0, 1].
    num_sampled: clients per round (static).

  Returns:
    ``(ids, participating)``: int32 ``[num_sampled]`` client ids and bool
    ``[num_sampled]``.
  """
  k_online, k_pick = jax.random.split(key)
  n = availability.shape[0]
  # 1 - U lies in (0, 1] on a 2**-23 grid: availability 1 is always online, and one below
  # the grid's first step is never online (a plain U < p would be online whenever U == 0).
  online = (1.0 - jax.random.uniform(k_online, [n])) <= availability
  # Online clients get scores in [0, 1), offline ones in [-2, -1): top-k takes online first.
  score = jax.random.uniform(k_pick, [n]) - 2.0 * (~online)
  _, ids = jax.lax.top_k(score, num_sampled)
  return ids.astype(jnp.int32), online[ids]
