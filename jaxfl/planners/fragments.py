"""Model fragments and when each is sent: Streaming DiLoCo's fixed schedule and CoCoDC's.

Streaming DiLoCo (Douillard et al., arXiv 2501.18512) cuts the transformer's layers into
``P`` **fragments** and syncs fragment ``p`` once every ``H`` inner steps, offset by
``p·H/P`` so that the syncs are spread over the interval (lower peak bandwidth). A
fragment's outer all-reduce overlaps ``tau`` further inner steps before it is merged.
CoCoDC (Zhu et al., arXiv 2504.17672) keeps the fragments but picks *which* to send every
``h = H // N`` steps (a **reconstruction** of arXiv 2504.17672 from the authors' released
code, ``select_next_shard``; the paper's text was not read): a fragment not sent for ``H``
steps is forced; else one never sent; else the one with the largest drift per parameter
per step,

.. math::
  R_p = \\frac{\\sum_m \\lVert \\theta_p^G - \\theta_{m,p}^L \\rVert_1}{I_p \\, n_p},
  \\qquad I_p = t - t_p^{sent},

never a fragment whose previous all-reduce is still in flight (a guard the code lacks:
**assumed** here).

Units and fragments: the sharding units of a :mod:`jaxfl.models.transformer` params tree
are ``[embed (+pos_embed), block_0, ..., block_{L-1}, ln_f (+head)]`` (the code's
``[embed, block_1..L, norm, lm_head]`` with the last two merged: **assumed** here, so that
a small model's final norm does not make a fragment of its own). ``sequential``
fragments are contiguous near-equal chunks of units; ``strided`` ones take unit ``u`` into
fragment ``u % P``.

Network capacity enters through ``N`` (transfers that fit into one interval,
:func:`transmissions_per_interval`) and ``tau`` (steps one transfer overlaps,
:func:`jaxfl.sim.network.overlap_steps`); the link's costs live in :mod:`jaxfl.sim.network`.
The layout and capacity functions are host-side Python/NumPy; the
per-step rules (:func:`streaming_fragment_at`, :func:`select_fragment`,
:func:`fragment_drift`, :func:`fragment_mask`) are pure ``jnp`` and can be traced inside
``jit``/``scan`` (their ``H``/``P``/``num_fragments`` must then be static Python ints).

Examples:
  >>> units = layer_units(4)
  >>> units
  ['embed', 'block_0', 'block_1', 'block_2', 'block_3', 'ln_f+head']
  >>> fragment_units(len(units), 3, 'sequential')
  [(0, 1), (2, 3), (4, 5)]
  >>> fragment_units(len(units), 3, 'strided')
  [(0, 3), (1, 4), (2, 5)]
  >>> [streaming_send_step(p, 60, 3) for p in range(3)]
  [0, 20, 40]
  >>> import numpy as np
  >>> int(select_fragment(100, sent_at=np.array([80, 30, 90]),
  ...                     in_flight=np.array([False, False, False]),
  ...                     drift=np.array([1.0, 1.0, 5.0]), sizes=np.array([10, 10, 10]), H=60))
  1
  >>> transmissions_per_interval(60, 1.0, 1e6, 1e6, 0.5, num_fragments=3)
  3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.errors import ConfigError
from jaxfl.sim.network import transfer_time

PATTERNS = ("sequential", "strided")
NEVER_SENT = -1  # the ``sent_at`` of a fragment not yet sent (step 0 is a valid send step)

# Top-level params keys outside 'blocks': the unit they join (0 = first, -1 = last).
_EDGE_UNITS = {"embed": 0, "pos_embed": 0, "ln_f": -1, "head": -1}


# --------------------------------------------------------------------------- layout


def layer_units(num_layers: int) -> list[str]:
  """Names of the sharding units of an ``num_layers``-block transformer params tree.

  Unit 0 holds ``embed`` and ``pos_embed``, unit ``1 + i`` holds ``blocks[i]``, and the
  last unit holds ``ln_f`` and ``head`` (``num_layers + 2`` units in all).
  """
  _check_int(num_layers, "num_layers", 0)
  return ["embed"] + [f"block_{i}" for i in range(num_layers)] + ["ln_f+head"]


def fragment_units(num_units: int, num_fragments: int,
                   pattern: str = "sequential") -> list[tuple[int, ...]]:
  """Split units ``0..num_units-1`` into ``num_fragments`` non-empty fragments.

  Streaming DiLoCo's two patterns (arXiv 2501.18512): ``sequential`` cuts contiguous
  chunks whose sizes differ by at most one (the first ``num_units % P`` get the extra
  unit: **assumed**); ``strided`` puts unit ``u`` into fragment ``u % P`` (the paper finds
  it better for compute utilisation: each fragment then spans the depth of the network).

  Returns:
    ``P`` tuples of unit indices, ascending; every unit in exactly one.
  """
  _check_int(num_units, "num_units", 1)
  _check_fragments(num_fragments, num_units)
  if pattern == "sequential":
    return [tuple(int(u) for u in c) for c in np.array_split(np.arange(num_units), num_fragments)]
  if pattern == "strided":
    return [tuple(range(p, num_units, num_fragments)) for p in range(num_fragments)]
  raise ConfigError("pattern", f"one of {PATTERNS}", pattern)


def fragment_labels(params: dict[str, Any], fragments: Sequence[Sequence[int]]) -> Any:
  """A pytree mirroring ``params`` whose leaves are each leaf's fragment id (Python ints).

  Args:
    params: a transformer params tree (arrays or ``ShapeDtypeStruct``s) with top-level
      keys among ``embed``, ``pos_embed``, ``blocks``, ``ln_f``, ``head``.
    fragments: from :func:`fragment_units` over ``len(params['blocks']) + 2`` units.
  """
  num_units = len(params.get("blocks", {})) + 2
  fragment_of = _unit_to_fragment(fragments, num_units)

  def label(path, _):
    top = _key_name(path[0])
    if top == "blocks":
      unit = 1 + int(_key_name(path[1]))
    elif top in _EDGE_UNITS:
      unit = _EDGE_UNITS[top] % num_units
    else:
      raise ConfigError("params", f"top-level keys among {sorted(_EDGE_UNITS) + ['blocks']}", top)
    return fragment_of[unit]

  return jax.tree_util.tree_map_with_path(label, params)


def fragment_sizes(params: Any, labels: Any, num_fragments: int) -> np.ndarray:
  """``[P]`` int64: :math:`n_p`, the number of parameters in each fragment."""
  sizes = np.zeros(num_fragments, np.int64)
  for leaf, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels), strict=True):
    sizes[lab] += math.prod(np.shape(leaf))
  return sizes


def fragment_mask(labels: Any, fragment) -> Any:
  """Boolean pytree: which leaves belong to ``fragment`` (may be traced)."""
  return jax.tree.map(lambda lab: jnp.asarray(lab) == fragment, labels)


def fragment_drift(global_params: Any, local_params: Any, labels: Any,
                   num_fragments: int) -> jax.Array:
  """``[P]`` float32: :math:`\\sum_m \\lVert \\theta_p^G - \\theta_{m,p}^L \\rVert_1`.

  CoCoDC's drift (the numerator of :math:`R_p`; a reconstruction of arXiv 2504.17672 from
  the authors' code, which also scales it by 1e8): ``local_params`` has a leading
  worker axis ``[M, ...]`` on every leaf, ``global_params`` none; pure ``jnp``.
  """
  g_leaves = jax.tree.leaves(global_params)
  l_leaves = jax.tree.leaves(local_params)
  lab = jax.tree.leaves(labels)
  if not len(g_leaves) == len(l_leaves) == len(lab):
    raise ConfigError("local_params", "the structure of global_params and labels",
                      f"{len(l_leaves)} leaves vs {len(g_leaves)} and {len(lab)}")
  per_leaf = jnp.stack([jnp.sum(jnp.abs(g[None].astype(jnp.float32) - l.astype(jnp.float32)))
                        for g, l in zip(g_leaves, l_leaves)])
  return jax.ops.segment_sum(per_leaf, jnp.asarray(lab, jnp.int32), num_segments=num_fragments)


# --------------------------------------------------------------------------- schedules


def streaming_send_step(fragment: int, H: int, num_fragments: int, offset: int = 0) -> int:
  """Phase in ``[0, H)`` at which Streaming DiLoCo syncs ``fragment``.

  Fragment ``p`` syncs at the steps ``t`` with ``t % H == (offset + p·H//P) % H``
  (arXiv 2501.18512: offsets ``p·H/P`` spread the syncs over the interval). Needs
  ``P <= H`` so that no two fragments share a phase.
  """
  _check_schedule(H, num_fragments)
  if not 0 <= fragment < num_fragments:
    raise ConfigError("fragment", f"an index in [0, {num_fragments})", fragment)
  return (offset + fragment * H // num_fragments) % H


def streaming_fragment_at(step, H: int, num_fragments: int, offset: int = 0) -> jax.Array:
  """int32: the fragment Streaming DiLoCo syncs at ``step``, or ``-1`` (``step`` may be traced)."""
  phases = jnp.asarray([streaming_send_step(p, H, num_fragments, offset)
                        for p in range(num_fragments)], jnp.int32)
  hit = phases == jnp.asarray(step) % H
  return jnp.where(jnp.any(hit), jnp.argmax(hit), -1).astype(jnp.int32)


def select_fragment(step, sent_at, in_flight, drift, sizes, H) -> jax.Array:
  """CoCoDC's adaptive choice of the fragment to send at ``step`` (pure ``jnp``).

  The rule (a reconstruction of arXiv 2504.17672 from the authors' ``select_next_shard``;
  the in-flight exclusion is assumed here), over fragments
  **not in flight**, with :math:`I_p = t - t_p^{sent}`:

  1. staleness guard: if some have :math:`I_p \\ge H`, the stalest (largest ``I_p``);
  2. else one never sent, the lowest index;
  3. else :math:`\\arg\\max_p R_p`, :math:`R_p = \\mathrm{drift}_p / (I_p n_p)`.

  Ties go to the lowest index. Never-sent fragments carry ``sent_at = NEVER_SENT = -1``
  (the code uses 0, but step 0 is a real send step here), so their ``I_p = t + 1``: as if
  sent just before step 0, which makes them stale from ``t = H - 1`` on, like the code's.
  ``I_p`` is floored at 1 in ``R_p`` (**assumed**: a fragment sent and received within
  this step would otherwise divide by zero).

  Args:
    step: current step ``t``.
    sent_at: ``[P]`` int, step of each fragment's last send, or ``-1``.
    in_flight: ``[P]`` bool, whose all-reduce has not been received yet (``t < t_s + tau``).
    drift: ``[P]`` :func:`fragment_drift`.
    sizes: ``[P]`` :func:`fragment_sizes`.
    H: the sync interval.

  Returns:
    int32 scalar: the fragment, or ``-1`` when every fragment is in flight.
  """
  if isinstance(H, (int, np.integer)) and H < 1:
    raise ConfigError("H", "a positive number of steps", H)
  sent_at = jnp.asarray(sent_at, jnp.int32)
  free = ~jnp.asarray(in_flight, bool)
  drift = jnp.asarray(drift, jnp.float32)
  sizes = jnp.asarray(sizes, jnp.float32)
  if not sent_at.shape == free.shape == drift.shape == sizes.shape or sent_at.ndim != 1:
    raise ConfigError("sent_at", "sent_at, in_flight, drift and sizes of one shape [P]",
                      (sent_at.shape, free.shape, drift.shape, sizes.shape))
  interval = jnp.asarray(step, jnp.int32) - sent_at
  stale = free & (interval >= H)
  never = free & (sent_at < 0)
  ratio = drift / (jnp.maximum(interval, 1).astype(jnp.float32) * jnp.maximum(sizes, 1.0))
  pick = jnp.where(jnp.any(stale), jnp.argmax(jnp.where(stale, interval, -1)),
                   jnp.where(jnp.any(never), jnp.argmax(never),
                             jnp.argmax(jnp.where(free, ratio, -jnp.inf))))
  return jnp.where(jnp.any(free), pick, -1).astype(jnp.int32)


# --------------------------------------------------------------------------- capacity


def transmissions_per_interval(H: int, step_time: float, fragment_bytes: float,
                               bandwidth: float, latency: float, num_fragments: int) -> int:
  """CoCoDC's ``N``: fragment transfers that fit into one interval of ``H`` steps.

  .. math:: N = \\max\\big(1, \\min(P, \\lfloor H t_{step} / (b/B + \\ell) \\rfloor)\\big)

  **A reconstruction:** the authors' code takes ``N`` as a CLI argument; the paper
  (arXiv 2504.17672, its abstract) only says the schedule adapts to network capacity. At least
  one transfer per interval (the staleness guard sends one every ``H`` steps anyway).
  ``fragment_bytes`` is what one transfer puts on the link (use
  :func:`jaxfl.sim.network.allreduce_bytes` for an all-reduce). A ``1e-9`` slack keeps e.g.
  ``0.3 / 0.1`` from flooring to 2.
  """
  _check_int(H, "H", 1)
  _check_positive(step_time, "step_time")
  _check_int(num_fragments, "num_fragments", 1)
  fits = math.floor(H * step_time / transfer_time(fragment_bytes, bandwidth, latency) + 1e-9)
  return max(1, min(num_fragments, fits))


def send_interval(H: int, N: int) -> int:
  """CoCoDC's ``h = H // N``: steps between adaptive sends."""
  _check_int(H, "H", 1)
  if not isinstance(N, (int, np.integer)) or not 1 <= N <= H:
    raise ConfigError("N", f"an integer between 1 and H={H}", N)
  return H // N


# --------------------------------------------------------------------------- checks


def _key_name(key) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def _unit_to_fragment(fragments: Sequence[Sequence[int]], num_units: int) -> list[int]:
  flat = sorted(int(u) for f in fragments for u in f)
  if flat != list(range(num_units)) or any(len(f) == 0 for f in fragments):
    raise ConfigError("fragments", f"non-empty fragments covering units 0..{num_units - 1} "
                      "exactly once", [tuple(f) for f in fragments])
  out = [0] * num_units
  for p, f in enumerate(fragments):
    for u in f:
      out[int(u)] = p
  return out


def _check_int(value, field: str, low: int) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
    raise ConfigError(field, f"an integer >= {low}", value)


def _check_positive(value, field: str) -> None:
  if not (isinstance(value, (int, float, np.number)) and value > 0):
    raise ConfigError(field, "a positive number", value)


def _check_fragments(num_fragments, num_units: int) -> None:
  if (not isinstance(num_fragments, (int, np.integer)) or isinstance(num_fragments, bool)
      or not 1 <= num_fragments <= num_units):
    raise ConfigError("num_fragments", f"an integer between 1 and the {num_units} units",
                      num_fragments)


def _check_schedule(H, num_fragments) -> None:
  _check_int(H, "H", 1)
  _check_int(num_fragments, "num_fragments", 1)
  if num_fragments > H:
    raise ConfigError("num_fragments", f"at most H={H} (one distinct phase each)", num_fragments)
