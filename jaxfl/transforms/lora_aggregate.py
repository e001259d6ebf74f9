r"""Aggregators for LoRA adapters: FedIT, FFA-LoRA, FLoRA stacking and FlexLoRA.

A LoRA-adapted dense layer is a dict in the params pytree holding ``'kernel'``
:math:`W_0` ``[..., in, out]`` (frozen), optionally ``'bias'``, and the factors
``'lora_a'`` :math:`A` ``[..., in, r]`` (random at init) and ``'lora_b'`` :math:`B`
``[..., r, out]`` (zero at init); the layer computes
:math:`y = x W_0 + b + s\,(x A) B` with the static scale :math:`s = \alpha / r`, so the
adapter's dense update is :math:`\Delta W = s\,A B`. Leading ``...`` dims (layers stacked
for ``scan``) are batch dims throughout. A *LoRA tree* is any pytree of dicts in which
some dicts hold both ``'lora_a'`` and ``'lora_b'``.

Averaging the factors does not average the updates: with weights :math:`p_k = w_k / \sum_j w_j`,

.. math::
  \sum_k p_k A_k B_k - \bar A \bar B = \sum_k p_k (A_k - \bar A)(B_k - \bar B),
  \qquad \bar A = \sum_k p_k A_k,\ \bar B = \sum_k p_k B_k,

which is zero only when the clients' factors do not co-vary. The aggregators here differ
in how they deal with that cross term:

* :func:`fedit_mean` (FedIT) averages :math:`A` and :math:`B` separately and keeps it;
* :func:`ffa_mean` (FFA-LoRA) freezes a shared :math:`A`, so :math:`\bar A = A_k` and it vanishes;
* :func:`stack_merge` (FLoRA) stacks the factors along the rank axis: exact, rank :math:`K r`;
* :func:`flex_svd` (FlexLoRA) forms the exact :math:`\sum_k p_k A_k B_k` and refactorises it
  at a fixed rank by SVD: the best approximation at that rank.

Each is an optax ``GradientTransformationExtraArgs`` called inside the client map
(:class:`jaxfl.runtime.ClientAxis`) with one client's LoRA tree *after local training*
(parameters, not deltas) and its scalar ``weight``; it returns the new global tree,
identical on every client (``out_axes=None``). Leaves that are not LoRA factors (the
frozen kernel, biases, heads) get the weighted mean. A client with weight 0 contributes
nothing, not even non-finite values. If every weight is 0 (an empty round) and the
server's tree (the one the clients started from) is passed as optax's ``params``
argument, unmapped, the server keeps it: see each aggregator for what that means;
without ``params`` every client gets weight :math:`1/K` (returning zeros instead would
erase the base kernel, and :math:`A = B = 0` has zero gradient: the adapter could never
train again). They take and return parameters, not deltas (stacking and SVD need the
factors themselves), so a delta-based round such as
:class:`jaxfl.algorithms.fedavg.FedAvg`'s cannot use them as its aggregator unchanged.

None of them needs :math:`s`: each keeps :math:`s\,A B` for whatever :math:`s` the clients
use, so use the same :math:`s` to run or merge the result
(:func:`jaxfl.models.lora.merge_lora`). A model
with another scale :math:`s'` (e.g. one built for the stacked rank) must multiply both
factors by :math:`\sqrt{s/s'}`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfl.errors import ConfigError
from jaxfl.models.lora import LORA_A, LORA_B, LORA_KEYS, lora_factors, map_lora_layers, rank_mask
from jaxfl.runtime import AxisName, client_weighted_sum, split_axis_name

_FACTORS = LORA_KEYS


class LoraAggregateState(NamedTuple):
  """Running count of aggregation rounds (int32 scalar), for logging."""

  count: jax.Array


def _gather(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """``[K, ...]``: every client's ``x`` in global client order (device-major under shard_map)."""
  inner, outer = split_axis_name(axis_name)
  out = jax.lax.all_gather(x, inner)
  return jax.lax.all_gather(out, outer, tiled=True) if outer else out


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
  total = jax.lax.psum(weight, axis_name)
  empty = total <= 0
  # Empty round: the server's tree is the answer if we have it (p = 0 masks every client);
  # otherwise the clients count equally rather than returning zeros, which would kill
  # the adapter (A = B = 0 has zero gradient) and the base kernel.
  fallback = 0.0 if has_server else 1.0 / jax.lax.psum(1.0, axis_name)
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
  a_all, b_all = _gather(a, rnd.axis_name), _gather(b, rnd.axis_name)  # [K, ..., in|r, r|out]
  k, r = a_all.shape[0], a.shape[-1]
  # Client-major along the rank axis: columns k*r .. k*r + r - 1 of A_g are client k's.
  a_g = jnp.moveaxis(a_all, 0, -2).reshape(a.shape[:-1] + (k * r,))
  b_g = jnp.moveaxis(b_all, 0, -3).reshape(b.shape[:-2] + (k * r, b.shape[-1]))
  return a_g, b_g


