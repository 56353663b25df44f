"""Pre-activation ResNets (He et al. 2016b) and Wide ResNets (Zagoruyko & Komodakis 2016)."""

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


class PreActBlock(nnx.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1 projection of the activated input if needed.

  ``dtype`` is the compute dtype (float32 or bfloat16); parameters are float32.
  """

  def __init__(self, in_channels: int, channels: int, stride: int, *,
               dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    self.norm1 = batch_norm(in_channels, dtype=dtype, rngs=rngs)
    self.conv1 = conv(in_channels, channels, 3, stride, dtype=dtype, rngs=rngs)
    self.norm2 = batch_norm(channels, dtype=dtype, rngs=rngs)
    self.conv2 = conv(channels, channels, 3, 1, dtype=dtype, rngs=rngs)
    self.shortcut = (conv(in_channels, channels, 1, stride, dtype=dtype, rngs=rngs)
                     if stride != 1 or in_channels != channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    activated = nnx.relu(self.norm1(x))
    shortcut = x if self.shortcut is None else self.shortcut(activated)
    y = self.conv1(activated)
    y = self.conv2(nnx.relu(self.norm2(y)))
    return y + shortcut


class PreActResNet(nnx.Module):
  """A pre-activation ResNet with the CIFAR stem; ``features`` then ``head`` as in ResNet.

  ``stage_channels`` are the channels of each stage and ``blocks_per_stage`` its depth; the
  first block of every stage after the first halves the resolution. ``dtype`` is the compute
  dtype (float32 or bfloat16): parameters and BatchNorm statistics stay float32, ``features``
  are in ``dtype`` and the logits float32 (see ``samx.models``).
  """

  def __init__(self, blocks_per_stage: Sequence[int], stage_channels: Sequence[int],
               num_classes: int, *, stem_channels: int, in_channels: int = 3,
               dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    self.stem_conv = conv(in_channels, stem_channels, 3, 1, dtype=dtype, rngs=rngs)
    self.blocks, previous = residual_stages(PreActBlock, stem_channels, blocks_per_stage,
                                            stage_channels, dtype=dtype, rngs=rngs)
    self.final_norm = batch_norm(previous, dtype=dtype, rngs=rngs)
    self.head = head(previous, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """Penultimate features: BN-ReLU of the last stage, globally average-pooled, in the
    compute dtype."""
    x = self.stem_conv(x)
    for block in self.blocks:
      x = block(x)
    return jnp.mean(nnx.relu(self.final_norm(x)), axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Float32 logits ``(batch, num_classes)``."""
    return self.head(self.features(x))


def preact_resnet18(num_classes: int, *, width: float = 1.0, dtype: DTypeLike = jnp.float32,
                    rngs: nnx.Rngs, **kwargs) -> PreActResNet:
  """PreAct ResNet-18: stages of 2 blocks with 64-128-256-512 channels times ``width``;
  ``dtype`` is the compute dtype (float32 or bfloat16, parameters float32)."""
  channels = scale_channels(RESNET_CHANNELS, width)
  return PreActResNet((2, 2, 2, 2), channels, num_classes, stem_channels=channels[0],
                      dtype=dtype, rngs=rngs, **kwargs)


def wide_resnet(depth: int, widen_factor: int, num_classes: int, *, width: float = 1.0,
                dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs, **kwargs) -> PreActResNet:
  """WRN-``depth``-``widen_factor`` (e.g. 16-4, 28-10): three stages of ``(depth - 4) / 6``
  pre-activation blocks with 16k-32k-64k channels, a 16-channel stem; ``width`` scales all.
  ``dtype`` is the compute dtype (float32 or bfloat16, parameters float32)."""
  if (depth - 4) % 6 or depth < 10:
    raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...); got {depth}.")
  blocks = (depth - 4) // 6
  channels = scale_channels([c * widen_factor for c in (16, 32, 64)], width)
  (stem_channels,) = scale_channels((16,), width)
  return PreActResNet((blocks,) * 3, channels, num_classes, stem_channels=stem_channels,
                      dtype=dtype, rngs=rngs, **kwargs)
