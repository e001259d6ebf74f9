"""Small Flax NNX models, crossing into jaxfl as pure state pytrees."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from jaxfl.errors import ConfigError
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


def mlp_classifier(size: str, input_shape: Sequence[int], num_classes: int,
                   key: jax.Array) -> tuple[ApplyFn, dict]:
  """The FedAvg experiments' classifier as a pure function and its parameters.

  ``functional(MLP(prod(input_shape), SIZES[size], num_classes))`` with the parameters
  drawn from ``key`` (``nnx.Rngs(params=key)``), so the same key gives the same model in
  every experiment (fedavg, Air-FedGA, bench_fl).

  >>> import jax, jax.numpy as jnp
  >>> apply, params = mlp_classifier("tiny", (8, 8), 10, jax.random.key(0))
  >>> apply(params, jnp.zeros((2, 8, 8))).shape, params["head"]["kernel"].shape
  ((2, 10), (32, 10))
  """
  if size not in SIZES:
    raise ConfigError("size", f"one of {list(SIZES)}", size)
  return functional(MLP(math.prod(input_shape), SIZES[size], num_classes,
                        rngs=nnx.Rngs(params=key)))


__all__ = ["MLP", "SIZES", "functional", "mlp_classifier"]
