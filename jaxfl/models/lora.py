"""LoRA in one place: the adapter layer, its parameter names, and trainability as labels on
parameter paths (selection, split and combine).

:class:`LoRALinear` is the dense layer every :mod:`jaxfl.models.transformer` block uses;
its adapter factors are named :data:`LORA_A` and :data:`LORA_B` (:data:`LORA_KEYS`), the
names every path rule below and every LoRA aggregator (:mod:`jaxfl.transforms.lora_aggregate`)
read. A *LoRA tree* is any pytree of dicts in which some dicts hold both factors;
:func:`mask_rank`, :func:`lora_delta` and :func:`merge_lora` work on any of them.

A parameter tree is a nested dict (``nnx.to_pure_dict``); a leaf's *path* is the tuple of
keys leading to it, e.g. ``('blocks', 3, 'query', 'lora_a')``. Every PEFT method is a
rule on paths that says which leaves train:

* LoRA (Hu et al. 2021, arXiv 2106.09685): the adapter factors ``lora_a``/``lora_b``;
* LoRA depth ``d`` (FedQuad arXiv 2506.01001, HierFedLoRA arXiv 2503.21213): adapters of
  blocks ``L - d .. L - 1`` only;
* block expansion (FedBE arXiv 2506.05977, LLaMA Pro arXiv 2401.02415): every leaf of the
  new blocks (a reconstruction from FedBE's abstract and LLaMA Pro's);
* full fine-tuning: everything.

:func:`path_labels` turns a rule into an optax label tree (``'train'``/``'freeze'``) for
``optax.partition``; :func:`split` cuts the tree into the trainable and frozen parts, so
that ``jax.grad`` differentiates (and stores activations for) only what trains. Adapters
fold into their base weights with :func:`jaxfl.transforms.lora_aggregate.merge_lora`.

Examples:
  >>> import jax.numpy as jnp, optax
  >>> params = {'blocks': {0: {'query': {'kernel': jnp.ones((2, 2)),
  ...                                    'lora_a': jnp.ones((2, 1)),
  ...                                    'lora_b': jnp.zeros((1, 2))}}}}
  >>> labels = path_labels(params, is_lora_path)
  >>> labels['blocks'][0]['query']
  {'kernel': 'freeze', 'lora_a': 'train', 'lora_b': 'train'}
  >>> trainable, frozen = split(params, labels)
  >>> sorted(trainable['blocks'][0]['query'])
  ['lora_a', 'lora_b']
  >>> combine(trainable, frozen) == params
  True
  >>> tx = optimizer(optax.sgd(0.1), labels)  # frozen leaves get zero updates
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxfl.errors import check

Path = tuple[Any, ...]
PathRule = Callable[[Path], bool]

TRAIN, FREEZE = "train", "freeze"
LORA_A, LORA_B = "lora_a", "lora_b"
LORA_KEYS = (LORA_A, LORA_B)


class LoRALinear(nnx.Module):
  """Dense layer ``y = x W + b`` with an optional rank-``r`` adapter ``(alpha/r) (x A) B``.

  ``W`` is ``[in, out]`` (LeCun-normal), ``A`` ``[in, r]`` Kaiming-uniform with bound
  ``1/sqrt(in)`` (PyTorch's ``kaiming_uniform_(a=sqrt(5))``, assumed to be HF PEFT's
  default, whose docs call it Kaiming-uniform), ``B`` zero (LoRA, arXiv 2106.09685).
  The adapter factors are :class:`flax.nnx.LoRAParam` variables named ``lora_a`` and
  ``lora_b``.
  """

  def __init__(self, in_features: int, out_features: int, *, rank: int = 0, scale: float = 0.0,
               rngs: nnx.Rngs):
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (in_features,
                                                                            out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,)))
    self.scale = scale
    if rank:
      bound = 1.0 / math.sqrt(in_features)
      self.lora_a = nnx.LoRAParam(jax.random.uniform(rngs.params(), (in_features, rank),
                                                     minval=-bound, maxval=bound))
      self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_features)))
    else:
      self.lora_a = self.lora_b = None

  def __call__(self, x: jax.Array) -> jax.Array:
    # Flat rows: XLA:CPU runs 2-D matmuls (and their weight gradients, which contract over
    # batch and time) markedly faster than batched 3-D ones, the adapters' thin products most.
    rows = x.reshape(-1, x.shape[-1])
    y = rows @ self.kernel[...] + self.bias[...][None]
    if self.lora_a is not None:
      y = y + self.scale * ((rows @ self.lora_a[...]) @ self.lora_b[...])
    return y.reshape(*x.shape[:-1], y.shape[-1])



def is_lora_path(path: Path) -> bool:
  """Adapter factors: the last key is ``lora_a`` or ``lora_b``."""
  return bool(path) and path[-1] in LORA_KEYS


def is_lora_b_path(path: Path) -> bool:
  """FFA-LoRA's trainable set (Sun et al., arXiv 2403.12313): ``lora_b`` only, ``A`` frozen."""
  return bool(path) and path[-1] == LORA_B


