"""The seed papers' small networks: Chen et al.'s two-layer ReLU CNN, a two-layer linear net."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from samx.models._layers import compute_dtype, dense, head, scale_channels


class FixedHead(nnx.Module):
  """A linear map that is not trained (its kernel is an ``nnx.Variable``, not an ``nnx.Param``).

  It computes in float32: its features are cast to float32, so its outputs are float32.
  """

  def __init__(self, kernel: jax.Array):
    self.kernel = nnx.Variable(kernel)

  def __call__(self, features: jax.Array) -> jax.Array:
    return jnp.asarray(features, jnp.float32) @ self.kernel[...]


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

  ``dtype`` is the compute dtype (float32 or bfloat16): the filters are stored in float32 and
  cast with the inputs to ``dtype`` for the first layer, whose ``features`` are in ``dtype``;
  the fixed head computes float32 logits.
  """

  def __init__(self, patch_dim: int, filters_per_sign: int, *, init_std: float = 0.01,
               power: float = 1.0, dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = compute_dtype(dtype)
    m = filters_per_sign
    self.filters = nnx.Param(init_std * jax.random.normal(rngs.params(), (2 * m, patch_dim)))
    signs = jnp.concatenate([jnp.ones(m), -jnp.ones(m)]) / m
    self.head = FixedHead(0.5 * jnp.stack([-signs, signs], axis=1))
    self.power = power

  def features(self, x: jax.Array) -> jax.Array:
    """``(batch, 2m)``: each filter's activation summed over the patches (+1 filters first),
    in the compute dtype."""
    x, filters = jnp.asarray(x, self.dtype), jnp.asarray(self.filters[...], self.dtype)
    activations = jnp.maximum(jnp.einsum("bpd,fd->bpf", x, filters), 0.0)
    return jnp.sum(activations**self.power, axis=1)

  def __call__(self, x: jax.Array) -> jax.Array:
    """The two float32 logits ``(-f / 2, f / 2)``, ``(batch, 2)``."""
    return self.head(self.features(x))


class TwoLayerLinear(nnx.Module):
  """``f(x) = V (W x)``: the two-layer linear network of Baek et al.'s analysis (no biases).

  ``dtype`` is the compute dtype of ``W x`` (float32 or bfloat16; ``features`` are in it); the
  parameters are float32 and the ``head`` ``V`` computes in float32.
  """

  def __init__(self, in_features: int, hidden: int, out_features: int = 1, *,
               dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    self.hidden = dense(in_features, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.head = head(hidden, out_features, use_bias=False, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The hidden activations ``z = W x``, in the compute dtype."""
    return self.hidden(jnp.reshape(x, (x.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Float32 outputs ``V W x``, ``(batch, out_features)``."""
    return self.head(self.features(x))


class SmallCNN(nnx.Module):
  """The small convolutional network of Springer et al. 2024's dominoes experiments.

  Three strided convolutions with ReLU (32 filters 5x5 stride 2, then 64 and 128 filters 3x3
  stride 2; zero padding keeps ``ceil(size / 2)`` per stride), flattened, then the linear
  ``head``. ``features`` is the flattened last convolution. ``dtype`` is the compute dtype of
  the convolutions (float32 or bfloat16; ``features`` are in it); the parameters are float32
  and the ``head`` computes float32 logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from samx.models import SmallCNN
    >>> model = SmallCNN((64, 32, 3), num_classes=2, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 64, 32, 3))).shape, model.features(jnp.ones((2, 64, 32, 3))).shape
    ((2, 2), (2, 4096))
  """

  def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *,
               width: float = 1.0, dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    height, breadth, channels = input_shape
    sizes = scale_channels((32, 64, 128), width)
    precision = {"dtype": dtype, "param_dtype": jnp.float32}
    self.conv1 = nnx.Conv(channels, sizes[0], (5, 5), strides=(2, 2), padding=((2, 2), (2, 2)),
                          **precision, rngs=rngs)
    self.conv2 = nnx.Conv(sizes[0], sizes[1], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                          **precision, rngs=rngs)
    self.conv3 = nnx.Conv(sizes[1], sizes[2], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                          **precision, rngs=rngs)
    for _ in range(3):
      height, breadth = -(-height // 2), -(-breadth // 2)
    self.head = head(height * breadth * sizes[2], num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The flattened output of the last convolution, ``(batch, h * w * 128 * width)``, in the
    compute dtype."""
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.conv3(x))
    return jnp.reshape(x, (x.shape[0], -1))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Float32 logits ``(batch, num_classes)``."""
    return self.head(self.features(x))