# --- aggregators ----------------------------------------------------------------------------


def fedit_mean(axis_name: AxisName) -> optax.GradientTransformationExtraArgs:
  r"""FedIT: the weighted mean of :math:`A` and of :math:`B`, separately.

  .. math::
    A_g = \sum_k p_k A_k, \qquad B_g = \sum_k p_k B_k, \qquad p_k = \frac{w_k}{\sum_j w_j}

  (Zhang et al., "Towards Building the Federated GPT", arXiv 2305.05644: FedAvg applied
  to the adapters; its method text was not read here, the rule is that of its public
  code, which averages every adapter tensor weighted by local data size). Inexact:
  :math:`s A_g B_g` misses the mean update :math:`\sum_k p_k s A_k B_k` by the cross term
  :math:`s \sum_k p_k (A_k - A_g)(B_k - B_g)` (module docstring). Every other leaf gets
  the weighted mean too.

  Args:
    axis_name: the client axis name(s): ``ClientAxis.axis_name``.

  Returns:
    A transform whose ``update(tree, state, params=None, *, weight=1.0)`` takes one
    client's LoRA tree after local training and its scalar weight and returns the new
    global tree (same on every client). In an empty round (every weight 0) it returns
    ``params``, the server's tree (unmapped), when given, else the plain mean.

  Examples:
    Two clients with orthogonal rank-1 adapters: the mean update is :math:`I/2`, the
    product of the means is not.

    >>> import jax, jax.numpy as jnp
    >>> from jaxfl.models import lora
    >>> tree = {'lora_a': jnp.array([[[1.0], [0.0]], [[0.0], [1.0]]]),
    ...         'lora_b': jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])}
    >>> agg = fedit_mean('clients')
    >>> out = jax.jit(jax.vmap(lambda t: agg.update(t, agg.init(t))[0], axis_name='clients',
    ...                        out_axes=None))(tree)
    >>> lora.lora_delta(out, 1.0).tolist()
    [[0.25, 0.25], [0.25, 0.25]]
  """
  split_axis_name(axis_name)

  def update_fn(tree, state, params=None, *, weight=1.0, **extra_args):
    del extra_args
    rnd = _round(weight, axis_name, params is not None)

    def lora_fn(path, layer, server):
      lora_factors(path, layer)
      return {k: rnd.mean(v, None if server is None else server[k]) for k, v in layer.items()}

    return map_lora_layers(tree, params, lora_fn, rnd.mean), LoraAggregateState(state.count + 1)

  return optax.GradientTransformationExtraArgs(_init, update_fn)


def ffa_mean(axis_name: AxisName) -> optax.GradientTransformationExtraArgs:
  r"""FFA-LoRA: :math:`A` frozen and shared, only :math:`B` averaged; exact.

  .. math::
    A_g = A, \qquad B_g = \sum_k p_k B_k, \qquad
    s A_g B_g = \sum_k p_k\, s A B_k \quad \text{exactly}

  (Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024,
  arXiv 2403.12313). Train with labels from :func:`jaxfl.models.lora.is_lora_b_path` so
  :math:`A` stays the shared random
  init; only :math:`B` need be communicated. The output's :math:`A` is ``params``'
  ``lora_a`` when ``params`` is given, else client 0's, bit for bit (the clients' are
  identical by construction, and a mean would round). Other leaves get the weighted mean.

  Args:
    axis_name: the client axis name(s): ``ClientAxis.axis_name``.

  Returns:
    A transform with ``update(tree, state, params=None, *, weight=1.0)`` as in
    :func:`fedit_mean`, including the empty round (``params`` if given, else the plain mean).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxfl.models import lora
    >>> a = jnp.array([[1.0], [2.0]])
    >>> tree = {'lora_a': jnp.stack([a, a]), 'lora_b': jnp.array([[[1.0, 0.0]], [[0.0, 4.0]]])}
    >>> agg = ffa_mean('clients')
    >>> out = jax.jit(jax.vmap(lambda t, w: agg.update(t, agg.init(t), weight=w)[0],
    ...                        axis_name='clients', out_axes=None))(tree, jnp.array([3.0, 1.0]))
    >>> out['lora_b'].tolist(), bool((out['lora_a'] == a).all())
    ([[0.75, 1.0]], True)
  """
  split_axis_name(axis_name)

  def update_fn(tree, state, params=None, *, weight=1.0, **extra_args):
    del extra_args
    rnd = _round(weight, axis_name, params is not None)

    def lora_fn(path, layer, server):
      a, _ = lora_factors(path, layer)
      out = {k: rnd.mean(v, None if server is None else server[k])
             for k, v in layer.items() if k != LORA_A}
      if server is None:  # the first member's A (bitwise its input): a weight-0 client's
        # factors may be non-finite, so client 0 is not good enough
        first = jnp.argmax(_gather(rnd.share, axis_name) > 0)
        out[LORA_A] = _gather(a, axis_name)[first]
      else:
        out[LORA_A] = jnp.asarray(server[LORA_A])
      return {k: out[k] for k in layer}

    return map_lora_layers(tree, params, lora_fn, rnd.mean), LoraAggregateState(state.count + 1)

  return optax.GradientTransformationExtraArgs(_init, update_fn)


