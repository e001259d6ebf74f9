r"""FlexLoRA (:func:`flex_svd`): the exact weighted mean of the clients' dense updates
:math:`\sum_k p_k A_k B_k`, refactorised at a fixed rank by a truncated SVD (the best
approximation at that rank, Eckart-Young). The conventions (parameters in, the global
tree out, weights, empty rounds, the scale :math:`s`) are
:mod:`jaxfl.transforms.lora_aggregate`'s; it re-exports :func:`flex_svd`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxfl.errors import ConfigError
from jaxfl.models.lora import LORA_A, LORA_B, LORA_KEYS, lora_factors, map_lora_layers
from jaxfl.runtime import AxisName, split_axis_name
from jaxfl.transforms._lora_common import LoraAggregateState, _init, _round, _stacked

_FACTORS = LORA_KEYS


def _svd(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Thin SVD of :math:`M = A B` from the factors (``[..., in, R]``, ``[..., R, out]``).

  When :math:`R < \min(in, out)`, :math:`A = Q_a R_a` and :math:`B^\top = Q_b R_b` give
  :math:`M = Q_a (R_a R_b^\top) Q_b^\top`: an ``[R, R]`` SVD instead of ``[in, out]``.
  """
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  n_in, n_rank, n_out = a.shape[-2], a.shape[-1], b.shape[-1]
  if n_rank < min(n_in, n_out):
    q_a, r_a = jnp.linalg.qr(a)
    q_b, r_b = jnp.linalg.qr(jnp.swapaxes(b, -1, -2))
    u, sigma, vt = jnp.linalg.svd(jnp.matmul(r_a, jnp.swapaxes(r_b, -1, -2)),
                                  full_matrices=False)
    u, vt = jnp.matmul(q_a, u), jnp.matmul(vt, jnp.swapaxes(q_b, -1, -2))
  else:
    u, sigma, vt = jnp.linalg.svd(jnp.matmul(a, b), full_matrices=False)
  # Fix each component's sign (largest |entry| of u positive): U and V are otherwise only
  # defined up to a sign per component, which could differ between runtimes.
  idx = jnp.argmax(jnp.abs(u), axis=-2, keepdims=True)
  sign = jnp.sign(jnp.take_along_axis(u, idx, axis=-2))
  sign = jnp.where(sign == 0, 1.0, sign)
  return u * sign, sigma, vt * jnp.swapaxes(sign, -1, -2)