def block_of(path: Path, prefix: str = "blocks") -> int:
  """Block index of a path under ``prefix`` (``('blocks', 3, ...)`` -> 3), else -1."""
  if len(path) >= 2 and path[0] == prefix:
    return int(path[1])
  return -1


def in_blocks(blocks: Iterable[int], rule: PathRule | None = None) -> PathRule:
  """Paths inside the given blocks (and satisfying ``rule`` if given)."""
  blocks = frozenset(int(b) for b in blocks)
  return lambda path: block_of(path) in blocks and (rule is None or rule(path))


def lora_depth_rule(num_layers: int, depth: int) -> PathRule:
  """Adapters of the top ``depth`` blocks: LoRA depth counted from the output."""
  return in_blocks(range(num_layers - depth, num_layers), is_lora_path)


def everything(path: Path) -> bool:
  del path
  return True


def leaf_paths(tree: Any) -> list[tuple[Path, Any]]:
  """``(path, leaf)`` of every leaf, paths as tuples of plain keys."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(tuple(_key(k) for k in kp), leaf) for kp, leaf in flat]


def _key(k) -> Any:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


def path_labels(params: Any, rule: PathRule) -> Any:
  """A tree mirroring ``params`` with ``'train'`` where ``rule(path)`` holds, else ``'freeze'``."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, _: TRAIN if rule(tuple(_key(k) for k in kp)) else FREEZE, params)


def optimizer(tx: optax.GradientTransformation, labels: Any) -> optax.GradientTransformation:
  """``tx`` on the ``'train'`` leaves, zero updates (and no state) on the ``'freeze'`` ones."""
  return optax.partition({TRAIN: tx, FREEZE: optax.set_to_zero()}, labels)


def split(params: dict, labels: Any) -> tuple[dict, dict]:
  """Cut ``params`` into ``(trainable, frozen)`` nested dicts holding only their own leaves.

  Empty sub-dicts are dropped, so ``jax.grad`` over ``trainable`` sees exactly the leaves
  that train. :func:`combine` is the inverse.
  """

  def go(p, l):
    if isinstance(p, dict):
      t, f = {}, {}
      for k in p:
        tk, fk = go(p[k], l[k])
        if tk is not None:
          t[k] = tk
        if fk is not None:
          f[k] = fk
      return (t or None), (f or None)
    return (p, None) if l == TRAIN else (None, p)

  t, f = go(params, labels)
  return t or {}, f or {}


def combine(a: dict, b: dict) -> dict:
  """Deep union of two nested dicts with disjoint leaves (inverse of :func:`split`)."""
  out = dict(a)
  for k, v in b.items():
    if k in out and isinstance(out[k], dict) and isinstance(v, dict):
      out[k] = combine(out[k], v)
    elif k in out:
      raise ValueError(f"leaf {k!r} is in both trees")
    else:
      out[k] = v
  return out


def count(tree: Any) -> int:
  """Number of scalars in ``tree``."""
  return sum(int(x.size) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- LoRA trees


def is_lora_layer(x: Any) -> bool:
  """A dict holding both adapter factors (a LoRA-adapted dense layer's parameters)."""
  return isinstance(x, Mapping) and LORA_A in x and LORA_B in x


def lora_factors(path, layer: Mapping) -> tuple[jax.Array, jax.Array]:
  """A LoRA layer's ``(A, B)``, checked: ``[..., in, r]`` and ``[..., r, out]``."""
  a, b = jnp.asarray(layer[LORA_A]), jnp.asarray(layer[LORA_B])
  ok = (a.ndim >= 2 and b.ndim == a.ndim and a.shape[-1] == b.shape[-2]
        and a.shape[:-2] == b.shape[:-2])
  check(ok, f"tree{jax.tree_util.keystr(path)}",
        "lora_a [..., in, r] and lora_b [..., r, out] with the same r and batch dims",
        (tuple(a.shape), tuple(b.shape)))
  return a, b


def map_lora_layers(tree: Any, params: Any, lora_fn: Callable, leaf_fn: Callable) -> Any:
  """Map ``lora_fn(path, layer, server_layer)`` over LoRA dicts, ``leaf_fn(x, server_x)`` over
  the other leaves; the ``server_*`` arguments are ``params``' matching parts, or None."""
  items, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_lora_layer)
  server = ([None] * len(items) if params is None
            else treedef.flatten_up_to(params))
  out = [lora_fn(path, x, q) if is_lora_layer(x) else leaf_fn(x, q)
         for (path, x), q in zip(items, server)]
  return jax.tree.unflatten(treedef, out)


def rank_mask(x: jax.Array, rank, axis: int) -> jax.Array:
  """Zero the entries of ``x`` at index >= ``rank`` along the rank ``axis``."""
  r = x.shape[axis]
  keep = jnp.arange(r) < rank
  shape = [1] * x.ndim
  shape[axis] = r
  return jnp.where(keep.reshape(shape), x, jnp.zeros_like(x))


