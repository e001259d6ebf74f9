"""Trainability as labels on parameter paths: LoRA selection, split and combine.

A parameter tree is a nested dict (``nnx.to_pure_dict``); a leaf's *path* is the tuple of
keys leading to it, e.g. ``('blocks', 3, 'query', 'lora_a')``. Every PEFT method is a
rule on paths that says which leaves train:

* LoRA (Hu et al. 2021, arXiv 2106.09685): the adapter factors ``lora_a``/``lora_b``;
* LoRA depth ``d`` (FedQuad arXiv 2506.01001, HierFedLoRA arXiv 2503.21213): adapters of
  blocks ``L - d .. L - 1`` only;
* block expansion (FedBE arXiv 2506.05977, LLaMA Pro arXiv 2401.02415): every leaf of the
  new blocks;
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

from collections.abc import Callable, Iterable
from typing import Any

import jax
import optax

Path = tuple[Any, ...]
PathRule = Callable[[Path], bool]

TRAIN, FREEZE = "train", "freeze"
LORA_KEYS = ("lora_a", "lora_b")


def is_lora_path(path: Path) -> bool:
  """Adapter factors: the last key is ``lora_a`` or ``lora_b``."""
  return bool(path) and path[-1] in LORA_KEYS


def is_lora_b_path(path: Path) -> bool:
  """FFA-LoRA's trainable set (Sun et al., arXiv 2403.12313): ``lora_b`` only, ``A`` frozen."""
  return bool(path) and path[-1] == "lora_b"


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