def flex_svd(axis_name: AxisName, rank: int) -> optax.GradientTransformationExtraArgs:
  r"""FlexLoRA: the exact mean update, refactorised at rank ``rank`` by SVD.

  .. math::
    \Delta W_g = \sum_k p_k\, s A_k B_k = s\, U \Sigma V^\top, \qquad
    A_g = U_r \Sigma_r^{1/2}, \quad B_g = \Sigma_r^{1/2} V_r^\top, \qquad
    \| s A_g B_g - \Delta W_g \|_F = s \Big(\sum_{j > r} \sigma_j^2\Big)^{1/2}

  (Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous
  Tasks and Client Resources", NeurIPS 2024, arXiv 2402.11505). By Eckart-Young
  :math:`s A_g B_g` is the best rank-:math:`r` approximation of :math:`\Delta W_g` in
  Frobenius and spectral norm; it is exact when ``rank`` is at least the rank of
  :math:`\Delta W_g`. The balanced split (:math:`\Sigma^{1/2}` on each side; this
  project's choice of factorisation, assumed for arXiv 2402.11505) gives both
  factors the same norm, so neither dominates the next round's gradients; :math:`s`
  cancels (:math:`\Sigma` is that of :math:`\sum_k p_k A_k B_k`). Each component's sign is
  fixed (largest entry of :math:`U_{:, j}` positive), so every runtime returns the same
  factors.

  :math:`\Delta W_g` is never summed densely over clients: the SVD is taken of the
  stacked factors' product (:func:`stack_merge`), through QR when the stacked rank
  :math:`K r` is below :math:`\min(in, out)`. Heterogeneous client ranks: pass ``rank=r_k``
  to ``update`` as in :func:`stack_merge`; afterwards a client of rank :math:`r_k` keeps
  the first :math:`r_k` components (:func:`jaxfl.models.lora.mask_rank`), its best
  approximation. In an
  empty round with ``params`` given, :math:`\Delta W_g` is ``params``' own adapter
  (refactorised: unchanged up to rounding if its rank is at most ``rank``) and the other
  leaves are ``params``'; without ``params`` the clients count equally.

  Args:
    axis_name: the client axis name(s): ``ClientAxis.axis_name``.
    rank: the output rank :math:`r`; components beyond :math:`\min(in, out)` are zero.

  Returns:
    A transform whose ``update(tree, state, params=None, *, weight=1.0, rank=None)``
    takes one client's LoRA tree, weight and own rank (``None``: the full ``r``; not the
    output ``rank``) and returns the global tree with ``'lora_a'`` ``[..., in, rank]``
    and ``'lora_b'`` ``[..., rank, out]``; other leaves get the weighted mean.

  Raises:
    ConfigError: ``rank`` is not a positive int.

  Examples:
    With weights 3:1 the mean update is diag(0.75, 0.25); at rank 1 only its top
    singular component survives:

    >>> import jax, jax.numpy as jnp
    >>> from jaxfl.models import lora
    >>> tree = {'lora_a': jnp.array([[[1.0], [0.0]], [[0.0], [1.0]]]),
    ...         'lora_b': jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])}
    >>> agg = flex_svd('clients', rank=1)
    >>> out = jax.jit(jax.vmap(lambda t, w: agg.update(t, agg.init(t), weight=w)[0],
    ...                        axis_name='clients', out_axes=None))(tree, jnp.array([3.0, 1.0]))
    >>> jnp.round(lora.lora_delta(out, 1.0), 6).tolist()
    [[0.75, 0.0], [0.0, 0.0]]

    In your own ``jax.shard_map`` (``check_vma=True``, the default) over every device,
    vmapped on each, with a copy of both clients on every device (the same shares):

    >>> import numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> copies = jax.tree.map(lambda x: jnp.concatenate([x] * mesh.size), tree)
    >>> agg = flex_svd(('devices', 'clients'), rank=1)
    >>> sharded = jax.jit(jax.shard_map(
    ...     jax.vmap(lambda t, w: agg.update(t, agg.init(t), weight=w)[0], axis_name='clients',
    ...              out_axes=None), mesh=mesh, in_specs=P('devices'), out_specs=P()))
    >>> out = sharded(copies, jnp.tile(jnp.array([3.0, 1.0]), mesh.size))
    >>> jnp.round(lora.lora_delta(out, 1.0), 6).tolist()
    [[0.75, 0.0], [0.0, 0.0]]
  """
  split_axis_name(axis_name)
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ConfigError("rank", "a positive int (the aggregate's LoRA rank; it sets shapes, so "
                      "optax.inject_hyperparams needs static_args=('rank',))", rank)
  out_rank = rank

  def update_fn(tree, state, params=None, *, weight=1.0, rank=None, **extra_args):
    del extra_args
    rnd = _round(weight, axis_name, params is not None)

    def lora_fn(path, layer, server):
      a, b = lora_factors(path, layer)
      out = {k: rnd.mean(v, None if server is None else server[k])
             for k, v in layer.items() if k not in _FACTORS}
      a_g, b_g = _stacked(rnd, a, b, rank)
      if server is not None:
        # The server's adapter as one more block, weighted 1 in an empty round and 0 otherwise.
        a_s, b_s = lora_factors(path, server)
        a_g = jnp.concatenate([a_g, jnp.where(rnd.empty, a_s, 0).astype(a_g.dtype)], axis=-1)
        b_g = jnp.concatenate([b_g, jnp.where(rnd.empty, b_s, 0).astype(b_g.dtype)], axis=-2)
      u, sigma, vt = _svd(a_g, b_g)
      keep = min(out_rank, sigma.shape[-1])
      root = jnp.sqrt(sigma[..., :keep])
      new_a = u[..., :keep] * root[..., None, :]
      new_b = root[..., :, None] * vt[..., :keep, :]
      pad = out_rank - keep
      new_a = jnp.pad(new_a, [(0, 0)] * (new_a.ndim - 1) + [(0, pad)])
      new_b = jnp.pad(new_b, [(0, 0)] * (new_b.ndim - 2) + [(0, pad), (0, 0)])
      out[LORA_A], out[LORA_B] = new_a.astype(a.dtype), new_b.astype(b.dtype)
      return {k: out[k] for k in layer}

    return map_lora_layers(tree, params, lora_fn, rnd.mean), LoraAggregateState(state.count + 1)

  return optax.GradientTransformationExtraArgs(_init, update_fn)
