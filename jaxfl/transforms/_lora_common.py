"""What the LoRA aggregators share (:mod:`jaxfl.transforms.lora_aggregate` and
:mod:`jaxfl.transforms.lora_svd`): a round's client shares, the masked weighted mean and
FLoRA's stacked factors."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxfl.models.lora import rank_mask
from jaxfl.runtime import AxisName, client_count, client_gather, client_sum, client_weighted_sum


class LoraAggregateState(NamedTuple):
  """Running count of aggregation rounds (int32 scalar), for logging."""

  count: jax.Array


class _Round(NamedTuple):
  share: jax.Array  # this client's p_k
  empty: jax.Array  # every weight is 0
  axis_name: AxisName

  def mean(self, x: jax.Array, server: jax.Array | None = None) -> jax.Array:
    """Weighted mean of a leaf; in an empty round the server's leaf if given."""
    x = jnp.asarray(x)
    # Mask, not only weight by 0: a non-member's values may be non-finite (0 * inf = nan).
    masked = jnp.where(self.share > 0, x, jnp.zeros_like(x))
    out = client_weighted_sum(masked, self.share, self.axis_name)
    if server is None:
      return out
    return jnp.where(self.empty, jnp.asarray(server, out.dtype), out)


def _round(weight, axis_name: AxisName, has_server: bool) -> _Round:
  weight = jnp.asarray(weight, jnp.float32)
  weight = jnp.where(weight > 0, weight, 0.0)
  total = client_sum(weight, axis_name)
  empty = total <= 0
  # Empty round: the server's tree is the answer if we have it (p = 0 masks every client);
  # otherwise the clients count equally rather than returning zeros, which would kill
  # the adapter (A = B = 0 has zero gradient) and the base kernel.
  fallback = 0.0 if has_server else 1.0 / client_count(axis_name)
  share = jnp.where(empty, fallback, weight / jnp.where(empty, 1.0, total))
  return _Round(share, empty, axis_name)


def _init(params):
  del params
  return LoraAggregateState(count=jnp.zeros([], jnp.int32))


def _stacked(rnd: _Round, a: jax.Array, b: jax.Array, rank) -> tuple[jax.Array, jax.Array]:
  r"""FLoRA's stacked factors :math:`[p_1 A_1, \dots, p_K A_K]`, :math:`[B_1; \dots; B_K]`."""
  if rank is not None:
    a, b = rank_mask(a, rank, -1), rank_mask(b, rank, -2)
  member = rnd.share > 0
  a = jnp.where(member, rnd.share.astype(a.dtype) * a, jnp.zeros_like(a))
  b = jnp.where(member, b, jnp.zeros_like(b))
  # [K, ..., in|r, r|out]: every client's, in global client order (device-major).
  a_all, b_all = client_gather(a, rnd.axis_name), client_gather(b, rnd.axis_name)
  k, r = a_all.shape[0], a.shape[-1]
  # Client-major along the rank axis: columns k*r .. k*r + r - 1 of A_g are client k's.
  a_g = jnp.moveaxis(a_all, 0, -2).reshape(a.shape[:-1] + (k * r,))
  b_g = jnp.moveaxis(b_all, 0, -3).reshape(b.shape[:-2] + (k * r, b.shape[-1]))
  return a_g, b_g
