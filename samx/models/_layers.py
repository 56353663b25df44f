"""Building blocks shared by the models: the precision policy, layers, widths, residual stages.

``compute_dtype`` checks every model's ``dtype``; ``conv``, ``batch_norm`` and ``dense`` compute
in it with float32 parameters and ``head`` in float32 (the policy is described in
:mod:`samx.models`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

RESNET_CHANNELS = (64, 128, 256, 512)

COMPUTE_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16))


def compute_dtype(dtype: DTypeLike) -> np.dtype:
  """``dtype`` as a NumPy dtype, checked to be a supported compute dtype.

  Args:
    dtype: ``jnp.float32`` or ``jnp.bfloat16`` (or anything ``jnp.dtype`` reads as one, such
      as ``"bfloat16"``).

  Returns:
    The canonical dtype, ``float32`` or ``bfloat16``.

  Raises:
    ValueError: for any other dtype, float16 included (it needs loss scaling).
  """
  try:
    canonical = None if dtype is None else np.dtype(jnp.dtype(dtype))
  except TypeError:
    canonical = None
  if canonical is not None and canonical in COMPUTE_DTYPES:
    return canonical
  got = repr(dtype) if canonical is None else canonical.name
  message = f"dtype must be float32 or bfloat16 (the compute dtype); got {got}."
  if canonical == np.dtype(jnp.float16):
    message += (" float16 needs loss scaling to train without underflow, which samx does not "
                "implement; use bfloat16, which has float32's range.")
  raise ValueError(message)


def scale_channels(channels: Sequence[int], width: float) -> list[int]:
  """Each channel count times ``width``, rounded, and at least 1."""
  return [max(1, round(c * width)) for c in channels]


def conv(in_channels: int, out_channels: int, kernel: int, stride: int, *,
         dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
  """A square ``kernel`` convolution without bias and with ``SAME`` padding, computing in
  ``dtype`` with float32 parameters."""
  return nnx.Conv(in_channels, out_channels, (kernel, kernel), strides=(stride, stride),
                  padding="SAME", use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  rngs=rngs)


def batch_norm(channels: int, *, dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with momentum 0.9 and epsilon 1e-5, outputs in ``dtype``; its parameters and
  running statistics are float32."""
  return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype,
                       param_dtype=jnp.float32, rngs=rngs)


def dense(in_features: int, out_features: int, *, use_bias: bool = True,
          dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs) -> nnx.Linear:
  """A dense layer computing in ``dtype`` with float32 parameters (inputs cast to ``dtype``)."""
  return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                    param_dtype=jnp.float32, rngs=rngs)


def head(in_features: int, out_features: int, *, use_bias: bool = True,
         rngs: nnx.Rngs) -> nnx.Linear:
  """The last layer: a dense layer that casts its features to float32 and computes in float32,
  so the logits are float32 whatever the model's compute dtype."""
  return dense(in_features, out_features, use_bias=use_bias, dtype=jnp.float32, rngs=rngs)


def residual_stages(
    block: Callable[..., nnx.Module],
    in_channels: int,
    blocks_per_stage: Sequence[int],
    stage_channels: Sequence[int],
    *,
    dtype: DTypeLike = jnp.float32,
    rngs: nnx.Rngs,
) -> tuple[nnx.List, int]:
  """The blocks of every stage, in order, and the channels of the last one.

  ``block(in_channels, channels, stride, dtype=dtype, rngs=rngs)`` builds one block; the first
  block of every stage after the first has stride 2 (it halves the resolution).
  """
  blocks, previous = [], in_channels
  for stage, (size, channels) in enumerate(zip(blocks_per_stage, stage_channels, strict=True)):
    for index in range(size):
      blocks.append(block(previous, channels, 2 if stage > 0 and index == 0 else 1, dtype=dtype,
                          rngs=rngs))
      previous = channels
  return nnx.List(blocks), previous
