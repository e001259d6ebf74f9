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

Each is an optax ``GradientTransformationExtraArgs`` called inside the client map with one
client's LoRA tree *after local training* (parameters, not deltas) and its scalar
``weight``; it returns the new global tree, identical on every client (``out_axes=None``).
The client map is :class:`jaxfl.runtime.ClientAxis`'s, or your own ``jax.vmap`` or
``jax.shard_map`` with either ``check_vma`` (JAX's default ``True`` included): name every
axis the clients are spread over, mesh axes first (``('devices', 'clients')`` with a vmap
inside each device, as in the examples; ``'devices'`` with one client per device; the
``check_vma`` rule: :mod:`jaxfl.runtime`). Leaves that are not LoRA factors (the
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

import jax.numpy as jnp
import optax

from jaxfl.models.lora import LORA_A, LORA_B, LORA_KEYS, lora_factors, map_lora_layers
from jaxfl.runtime import AxisName, client_gather, split_axis_name
from jaxfl.transforms._lora_common import LoraAggregateState, _init, _round, _stacked
from jaxfl.transforms.lora_svd import flex_svd

__all__ = ["LoraAggregateState", "fedit_mean", "ffa_mean", "flex_svd", "stack_merge"]

_FACTORS = LORA_KEYS


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

    In your own ``jax.shard_map`` (``check_vma=True``, the default) over every device,
    vmapped on each, with a copy of both clients on every device (the same shares):

    >>> import numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> copies = jax.tree.map(lambda x: jnp.concatenate([x] * mesh.size), tree)
    >>> agg = fedit_mean(('devices', 'clients'))
    >>> sharded = jax.jit(jax.shard_map(
    ...     jax.vmap(lambda t: agg.update(t, agg.init(t))[0], axis_name='clients', out_axes=None),
    ...     mesh=mesh, in_specs=P('devices'), out_specs=P()))
    >>> jnp.round(lora.lora_delta(sharded(copies), 1.0), 6).tolist()
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

    In your own ``jax.shard_map`` (``check_vma=True``, the default) over every device,
    vmapped on each, with a copy of both clients on every device (the same shares):

    >>> import numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> copies = jax.tree.map(lambda x: jnp.concatenate([x] * mesh.size), tree)
    >>> agg = ffa_mean(('devices', 'clients'))
    >>> sharded = jax.jit(jax.shard_map(
    ...     jax.vmap(lambda t, w: agg.update(t, agg.init(t), weight=w)[0], axis_name='clients',
    ...              out_axes=None), mesh=mesh, in_specs=P('devices'), out_specs=P()))
    >>> out = sharded(copies, jnp.tile(jnp.array([3.0, 1.0]), mesh.size))
    >>> jnp.round(out['lora_b'], 6).tolist(), bool((out['lora_a'] == a).all())
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
        first = jnp.argmax(client_gather(rnd.share, axis_name) > 0)
        out[LORA_A] = client_gather(a, axis_name)[first]
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

    In your own ``jax.shard_map`` (``check_vma=True``, the default) over every device,
    vmapped on each, with a copy of both clients on every device (the same shares):

    >>> import numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> copies = jax.tree.map(lambda x: jnp.concatenate([x] * mesh.size), tree)
    >>> agg = stack_merge(('devices', 'clients'))
    >>> sharded = jax.jit(jax.shard_map(
    ...     jax.vmap(lambda t: agg.update(t, agg.init(t))[0], axis_name='clients', out_axes=None),
    ...     mesh=mesh, in_specs=P('devices'), out_specs=P()))
    >>> out = sharded(copies)  # rank K r: one block per client, 2 per device
    >>> out['lora_a'].shape == (2, 2 * mesh.size), jnp.round(lora.lora_delta(out, 1.0), 6).tolist()
    (True, [[0.5, 0.0], [0.0, 0.5]])
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
