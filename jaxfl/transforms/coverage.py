r"""Layer-coverage aggregation: each block averaged over the clients that trained it.

With depth-adaptive federated LoRA (FedQuad, arXiv 2506.01001; HierFedLoRA, arXiv
2503.21213) client :math:`k` trains only some transformer blocks (its top :math:`d_k`, the
"LoRA depth": :func:`depth_trained`). Averaging every leaf over every client would pull a
block's adapter back towards the value the clients that skipped it never moved. So with
weights :math:`w_k` (samples) and :math:`t_{k\ell} \in \{0, 1\}` (client :math:`k` trained
block :math:`\ell`), each leaf :math:`\theta` of block :math:`\ell` becomes

.. math::
  \theta_g = \frac{\sum_k w_k t_{k\ell}\, \theta_k}{\sum_k w_k t_{k\ell}}
  \quad\text{if } \sum_k w_k t_{k\ell} > 0, \qquad \theta_g = \theta_{\text{server}}
  \text{ otherwise,}

and leaves outside the blocks (embeddings, heads) get the plain weighted mean. The rule
for a layer nobody trained (keep its value) and the per-layer weights follow the
reconstruction in the project's digest of both papers (neither paper's aggregation text
is public: arXiv 2506.01001 and 2503.21213, reconstructions); the LoRA factors are
averaged separately, as FedIT does (:func:`~jaxfl.transforms.fedit_mean`), which this
equals when every client trains every block.

Like the other aggregators (:mod:`jaxfl.transforms.lora_aggregate`) it is called inside
the client map with one client's tree *after local training* (parameters) and returns the
new global tree, identical on every client; :func:`~jaxfl.transforms.delta_aggregator`
makes it a FedAvg-style delta aggregator. In your own ``jax.shard_map`` name every axis
the clients are spread over, mesh axes first (``check_vma`` either way: :mod:`jaxfl.runtime`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfl.errors import ConfigError
from jaxfl.runtime import AxisName, client_sum, client_weighted_sum, split_axis_name
from jaxfl.transforms._lora_common import _round
from jaxfl.transforms.masking import _layer_lookup


class CoverageState(NamedTuple):
  """State of :func:`coverage_mean`.

  Attributes:
    count: aggregation rounds so far (int32 scalar).
    coverage: ``float32[L]``, the total weight that trained each block in the last round
      (0: the block kept the server's value).
  """

  count: jax.Array
  coverage: jax.Array


def depth_trained(num_layers: int, depth) -> jax.Array:
  """``bool[num_layers]``: the top ``depth`` blocks (those nearest the output), which a
  client of LoRA depth ``depth`` trains; ``depth`` may be traced (per client under vmap).

  >>> depth_trained(4, 1).tolist(), depth_trained(4, 3).tolist()
  ([False, False, False, True], [False, True, True, True])
  """
  return jnp.arange(num_layers) >= num_layers - jnp.asarray(depth)


def coverage_mean(axis_name: AxisName, layer_of: Any) -> optax.GradientTransformationExtraArgs:
  r"""Each block's leaves averaged over the clients that trained it (module docstring).

  Args:
    axis_name: the client axis name(s): ``ClientAxis.axis_name``.
    layer_of: a pytree with the tree's structure holding each leaf's block index (``-1``
      outside the blocks), e.g. :func:`jaxfl.peft.layerdrop.layer_index_tree` of the params.

  Returns:
    A transform whose ``update(tree, state, params=None, *, weight=1.0, trained=None)``
    takes one client's tree after local training, its scalar weight and ``trained``, a
    ``bool[L]`` of the blocks it trained (default: all), and returns the new global tree.
    A block no client with weight > 0 trained keeps ``params`` (the server's tree,
    unmapped) when given; without it, such a block gets the plain weighted mean (the
    clients that skipped a block hold the server's value, so this is the same up to
    rounding). A client with weight 0 contributes nothing, not even non-finite values.

  Raises:
    ConfigError: ``layer_of`` holds no block index (field ``layer_of``); ``trained`` is
      not of shape ``[L]`` (field ``trained``); the tree's leaves are not ``layer_of``'s.

  Examples:
    Two clients of weight 1 and 3 and a two-block tree: block 1 trained by both, block 0
    by the first alone, so block 0 takes its value:

    >>> import jax, jax.numpy as jnp
    >>> layer_of = {'b0': 0, 'b1': 1}
    >>> agg = coverage_mean('clients', layer_of)
    >>> tree = {'b0': jnp.array([2.0, 0.0]), 'b1': jnp.array([4.0, 8.0])}
    >>> trained = jnp.array([[True, True], [False, True]])
    >>> def client(t, w, k):
    ...   return agg.update(t, agg.init(t), weight=w, trained=k)[0]
    >>> out = jax.vmap(client, axis_name='clients', out_axes=None)(
    ...     tree, jnp.array([1.0, 3.0]), trained)
    >>> out['b0'].tolist(), out['b1'].tolist()
    (2.0, 7.0)

    In your own ``jax.shard_map`` over every device (``check_vma=True``, the default),
    vmapped on each, with a copy of both clients on every device (the same shares):

    >>> import numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()), ('devices',))
    >>> agg = coverage_mean(('devices', 'clients'), layer_of)
    >>> tile = lambda x: jnp.concatenate([x] * mesh.size)
    >>> sharded = jax.jit(jax.shard_map(
    ...     jax.vmap(client, axis_name='clients', out_axes=None),
    ...     mesh=mesh, in_specs=P('devices'), out_specs=P()))
    >>> out = sharded(jax.tree.map(tile, tree), tile(jnp.array([1.0, 3.0])), tile(trained))
    >>> out['b0'].tolist(), out['b1'].tolist()
    (2.0, 7.0)
  """
  split_axis_name(axis_name)
  table, num_layers = _layer_lookup(layer_of)

  def init_fn(params):
    del params
    return CoverageState(jnp.zeros([], jnp.int32), jnp.zeros([num_layers], jnp.float32))

  def update_fn(tree, state, params=None, *, weight=1.0, trained=None, **extra_args):
    del extra_args
    has_server = params is not None
    rnd = _round(weight, axis_name, has_server)
    w = jnp.where(jnp.asarray(weight, jnp.float32) > 0, jnp.asarray(weight, jnp.float32), 0.0)
    if trained is None:
      trained = jnp.ones([num_layers], bool)
    trained = jnp.asarray(trained)
    if trained.shape != (num_layers,):
      raise ConfigError("trained", f"a bool[{num_layers}] of the blocks this client trained",
                        f"shape {trained.shape}")
    block_w = w * trained.astype(jnp.float32)  # [L]
    totals = client_sum(block_w, axis_name)
    covered = totals > 0
    # A block nobody trained: the server's value (share 0) or the plain mean (rnd.share).
    shares = jnp.where(covered, block_w / jnp.where(covered, totals, 1.0),
                       0.0 if has_server else rnd.share)

    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    server = treedef.flatten_up_to(params) if has_server else [None] * len(leaves)
    out = []
    for (path, x), s in zip(leaves, server):
      if tuple(path) not in table:
        raise ConfigError("layer_of", "a block index for every leaf of the tree",
                          f"none for {jax.tree_util.keystr(path)}")
      layer = table[tuple(path)]
      if layer < 0:
        out.append(rnd.mean(x, s))
        continue
      share = shares[layer]
      x = jnp.asarray(x)
      mean = client_weighted_sum(jnp.where(share > 0, x, jnp.zeros_like(x)), share, axis_name)
      out.append(mean if s is None else jnp.where(covered[layer], mean,
                                                  jnp.asarray(s, mean.dtype)))
    return treedef.unflatten(out), CoverageState(state.count + 1, totals)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
