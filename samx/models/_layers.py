"""Building blocks shared by the convolutional models: layers, channel widths, residual stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flax import nnx

RESNET_CHANNELS = (64, 128, 256, 512)


def scale_channels(channels: Sequence[int], width: float) -> list[int]:
  """Each channel count times ``width``, rounded, and at least 1."""
  return [max(1, round(c * width)) for c in channels]


def conv(in_channels: int, out_channels: int, kernel: int, stride: int, *,
         rngs: nnx.Rngs) -> nnx.Conv:
  """A square ``kernel`` convolution without bias and with ``SAME`` padding."""
  return nnx.Conv(in_channels, out_channels, (kernel, kernel), strides=(stride, stride),
                  padding="SAME", use_bias=False, rngs=rngs)


def batch_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with momentum 0.9 and epsilon 1e-5."""
  return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


def residual_stages(
    block: Callable[..., nnx.Module],
    in_channels: int,
    blocks_per_stage: Sequence[int],
    stage_channels: Sequence[int],
    *,
    rngs: nnx.Rngs,
) -> tuple[nnx.List, int]:
  """The blocks of every stage, in order, and the channels of the last one.

  ``block(in_channels, channels, stride, rngs=rngs)`` builds one block; the first block of
  every stage after the first has stride 2 (it halves the resolution).
  """
  blocks, previous = [], in_channels
  for stage, (size, channels) in enumerate(zip(blocks_per_stage, stage_channels, strict=True)):
    for index in range(size):
      blocks.append(block(previous, channels, 2 if stage > 0 and index == 0 else 1, rngs=rngs))
      previous = channels
  return nnx.List(blocks), previous
