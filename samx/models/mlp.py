"""A multi-layer perceptron with ReLU hidden layers."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
  """``x -> ReLU(Linear) x len(hidden) -> head``; inputs of any shape are flattened per example.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from samx.models import MLP
    >>> model = MLP(784, (128, 64), 10, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 28, 28, 1))).shape, model.features(jnp.ones((2, 784))).shape
    ((2, 10), (2, 64))
  """

  def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, *,
               rngs: nnx.Rngs):
    widths = [in_features, *hidden]
    self.hidden = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The last hidden layer's activations, shape ``(batch, hidden[-1])``."""
    x = jnp.reshape(x, (x.shape[0], -1))
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))
