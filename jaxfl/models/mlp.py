"""A multilayer perceptron: the small classifier of the FedAvg experiments.

| size   | layers          | params (digits, 64 -> 10) |
|--------|-----------------|---------------------------|
| tiny   | 64-32-10        | 2,410                     |
| small  | 64-128-10       | 9,610                     |
| 2nn    | 784-200-200-10  | 199,210 (MNIST, McMahan et al. 2017) |
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

SIZES = {"tiny": (32,), "small": (128,), "2nn": (200, 200)}


class MLP(nnx.Module):
  """ReLU MLP that flattens each example's trailing feature dimensions.

  Args:
    in_features: number of input features after flattening (64 for 8x8 digits).
    hidden: widths of the hidden layers.
    out_features: number of classes.
    rngs: NNX random streams for initialisation.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *, rngs: nnx.Rngs):
    widths = [in_features, *hidden]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.head = nnx.Linear(widths[-1], out_features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return self.head(x)
