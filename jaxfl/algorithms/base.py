"""The algorithm protocol every jaxfl algorithm follows.

An algorithm is a frozen object holding everything static about a run (loss, optimizers,
sizes, cost models) and two pure functions:

* ``init(params, key) -> State``: the whole run state from the initial model and the
  run's root key; a NamedTuple pytree, so it checkpoints, vmaps and scans;
* ``round(state, inputs) -> (state, metrics)``: one round (a FedAvg round, a DiLoCo outer
  step, one inner step of Streaming DiLoCo, one server event of Air-FedGA). ``inputs`` is
  the pytree every round reads (the clients' padded data, plus frozen weights or device
  profiles where the algorithm takes them); it is an argument, not a closure, so one
  compiled round serves every seed.

Keys come from ``fold_in`` of the state's root key with the round (or step) counter, so a
round is a deterministic function of ``(state, inputs)`` and a restored checkpoint replays
exactly. Hyperparameters a sweep tunes may be traced: build the algorithm inside the
function that is vmapped over the grid.

:mod:`jaxfl.loop` drives any algorithm: ``scan_rounds`` (pure; seeds and grids as a
``vmap``) and ``run_rounds`` (a host loop with checkpoints, resume and progress).

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> from jaxfl.algorithms import DiLoCo
  >>> from jaxfl.local import ClientData
  >>> loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2)
  >>> alg = DiLoCo(loss, optax.adamw(1e-2), optax.sgd(0.7), num_workers=2, inner_steps=2,
  ...              batch_size=4)
  >>> isinstance(alg, Algorithm)
  True
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Algorithm(Protocol):
  """``init(params, key) -> state`` and a pure ``round(state, inputs) -> (state, metrics)``."""

  def init(self, params: Any, key: jax.Array) -> Any:
    ...

  def round(self, state: Any, inputs: Any) -> tuple[Any, Any]:
    ...


class JitRound:
  """Mixin: ``jit_round``, the algorithm's ``round`` compiled once per algorithm object."""

  @functools.cached_property
  def jit_round(self):
    """``round`` under ``jax.jit`` (cached on the object, so every call reuses it)."""
    return jax.jit(self.round)


def is_traced(value) -> bool:
  """Whether ``value`` is a tracer (a hyperparameter being vmapped or jitted over): such
  values are checked by the caller, not on construction."""
  return isinstance(value, jax.core.Tracer)


def check_algorithm(algorithm: Any) -> None:
  """Raise ``TypeError`` naming what is missing unless ``algorithm`` follows the protocol."""
  if not isinstance(algorithm, Algorithm):
    missing = [m for m in ("init", "round") if not callable(getattr(algorithm, m, None))]
    raise TypeError(f"{type(algorithm).__name__} is not a jaxfl algorithm: it lacks "
                    f"{' and '.join(missing)} (see jaxfl.algorithms.base)")