def stack_merge(axis_name: AxisName) -> optax.GradientTransformationExtraArgs:
  r"""FLoRA: stack the clients' factors along the rank axis; exact, rank :math:`K r`.

  .. math::
    A_g = [\,p_1 A_1, \dots, p_K A_K\,] \in \mathbb R^{in \times K r}, \qquad
    B_g = \begin{bmatrix} B_1 \\ \vdots \\ B_K \end{bmatrix} \in \mathbb R^{K r \times out},
    \qquad A_g B_g = \sum_k p_k A_k B_k

  (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
  Low-Rank Adaptations", NeurIPS 2024, arXiv 2409.05976). The clients then merge
  :math:`s A_g B_g` into :math:`W_0` (:func:`jaxfl.models.lora.merge_lora`) and
  re-initialise their
  adapters (random :math:`A`, zero :math:`B`) for the next round (assumed: the merge and
  re-initialisation are not from FLoRA's text, which was not read here).

  Heterogeneous ranks (this project's construction, assumed): the model is built at
  :math:`r_{max}` and a client of rank
  :math:`r_k` passes ``rank=r_k``; its factors are zero-padded
  (:func:`jaxfl.models.lora.mask_rank`) beyond
  it, and zero columns of :math:`A` / rows of :math:`B` add nothing, so stacking stays
  exact. With one model every client uses the same :math:`s = \alpha / r_{max}`.

  Column block :math:`k` of :math:`A_g` (and row block of :math:`B_g`) is client
  :math:`k`'s, in global client order; a client with weight 0 leaves its blocks zero. In
  an empty round with ``params`` given the factors are all zero (:math:`\Delta W_g = 0`:
  merging keeps :math:`W_0`) and the other leaves are ``params``'; without ``params`` the
  clients are stacked with :math:`p_k = 1/K`.

  Args:
    axis_name: the client axis name(s): ``ClientAxis.axis_name``.

  Returns:
    A transform whose ``update(tree, state, params=None, *, weight=1.0, rank=None)``
    takes one client's LoRA tree, weight and rank (``None``: the full ``r``) and returns
    the global tree with ``'lora_a'`` ``[..., in, K r]`` and ``'lora_b'``
    ``[..., K r, out]``; other leaves get the weighted mean.

  Examples:
    The update of the :func:`fedit_mean` example, exactly:

    >>> import jax, jax.numpy as jnp
    >>> from jaxfl.models import lora
    >>> tree = {'lora_a': jnp.array([[[1.0], [0.0]], [[0.0], [1.0]]]),
    ...         'lora_b': jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])}
    >>> agg = stack_merge('clients')
    >>> out = jax.jit(jax.vmap(lambda t: agg.update(t, agg.init(t))[0], axis_name='clients',
    ...                        out_axes=None))(tree)
    >>> out['lora_a'].shape, lora.lora_delta(out, 1.0).tolist()
    ((2, 2), [[0.5, 0.0], [0.0, 0.5]])
  """
  split_axis_name(axis_name)

  def update_fn(tree, state, params=None, *, weight=1.0, rank=None, **extra_args):
    del extra_args
    rnd = _round(weight, axis_name, params is not None)

    def lora_fn(path, layer, server):
      a, b = lora_factors(path, layer)
      out = {k: rnd.mean(v, None if server is None else server[k])
             for k, v in layer.items() if k not in _FACTORS}
      out[LORA_A], out[LORA_B] = _stacked(rnd, a, b, rank)
      return {k: out[k] for k in layer}

    return map_lora_layers(tree, params, lora_fn, rnd.mean), LoraAggregateState(state.count + 1)

  return optax.GradientTransformationExtraArgs(_init, update_fn)


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
  """
  split_axis_name(axis_name)
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ConfigError("rank", "a positive int (the aggregate's LoRA rank)", rank)
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
