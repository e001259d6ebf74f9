r"""Stochastic layer dropout for fine-tuning transformers: rates, masks and an optimizer wrapper.

At every local step each transformer block :math:`l \in \{0, \dots, L-1\}` is kept with
probability :math:`1 - p_l`, independently:

.. math::
  k_l \sim \mathrm{Bernoulli}(1 - p_l), \qquad
  h_{l+1} = \begin{cases} f_l(h_l) & k_l = 1 \\ h_l & k_l = 0, \end{cases}

so a dropped block is the identity (its residual branch is skipped). This is
stochastic depth (Huang et al. 2016, arXiv 1603.09382) and LayerDrop (Fan et al. 2019,
arXiv 1909.11556) applied to fine-tuning, as in DropPEFT (arXiv 2503.10217): clients drop
layers during local parameter-efficient fine-tuning to cut their compute and memory.
This module is a reconstruction of that mechanism only; DropPEFT's online choice of each
client's drop ratio is not implemented here (the rates are fixed configs).

Kept blocks are **not** rescaled (no :math:`1/(1-p_l)` factor, unlike inverted dropout and
unlike stochastic depth's test-time scaling): the model was pre-trained without layer
dropout, so its blocks already compose as trained, and evaluation runs every block as
is. This is LayerDrop's convention.

The pieces:

* :func:`drop_rates` -- per-layer rates :math:`p_l` with a configured mean.
* :func:`sample_keep` -- one step's keep mask :math:`k \in \{0,1\}^L` (jittable).
* :func:`layer_index_tree` -- the block index of every parameter leaf (−1 outside blocks).
* :func:`jaxfl.transforms.skip_inactive` -- the optax wrapper that gives dropped blocks a
  zero update and keeps their optimizer statistics bit-unchanged (it lives with the other
  transforms: any group labels do, e.g. Streaming DiLoCo's fragments).

JAX caveat (what is actually saved). The model's forward takes the mask either as a
static tuple of Python bools, so that dropped blocks are never traced, or as a traced
``bool[L]`` array, with each block behind ``lax.cond``:

* *Static mask*: dropped blocks cost no compute and no activation memory, forward or
  backward. But every distinct mask is a separate trace and compile (up to :math:`2^L`
  programs), so use it when masks repeat or :math:`L` is small.
* *Traced mask with* ``lax.cond``: one compiled program. At run time only the taken branch
  executes, so the compute of dropped blocks is skipped. Under reverse-mode AD, however,
  the linearised ``cond`` stores the residuals of *both* branches (the skipped branch's
  zero-filled), so activation memory is that of the full model: memory is saved only with
  static masks. And under ``vmap`` with a per-client (batched) predicate, ``cond`` becomes
  ``select`` and *both* branches run. Per-client masks inside the vmapped client axis of
  :class:`jaxfl.runtime.ClientAxis` therefore save neither compute nor memory; only a mask
  shared by the mapped clients (unbatched predicate) keeps the skip.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.errors import check

SHAPES = ("uniform", "incremental", "decremental")


def drop_rates(num_layers: int, mean_rate: float, shape: str = "uniform",
               max_rate: float = 0.9) -> np.ndarray:
  r"""Per-layer drop probabilities :math:`p_l` with mean ``mean_rate``.

  Before clipping, with :math:`\bar p` = ``mean_rate`` and layers counted from 1:

  .. math::
    \text{uniform: } p_l = \bar p, \qquad
    \text{incremental: } p_l = \bar p\,\frac{2l}{L+1}, \qquad
    \text{decremental: } p_l = \bar p\,\frac{2(L+1-l)}{L+1}.

  ``incremental`` is stochastic depth's linear decay rule (Huang et al. 2016) written with
  the mean as the knob: deeper layers are dropped more, the first least. ``decremental``
  is the reverse. Each has mean :math:`\bar p`.

  Rates above ``max_rate`` are clipped to it and the excess is spread over the unclipped
  layers in proportion to their shape weights (water filling, repeated until nothing
  exceeds the cap), so the mean stays exactly :math:`\bar p` and the order of the layers is
  kept. This is always feasible because ``mean_rate <= max_rate`` is required: a larger
  mean could not be reached with every rate capped, so it is rejected with
  :class:`~jaxfl.errors.ConfigError` rather than silently lowered. At
  ``mean_rate == max_rate`` every shape becomes uniform.

  Args:
    num_layers: :math:`L \ge 1`, the number of transformer blocks.
    mean_rate: :math:`\bar p \in [0, \text{max\_rate}]`, the mean drop probability, i.e.
      the expected fraction of blocks skipped per step.
    shape: ``'uniform'``, ``'incremental'`` or ``'decremental'``.
    max_rate: the cap on every :math:`p_l`, in :math:`[0, 1]`. The default 0.9 keeps every
      block trained at least one step in ten.

  Returns:
    ``float64[L]`` rates :math:`p_l \in [0, \text{max\_rate}]` with mean ``mean_rate``.

  Raises:
    ConfigError: for a bad ``num_layers``, ``shape``, ``max_rate`` or ``mean_rate``.

  Examples:
    >>> drop_rates(4, 0.5, 'incremental')
    array([0.2, 0.4, 0.6, 0.8])
    >>> drop_rates(4, 0.6, 'incremental')  # 0.96 clipped to 0.9, the rest scaled up
    array([0.25, 0.5 , 0.75, 0.9 ])
    >>> drop_rates(3, 0.3, 'decremental')
    array([0.45, 0.3 , 0.15])
  """
  check(isinstance(num_layers, numbers.Integral) and not isinstance(num_layers, bool)
        and num_layers >= 1, "num_layers", "an int >= 1", num_layers)
  check(shape in SHAPES, "shape", f"one of {list(SHAPES)}", shape)
  check(isinstance(max_rate, numbers.Real) and 0.0 <= max_rate <= 1.0, "max_rate",
        "a probability in [0, 1]", max_rate)
  check(isinstance(mean_rate, numbers.Real) and 0.0 <= mean_rate <= max_rate, "mean_rate",
        f"a probability in [0, max_rate={max_rate}] (a mean above the cap is infeasible)",
        mean_rate)
  num_layers, mean_rate, max_rate = int(num_layers), float(mean_rate), float(max_rate)

  depth = np.arange(1, num_layers + 1, dtype=np.float64)
  weight = {"uniform": np.ones(num_layers), "incremental": depth,
            "decremental": depth[::-1].copy()}[shape]
  budget = mean_rate * num_layers  # sum_l p_l
  clipped = np.zeros(num_layers, bool)
  # Each pass clips at least one more layer or stops, so L passes suffice.
  for _ in range(num_layers):
    free = weight[~clipped].sum()
    rest = budget - max_rate * clipped.sum()
    rates = np.where(clipped, max_rate, weight * (rest / free if free > 0 else 0.0))
    over = ~clipped & (rates > max_rate)
    if not over.any():
      break
    clipped |= over
  # Rounding only: the loop already keeps every rate in [0, max_rate].
  return np.clip(rates, 0.0, max_rate)


def sample_keep(key: jax.Array, rates: Any, *, min_active: int = 0,
                max_active: int | None = None) -> jax.Array:
  r"""One step's keep mask: :math:`k_l \sim \mathrm{Bernoulli}(1 - p_l)`, independently.

  With :math:`u_l \sim U[0, 1)`, block :math:`l` is kept iff its margin
  :math:`z_l = u_l - p_l \ge 0`. The default (``min_active=0``) is exact, so a step may
  drop every block: the model is then the identity between embedding and head (the
  embedding, final norm and head still train). This happens with probability
  :math:`\prod_l p_l` (1/64 for six blocks at 0.5) and is allowed on purpose, so that the
  kept fraction is unbiased.

  ``min_active`` / ``max_active`` bound the number of kept blocks: if fewer than
  ``min_active`` are kept, the dropped blocks with the largest margins are kept too; if
  more than ``max_active`` are kept, only the ``max_active`` with the largest margins stay.
  When a bound binds, the per-layer keep frequencies are no longer exactly
  :math:`1 - p_l` (layers with small :math:`p_l` are favoured).

  Args:
    key: a PRNG key.
    rates: ``float[L]`` drop probabilities, e.g. from :func:`drop_rates` (may be traced).
    min_active: keep at least this many blocks (static int, ``0 <= min_active <= L``).
    max_active: keep at most this many blocks (static int, ``min_active <= max_active``);
      ``None`` for no bound.

  Returns:
    ``bool[L]``, True for a kept block.

  Examples:
    >>> import jax
    >>> keep = sample_keep(jax.random.key(0), drop_rates(6, 0.5), min_active=1, max_active=4)
    >>> keep.shape, keep.dtype, 1 <= int(keep.sum()) <= 4
    ((6,), dtype('bool'), True)
    >>> sample_keep(jax.random.key(0), [0.0, 1.0, 0.0]).tolist()
    [True, False, True]
  """
  rates = jnp.asarray(rates, jnp.float32)
  check(rates.ndim == 1 and rates.shape[0] >= 1, "rates", "a 1-D array of L >= 1 drop rates",
        rates.shape)
  num_layers = rates.shape[0]
  check(isinstance(min_active, numbers.Integral) and 0 <= min_active <= num_layers,
        "min_active", f"an int in [0, L={num_layers}]", min_active)
  check(max_active is None or (isinstance(max_active, numbers.Integral)
                               and min_active <= max_active <= num_layers),
        "max_active", f"None or an int in [min_active={min_active}, L={num_layers}]", max_active)
  margin = jax.random.uniform(key, (num_layers,)) - rates
  keep = margin >= 0
  if min_active == 0 and max_active is None:
    return keep
  # Rank 0 = largest margin; ties go to the lower layer index (argsort is stable).
  order = jnp.argsort(-margin, stable=True)
  rank = jnp.zeros(num_layers, jnp.int32).at[order].set(jnp.arange(num_layers, dtype=jnp.int32))
  keep = keep | (rank < min_active)
  if max_active is not None:
    keep = keep & (rank < max_active)
  return keep


def _tokens(path: Sequence[Any]) -> list[Any]:
  """A key path as plain tokens: ints for indices, str-digit keys as ints, 'a/b' split."""
  out = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      key = entry.key
    elif isinstance(entry, jax.tree_util.SequenceKey):
      key = entry.idx
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      key = entry.name
    elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
      key = entry.key
    else:
      key = entry
    parts = key.split("/") if isinstance(key, str) else [key]
    for part in parts:
      if isinstance(part, str) and part.isdigit():
        part = int(part)
      out.append(part)
  return out


def layer_index_tree(params: Any, prefix: str = "blocks") -> Any:
  """The block index of every leaf of ``params``, −1 for leaves outside the blocks.

  A leaf belongs to block ``i`` when its key path contains the ``prefix`` keys followed
  directly by the index ``i``: ``params['blocks'][3][...]`` (the integer keys of
  ``nnx.to_pure_dict`` of an ``nnx.List``), ``'3'`` as a string key, a list of blocks, or
  a flat dict with ``'blocks/3/...'`` keys. The first match along the path counts, so the
  blocks may sit under any parent (``params['encoder']['blocks'][3]``). A ``prefix`` with
  ``/`` names nested keys (``'encoder/layers'``). Embeddings, the final norm and the head
  get −1.

  Args:
    params: a params pytree (nested dicts, lists, or a flat ``'a/b/c'``-keyed dict).
    prefix: the key (or ``/``-separated keys) under which the blocks are numbered.

  Returns:
    A pytree with the structure of ``params`` and Python ``int`` leaves.

  Examples:
    >>> params = {'embed': 0.0, 'blocks': {0: {'w': 0.0}, 1: {'w': 0.0, 'b': 0.0}},
    ...           'head': {'w': 0.0}}
    >>> layer_index_tree(params)
    {'blocks': {0: {'w': 0}, 1: {'b': 1, 'w': 1}}, 'embed': -1, 'head': {'w': -1}}
    >>> layer_index_tree({'blocks/2/attn/kernel': 0.0, 'head/kernel': 0.0})
    {'blocks/2/attn/kernel': 2, 'head/kernel': -1}
  """
  check(isinstance(prefix, str) and prefix.strip("/") != "", "prefix",
        "a non-empty key such as 'blocks'", prefix)
  want = _tokens([jax.tree_util.DictKey(prefix.strip("/"))])
  width = len(want)

  def index(path, _):
    tokens = _tokens(path)
    for start in range(len(tokens) - width):
      nxt = tokens[start + width]
      if tokens[start:start + width] == want and isinstance(nxt, int) and not isinstance(
          nxt, bool) and nxt >= 0:
        return nxt
    return -1

  return jax.tree_util.tree_map_with_path(index, params)
