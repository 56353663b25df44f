"""A multi-layer perceptron with ReLU hidden layers."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from samx.models._layers import compute_dtype, dense, head


class MLP(nnx.Module):
  """``x -> ReLU(Linear) x len(hidden) -> head``; inputs of any shape are flattened per example.

  ``dtype`` is the compute dtype of the hidden layers (float32 or bfloat16): parameters stay
  float32, ``features`` are in ``dtype`` and the ``head`` computes float32 logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from samx.models import MLP
    >>> model = MLP(784, (128, 64), 10, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 28, 28, 1))).shape, model.features(jnp.ones((2, 784))).shape
    ((2, 10), (2, 64))
  """

  def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, *,
               dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    widths = [in_features, *hidden]
    self.hidden = nnx.List(
        [dense(a, b, dtype=dtype, rngs=rngs) for a, b in itertools.pairwise(widths)])
    self.head = head(widths[-1], num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The last hidden layer's activations, ``(batch, hidden[-1])``, in the compute dtype."""
    x = jnp.asarray(jnp.reshape(x, (x.shape[0], -1)), self.dtype)
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    """Float32 logits ``(batch, num_classes)``."""
    return self.head(self.features(x))
