"""Small Flax NNX models, crossing into jaxfl as pure state pytrees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from jaxfl.models.mlp import MLP, SIZES

ApplyFn = Callable[[Any, Any], Any]


def functional(model: nnx.Module) -> tuple[ApplyFn, dict]:
  """Split an NNX module into a pure ``apply(params, x)`` and its parameters.

  The parameters come back as a plain nested dict of arrays (``nnx.to_pure_dict``),
  so optax, orbax and jaxfl's runtime treat them as any pytree; ``apply``
  re-merges them with the static graph definition inside traced code, which costs
  tracing time only.
  """
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)

  def apply(params, x):
    return nnx.merge(graphdef, params)(x)

  return apply, params


__all__ = ["MLP", "SIZES", "functional"]
