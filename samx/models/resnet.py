"""ResNets with the CIFAR stem (He et al. 2016), a width multiplier for CPU-sized runs."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from samx.models._layers import (
    RESNET_CHANNELS,
    batch_norm,
    compute_dtype,
    conv,
    head,
    residual_stages,
    scale_channels,
)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with BatchNorm and a projection shortcut when the shape changes.

  ``dtype`` is the compute dtype (float32 or bfloat16); parameters are float32.
  """

  def __init__(self, in_channels: int, channels: int, stride: int, *,
               dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    self.conv1 = conv(in_channels, channels, 3, stride, dtype=dtype, rngs=rngs)
    self.norm1 = batch_norm(channels, dtype=dtype, rngs=rngs)
    self.conv2 = conv(channels, channels, 3, 1, dtype=dtype, rngs=rngs)
    self.norm2 = batch_norm(channels, dtype=dtype, rngs=rngs)
    if stride != 1 or in_channels != channels:
      self.shortcut = nnx.Sequential(conv(in_channels, channels, 1, stride, dtype=dtype,
                                          rngs=rngs),
                                     batch_norm(channels, dtype=dtype, rngs=rngs))
    else:
      self.shortcut = None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nnx.Module):
  """A CIFAR-style ResNet: 3x3 stem, four stages of basic blocks, global average pool, ``head``.

  ``width`` multiplies every channel count (1.0 is the standard 64-128-256-512); BatchNorm
  follows ``model.train()`` / ``model.eval()``. ``dtype`` is the compute dtype (float32 or
  bfloat16): parameters and BatchNorm statistics stay float32, ``features`` are in ``dtype``
  and the logits float32 (see ``samx.models``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from samx.models import resnet18
    >>> model = resnet18(num_classes=10, width=0.25, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 32, 32, 3))).shape, model.features(jnp.ones((2, 32, 32, 3))).shape
    ((2, 10), (2, 128))
  """

  def __init__(self, stage_sizes: Sequence[int], num_classes: int, *, width: float = 1.0,
               in_channels: int = 3, dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    channels = scale_channels(RESNET_CHANNELS, width)
    self.stem_conv = conv(in_channels, channels[0], 3, 1, dtype=dtype, rngs=rngs)
    self.stem_norm = batch_norm(channels[0], dtype=dtype, rngs=rngs)
    self.blocks, previous = residual_stages(BasicBlock, channels[0], stage_sizes, channels,
                                            dtype=dtype, rngs=rngs)
    self.head = head(previous, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """Penultimate features: the globally average-pooled last stage, ``(batch, channels)``,
    in the compute dtype."""
    x = nnx.relu(self.stem_norm(self.stem_conv(x)))
    for block in self.blocks:
      x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Float32 logits ``(batch, num_classes)``."""
    return self.head(self.features(x))


def resnet18(num_classes: int, *, width: float = 1.0, dtype: DTypeLike = jnp.float32,
             rngs: nnx.Rngs, **kwargs) -> ResNet:
  """ResNet-18 (stages of 2, 2, 2, 2 basic blocks) with the CIFAR stem; ``dtype`` is the
  compute dtype (float32 or bfloat16, parameters float32)."""
  return ResNet((2, 2, 2, 2), num_classes, width=width, dtype=dtype, rngs=rngs, **kwargs)


def resnet34(num_classes: int, *, width: float = 1.0, dtype: DTypeLike = jnp.float32,
             rngs: nnx.Rngs, **kwargs) -> ResNet:
  """ResNet-34 (stages of 3, 4, 6, 3 basic blocks) with the CIFAR stem; ``dtype`` is the
  compute dtype (float32 or bfloat16, parameters float32)."""
  return ResNet((3, 4, 6, 3), num_classes, width=width, dtype=dtype, rngs=rngs, **kwargs)
