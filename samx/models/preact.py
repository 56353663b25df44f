"""Pre-activation ResNets (He et al. 2016b) and Wide ResNets (Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _conv(in_c: int, out_c: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(in_c, out_c, (kernel, kernel), strides=(stride, stride), padding="SAME",
                  use_bias=False, rngs=rngs)


def _norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class PreActBlock(nnx.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1 projection of the activated input if needed."""

  def __init__(self, in_channels: int, channels: int, stride: int, *, rngs: nnx.Rngs):
    self.norm1, self.conv1 = _norm(in_channels, rngs), _conv(in_channels, channels, 3, stride,
                                                             rngs)
    self.norm2, self.conv2 = _norm(channels, rngs), _conv(channels, channels, 3, 1, rngs)
    self.shortcut = (_conv(in_channels, channels, 1, stride, rngs)
                     if stride != 1 or in_channels != channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    activated = nnx.relu(self.norm1(x))
    shortcut = x if self.shortcut is None else self.shortcut(activated)
    y = self.conv1(activated)
    y = self.conv2(nnx.relu(self.norm2(y)))
    return y + shortcut


class PreActResNet(nnx.Module):
  """A pre-activation ResNet with the CIFAR stem; ``features`` then ``head`` as in ResNet.

  ``stage_channels`` are the channels of each stage and ``blocks_per_stage`` its depth; the
  first block of every stage after the first halves the resolution.
  """

  def __init__(self, blocks_per_stage: Sequence[int], stage_channels: Sequence[int],
               num_classes: int, *, stem_channels: int, in_channels: int = 3, rngs: nnx.Rngs):
    self.stem_conv = _conv(in_channels, stem_channels, 3, 1, rngs)
    blocks, previous = [], stem_channels
    for stage, (size, channels) in enumerate(zip(blocks_per_stage, stage_channels,
                                                 strict=True)):
      for index in range(size):
        blocks.append(PreActBlock(previous, channels, 2 if stage > 0 and index == 0 else 1,
                                  rngs=rngs))
        previous = channels
    self.blocks = nnx.List(blocks)
    self.final_norm = _norm(previous, rngs)
    self.head = nnx.Linear(previous, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """Penultimate features: BN-ReLU of the last stage, globally average-pooled."""
    x = self.stem_conv(x)
    for block in self.blocks:
      x = block(x)
    return jnp.mean(nnx.relu(self.final_norm(x)), axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


def preact_resnet18(num_classes: int, *, width: float = 1.0, rngs: nnx.Rngs,
                    **kwargs) -> PreActResNet:
  """PreAct ResNet-18: stages of 2 blocks with 64-128-256-512 channels times ``width``."""
  channels = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
  return PreActResNet((2, 2, 2, 2), channels, num_classes, stem_channels=channels[0],
                      rngs=rngs, **kwargs)


def wide_resnet(depth: int, widen_factor: int, num_classes: int, *, width: float = 1.0,
                rngs: nnx.Rngs, **kwargs) -> PreActResNet:
  """WRN-``depth``-``widen_factor`` (e.g. 16-4, 28-10): three stages of ``(depth - 4) / 6``
  pre-activation blocks with 16k-32k-64k channels, a 16-channel stem; ``width`` scales all."""
  if (depth - 4) % 6 or depth < 10:
    raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...); got {depth}.")
  blocks = (depth - 4) // 6
  channels = [max(1, round(c * widen_factor * width)) for c in (16, 32, 64)]
  return PreActResNet((blocks,) * 3, channels, num_classes,
                      stem_channels=max(1, round(16 * width)), rngs=rngs, **kwargs)
