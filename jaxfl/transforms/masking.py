r"""Masking wrappers: freeze the parameter groups that are inactive this step.

:func:`skip_inactive` wraps any optax transform so that, per step, the leaves of the
groups a ``keep`` mask turns off get a zero update and keep their optimizer statistics
bit-unchanged. Groups are integer labels per parameter leaf: transformer blocks for layer
dropout (:func:`jaxfl.peft.layerdrop.layer_index_tree`, DropPEFT arXiv 2503.10217),
model fragments for Streaming DiLoCo's per-fragment outer optimizer
(:func:`jaxfl.planners.fragments.fragment_labels`, arXiv 2501.18512).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.errors import check


class SkipInactiveState(NamedTuple):
  """State of :func:`skip_inactive`.

  Attributes:
    inner_state: the wrapped transform's state; its per-parameter statistics of a dropped
      block are those of the last step the block was kept.
    active_steps: ``int32[L]``, how many steps each block was kept (updated).
  """

  inner_state: Any
  active_steps: jax.Array


def _layer_lookup(layer_of: Any) -> tuple[dict[tuple[Any, ...], int], int]:
  """Params key path -> block index, and the number of blocks ``L``."""
  table = {}
  for path, layer in jax.tree_util.tree_flatten_with_path(layer_of)[0]:
    check(isinstance(layer, numbers.Integral) and not isinstance(layer, bool) and layer >= -1,
          "layer_of", "a pytree of int block indices (-1 outside the blocks), e.g. from "
          "jaxfl.peft.layerdrop.layer_index_tree", layer)
    table[tuple(path)] = int(layer)
  num_layers = max(table.values(), default=-1) + 1
  check(num_layers >= 1, "layer_of", "at least one leaf with a block index >= 0",
        "no leaf inside a block")
  return table, num_layers


def skip_inactive(inner: optax.GradientTransformation, layer_of: Any
                  ) -> optax.GradientTransformationExtraArgs:
  r"""Freeze the blocks dropped this step: zero update, optimizer statistics unchanged.

  With keep mask :math:`k \in \{0, 1\}^L` and :math:`\ell(\theta)` the block of leaf
  :math:`\theta` (−1 outside the blocks), one step is

  .. math::
    (u', s') = \mathrm{inner}(g \odot m,\ s), \qquad
    m_\theta = [\ell(\theta) < 0 \lor k_{\ell(\theta)}], \qquad
    u_\theta = m_\theta\, u'_\theta, \qquad
    s_\theta = m_\theta\, s'_\theta + (1 - m_\theta)\, s_\theta

  for every per-parameter part :math:`s_\theta` of the inner state (Adam's
  :math:`\mu, \nu`, a momentum trace, factored second moments, the masked sub-states of
  ``optax.partition``). A dropped block's update is exactly zero and its statistics are
  bit-for-bit those before the step, as if the step had not happened for it (a dropped
  block also gets a zero gradient from the forward pass; the gradient is zeroed here as
  well, so global statistics inside ``inner`` such as a clipping norm never see it). With
  every block kept the wrapper is the identity on ``inner`` (bit-for-bit).

  Which state leaves are per-parameter is read from key paths: a state leaf belongs to
  parameter :math:`\theta` when its path *ends with* :math:`\theta`'s path in ``layer_of``
  (``[0].mu['blocks'][1]['w']`` ends with ``['blocks'][1]['w']``). That is how optax stores
  every per-parameter statistic, also under ``optax.partition`` / ``multi_transform`` /
  ``masked`` with label trees or label functions, where ``optax.tree_map_params`` fails
  (it calls ``init`` on a placeholder, and the masked sub-states don't match the params
  structure). State leaves that match no parameter always advance.

  Deliberate deviation: shared scalar state, such as Adam's ``count``, advances on every
  step, including for dropped blocks. Adam's bias correction :math:`1/(1-\beta^t)` then
  uses the global step :math:`t`, not the number :math:`c \le t` of steps the block was
  kept (``state.active_steps``). Relative to an Adam that counted only the block's own
  steps, its update is scaled by

  .. math::
    r = \frac{1-\beta_1^{c}}{1-\beta_1^{t}} \sqrt{\frac{1-\beta_2^{t}}{1-\beta_2^{c}}},

  which is 1 when :math:`c = t` and tends to 1 once :math:`\beta_2^c \approx 0` (thousands
  of kept steps for :math:`\beta_2 = 0.999`). In between it is off either way; with the
  defaults (0.9, 0.999) and :math:`c \approx (1-p)\,t`, over all :math:`t`:
  :math:`r \in [0.94, 1.06]` at :math:`p = 0.1`, :math:`[0.73, 1.40]` at :math:`p = 0.5`
  (largest near :math:`t = 100`), :math:`[0.48, 2.9]` at :math:`p = 0.9`. It acts like a
  per-block learning-rate factor during the warm-up of the moment estimates. We accept it
  rather than keep per-block copies of every shared scalar, which no generic optax state
  allows.

  Args:
    inner: the optimizer to wrap (any optax transform, extra-args or not).
    layer_of: pytree mirroring the params with the int block index of each leaf, −1
      outside the blocks (:func:`jaxfl.peft.layerdrop.layer_index_tree`). ``L`` is its largest
      index + 1.

  Returns:
    A transform whose ``update(updates, state, params=None, *, keep=None, **extra_args)``
    takes ``keep``: ``bool[L]``, a traced array (select per leaf) or a static tuple of
    Python bools (no select emitted). ``None`` keeps every block (e.g. an evaluation-time
    step). Other extra args are passed to ``inner``.

  Raises:
    ConfigError: for a ``layer_of`` without block indices, or a ``keep`` of the wrong
      length.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {'blocks': {0: {'w': jnp.ones(2)}, 1: {'w': jnp.ones(2)}}, 'head': jnp.ones(2)}
    >>> from jaxfl.peft.layerdrop import layer_index_tree
    >>> tx = skip_inactive(optax.adam(0.1), layer_index_tree(params))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params, keep=jnp.array([True, False]))
    >>> jax.tree.map(lambda u: u.round(3), updates)  # block 1 dropped: exactly zero
    {'blocks': {0: {'w': Array([-0.1, -0.1], dtype=float32)},
                1: {'w': Array([0., 0.], dtype=float32)}},
     'head': Array([-0.1, -0.1], dtype=float32)}
    >>> state.inner_state[0].mu['blocks'][1]['w']  # Adam's mu of block 1: still zero
    Array([0., 0.], dtype=float32)
    >>> state.active_steps
    Array([1, 0], dtype=int32)
  """
  table, num_layers = _layer_lookup(layer_of)
  inner = optax.with_extra_args_support(inner)

  def layer_at(path) -> int:
    # Longest suffix of the path that is a parameter's path; -1 if none.
    path = tuple(path)
    for start in range(len(path) + 1):
      layer = table.get(path[start:])
      if layer is not None:
        return layer
    return -1

  def select(tree, old, keep):
    """Per leaf: the new value where its block is kept (or it has none), else the old."""
    paths_new, treedef = jax.tree_util.tree_flatten_with_path(tree)
    olds = treedef.flatten_up_to(old) if old is not None else [None] * len(paths_new)
    out = []
    for (path, new), prev in zip(paths_new, olds):
      layer = layer_at(path)
      if layer < 0:
        out.append(new)
      elif isinstance(keep, tuple):  # static mask: no select in the program
        out.append(new if keep[layer] else (jnp.zeros_like(new) if prev is None else prev))
      else:
        out.append(jnp.where(keep[layer], new, jnp.zeros_like(new) if prev is None else prev))
    return jax.tree_util.tree_unflatten(treedef, out)

  def init_fn(params):
    return SkipInactiveState(inner_state=inner.init(params),
                             active_steps=jnp.zeros([num_layers], jnp.int32))

  def update_fn(updates, state, params=None, *, keep=None, **extra_args):
    if keep is None:
      keep = (True,) * num_layers
    if isinstance(keep, (tuple, list)) and all(isinstance(k, (bool, np.bool_)) for k in keep):
      keep = tuple(bool(k) for k in keep)
      shape = (len(keep),)
      active = jnp.asarray(keep, jnp.int32)
    else:
      keep = jnp.asarray(keep)
      check(keep.dtype == jnp.bool_, "keep", "a bool[L] mask", keep.dtype)
      shape = keep.shape
      active = keep.astype(jnp.int32)
    check(shape == (num_layers,), "keep", f"a mask over the L={num_layers} blocks of layer_of",
          shape)
    # Zero the dropped blocks' gradients going in, so no global statistic of `inner` sees them.
    new_updates, new_inner = inner.update(select(updates, None, keep), state.inner_state,
                                          params, **extra_args)
    new_updates = select(new_updates, None, keep)
    new_inner = select(new_inner, state.inner_state, keep)
    return new_updates, SkipInactiveState(new_inner, state.active_steps + active)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
