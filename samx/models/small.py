"""The seed papers' small networks: Chen et al.'s two-layer ReLU CNN, a two-layer linear net."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class FixedHead(nnx.Module):
  """A linear map that is not trained (its kernel is an ``nnx.Variable``, not an ``nnx.Param``)."""

  def __init__(self, kernel: jax.Array):
    self.kernel = nnx.Variable(kernel)

  def __call__(self, features: jax.Array) -> jax.Array:
    return features @ self.kernel[...]


class TwoLayerReLUCNN(nnx.Module):
  r"""Chen et al. 2023's two-layer convolutional ReLU network with a fixed second layer.

  On inputs of ``P`` patches of dimension ``d`` (shape ``(batch, P, d)``),

  .. math::
    F_j(x) = \frac{1}{m} \sum_{r=1}^{m} \sum_{p=1}^{P} \sigma(\langle w_{j,r}, x^{(p)} \rangle),
    \qquad f(x) = F_{+1}(x) - F_{-1}(x),

  with ``m`` filters per sign and :math:`\sigma` the ReLU (or, with ``power=q``, the polynomial
  ReLU :math:`\max(z, 0)^q` of the paper's analysis). It returns the two logits
  ``(-f / 2, f / 2)``, so softmax cross-entropy on labels {0, 1} is the logistic loss
  :math:`\log(1 + e^{-y f})` with :math:`y = 2\,\mathrm{label} - 1`. ``features`` are the
  per-filter sums :math:`\sum_p \sigma(\cdot)`; ``head`` is the fixed second layer.
  """

  def __init__(self, patch_dim: int, filters_per_sign: int, *, init_std: float = 0.01,
               power: float = 1.0, rngs: nnx.Rngs):
    m = filters_per_sign
    self.filters = nnx.Param(init_std * jax.random.normal(rngs.params(), (2 * m, patch_dim)))
    signs = jnp.concatenate([jnp.ones(m), -jnp.ones(m)]) / m
    self.head = FixedHead(0.5 * jnp.stack([-signs, signs], axis=1))
    self.power = power

  def features(self, x: jax.Array) -> jax.Array:
    """``(batch, 2m)``: each filter's activation summed over the patches (+1 filters first)."""
    activations = jnp.maximum(jnp.einsum("bpd,fd->bpf", x, self.filters[...]), 0.0)
    return jnp.sum(activations**self.power, axis=1)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


class TwoLayerLinear(nnx.Module):
  """``f(x) = V (W x)``: the two-layer linear network of Baek et al.'s analysis (no biases)."""

  def __init__(self, in_features: int, hidden: int, out_features: int = 1, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, hidden, use_bias=False, rngs=rngs)
    self.head = nnx.Linear(hidden, out_features, use_bias=False, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The hidden activations ``z = W x``."""
    return self.hidden(jnp.reshape(x, (x.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))