def mask_rank(tree: Any, rank) -> Any:
  r"""Zero every adapter's components at index :math:`j \ge` ``rank``: columns of A, rows of B.

  A client of rank :math:`r_k` in a model built at rank :math:`r_{max}` holds its factors
  zero-padded this way; zero columns of :math:`A` and zero rows of :math:`B` add nothing to
  :math:`A B`. After :func:`jaxfl.transforms.flex_svd` it truncates the global factors to the
  client's own
  rank, which (singular values being sorted) is the best rank-:math:`r_k` approximation.

  Args:
    tree: a LoRA tree.
    rank: int or traced int scalar (per client under a client map).

  Returns:
    ``tree`` with the factors masked; shapes, and every other leaf, unchanged.

  Examples:
    >>> import jax.numpy as jnp
    >>> layer = {'lora_a': jnp.ones((3, 2)), 'lora_b': jnp.ones((2, 1))}
    >>> out = mask_rank({'dense': layer}, 1)['dense']
    >>> out['lora_a'].tolist(), out['lora_b'].tolist()
    ([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], [[1.0], [0.0]])
  """

  def lora_fn(path, layer, _):
    a, b = lora_factors(path, layer)
    return {**layer, LORA_A: rank_mask(a, rank, -1), LORA_B: rank_mask(b, rank, -2)}

  return map_lora_layers(tree, None, lora_fn, lambda x, _: x)


def lora_delta(tree: Any, scale) -> Any:
  r"""The dense update :math:`\Delta W = s\,A B` ``[..., in, out]`` of every adapter.

  Args:
    tree: a LoRA tree (e.g. any aggregator's output).
    scale: :math:`s = \alpha / r`.

  Returns:
    ``tree`` with each LoRA dict replaced by its :math:`\Delta W` (float32) and every
    other leaf by ``None``, so ``jax.tree.leaves`` lists the updates.

  Examples:
    >>> import jax.numpy as jnp
    >>> tree = {'dense': {'kernel': jnp.zeros((2, 2)), 'lora_a': jnp.array([[1.0], [2.0]]),
    ...                   'lora_b': jnp.array([[3.0, 0.0]])}, 'head': jnp.ones(3)}
    >>> lora_delta(tree, 0.5)
    {'dense': Array([[1.5, 0. ],
           [3. , 0. ]], dtype=float32), 'head': None}
  """

  def lora_fn(path, layer, _):
    a, b = lora_factors(path, layer)
    return scale * jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))

  return map_lora_layers(tree, None, lora_fn, lambda x, _: None)


def merge_lora(tree: Any, scale, *, drop: bool = True) -> Any:
  r"""Fold every adapter into its kernel: :math:`W_0 \leftarrow W_0 + s\,A B`.

  The step after :func:`jaxfl.transforms.stack_merge`: FLoRA's clients merge the stacked global
  update
  into the base weights and start the next round from a fresh adapter. It works on any
  aggregator's output (for FedIT, FFA-LoRA and FlexLoRA it commits the adapter to the base).

  Args:
    tree: a LoRA tree whose LoRA dicts hold ``'kernel'``.
    scale: :math:`s = \alpha / r` of the clients that trained the factors.
    drop: ``True`` removes ``'lora_a'`` and ``'lora_b'`` (plain dense layers); ``False``
      keeps ``'lora_a'`` and zeroes ``'lora_b'`` (the LoRA init: the layer's output is
      unchanged and the adapter trains on from there; after
      :func:`jaxfl.transforms.stack_merge` replace
      the ``[in, K r]`` ``'lora_a'`` by a fresh ``[in, r]`` one).

  Returns:
    The merged tree; kernels keep their dtype.

  Raises:
    ConfigError: a LoRA dict without ``'kernel'``.

  Examples:
    >>> import jax.numpy as jnp
    >>> layer = {'kernel': jnp.eye(2), 'lora_a': jnp.array([[1.0], [0.0]]),
    ...          'lora_b': jnp.array([[0.0, 2.0]])}
    >>> merge_lora({'dense': layer}, 0.5)['dense']['kernel'].tolist()
    [[1.0, 1.0], [0.0, 1.0]]
    >>> sorted(merge_lora({'dense': layer}, 0.5, drop=False)['dense'])
    ['kernel', 'lora_a', 'lora_b']
  """

  def lora_fn(path, layer, _):
    check("kernel" in layer, f"tree{jax.tree_util.keystr(path)}",
          "a LoRA dict with a 'kernel' to merge into", sorted(layer))
    a, b = lora_factors(path, layer)
    kernel = jnp.asarray(layer["kernel"])
    delta = scale * jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))
    merged = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
    out = {k: v for k, v in layer.items() if k not in LORA_KEYS}
    out["kernel"] = merged
    if not drop:
      out[LORA_A], out[LORA_B] = layer[LORA_A], jnp.zeros_like(b)
    return out

  return map_lora_layers(tree, None, lora_fn, lambda x, _: x)
