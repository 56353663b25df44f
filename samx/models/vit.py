"""The Vision Transformer (Dosovitskiy et al. 2021, `An Image is Worth 16x16 Words
<https://arxiv.org/abs/2010.11929>`_): patch embedding, pre-LayerNorm encoder blocks, ``head``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from samx.models._layers import compute_dtype, head

POOLINGS = ("token", "mean")


def _positive_int(name: str, value: object) -> int:
  """``value`` as an ``int``, checked to be a positive integer (``bool`` refused)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"ViT: {name} must be a positive integer; got {value!r}.")
  return int(value)


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
  """``image_size`` as ``(height, width)``, each a positive integer."""
  sizes = (image_size, image_size) if not isinstance(image_size, Sequence) else image_size
  if len(sizes) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                            or s <= 0 for s in sizes):
    raise ValueError("ViT: image_size must be a positive integer or a (height, width) pair of "
                     f"positive integers; got {image_size!r}.")
  return int(sizes[0]), int(sizes[1])


def _dense(in_features: int, out_features: int, *, dtype: DTypeLike,
           rngs: nnx.Rngs) -> nnx.Linear:
  """A dense layer as ``_layers.dense`` (computing in ``dtype``, float32 parameters) with the
  Transformer's initialisation: a Xavier-uniform kernel and a zero bias."""
  return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.xavier_uniform(),
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs)


def _layer_norm(features: int, *, dtype: DTypeLike, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm with epsilon 1e-6, outputs in ``dtype``, float32 scale and bias (Flax computes
  the mean and variance in float32)."""
  return nnx.LayerNorm(features, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class MultiHeadSelfAttention(nnx.Module):
  """Multi-head scaled dot-product self-attention over ``(batch, tokens, hidden)`` inputs.

  Query, key, value and output projections are separate dense layers (``hidden -> hidden``);
  each head attends with ``softmax(q k^T / sqrt(head_dim))``, the scores and the softmax in
  float32 (the weights are then rounded to ``dtype``). ``dtype`` is the compute dtype (float32
  or bfloat16); parameters are float32. No dropout.
  """

  def __init__(self, hidden: int, heads: int, *, dtype: DTypeLike = jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    if hidden % heads:
      raise ValueError(f"MultiHeadSelfAttention: hidden ({hidden}) must be divisible by heads "
                       f"({heads}).")
    self.hidden, self.heads, self.head_dim = hidden, heads, hidden // heads
    self.query = _dense(hidden, hidden, dtype=dtype, rngs=rngs)
    self.key = _dense(hidden, hidden, dtype=dtype, rngs=rngs)
    self.value = _dense(hidden, hidden, dtype=dtype, rngs=rngs)
    self.out = _dense(hidden, hidden, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, _ = x.shape
    x = jnp.asarray(x, self.dtype)

    def split_heads(y: jax.Array) -> jax.Array:
      return jnp.reshape(y, (batch, tokens, self.heads, self.head_dim))

    q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(scores / math.sqrt(self.head_dim), axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", jnp.asarray(weights, self.dtype), v)
    return self.out(jnp.reshape(y, (batch, tokens, self.hidden)))


class EncoderBlock(nnx.Module):
  """A pre-LayerNorm Transformer encoder block (the paper's equations 2 and 3):
  ``x + MSA(LN(x))``, then ``x + MLP(LN(x))`` with ``MLP = dense(hidden -> mlp_dim), GELU,
  dense(mlp_dim -> hidden)``.

  The GELU is the exact one, ``x * Phi(x)``. ``dtype`` is the compute dtype (float32 or
  bfloat16); parameters are float32. No dropout.
  """

  def __init__(self, hidden: int, heads: int, mlp_dim: int, *, dtype: DTypeLike = jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    self.norm1 = _layer_norm(hidden, dtype=dtype, rngs=rngs)
    self.attention = MultiHeadSelfAttention(hidden, heads, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(hidden, dtype=dtype, rngs=rngs)
    self.mlp_in = _dense(hidden, mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_out = _dense(mlp_dim, hidden, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    x = x + self.attention(self.norm1(x))
    return x + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x)), approximate=False))


class ViT(nnx.Module):
  """A Vision Transformer: non-overlapping ``patch_size`` patches embedded by a strided
  convolution, a class token (``pooling="token"``), a learned position embedding, ``depth``
  pre-LayerNorm encoder blocks, a final LayerNorm, pooling, and the linear ``head``.

  ``pooling="token"`` prepends a learned class token and pools its output (the paper's
  ``z_L^0``); ``pooling="mean"`` adds no token and averages the patch tokens. The model is
  deterministic: there is no dropout (nor stochastic depth), so ``model.train()`` and
  ``model.eval()`` compute the same function. Images are ``(batch, height, width,
  channels)``; ``image_size`` (an int for square images, or ``(height, width)``) fixes the
  number of patches and so the position embedding's shape.

  Initialisation: the dense kernels of the blocks are Xavier-uniform and their biases zero;
  the class token is zero and the position embedding normal with standard deviation 0.02; the
  patch embedding and ``head`` keep Flax's defaults (LeCun-normal kernels, zero biases).

  ``dtype`` is the compute dtype (float32 or bfloat16): parameters stay float32, the attention
  scores and softmax are computed in float32, ``features`` are in ``dtype`` and the ``head``
  computes float32 logits (see ``samx.models``).

  Args:
    num_classes: the number of logits.
    patch_size: the side of the square patches; it must divide the image's height and width.
    hidden: the width of the tokens (the paper's ``D``); a multiple of ``heads``.
    depth: the number of encoder blocks.
    heads: the number of attention heads, each of width ``hidden // heads``.
    mlp_dim: the width of each block's MLP.
    image_size: the images' side, or their ``(height, width)``.
    in_channels: the images' channels.
    pooling: ``"token"`` (class token) or ``"mean"`` (mean over the patch tokens).
    dtype: the compute dtype, ``jnp.float32`` or ``jnp.bfloat16``.
    rngs: the random keys of the initialisation.

  Raises:
    ValueError: for an argument that is not a positive integer, ``hidden`` not divisible by
      ``heads``, an image size not divisible by ``patch_size``, an unknown ``pooling`` or an
      unsupported ``dtype``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from samx.models import ViT
    >>> model = ViT(10, patch_size=4, hidden=32, depth=2, heads=4, mlp_dim=64, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 32, 32, 3))).shape, model.features(jnp.ones((2, 32, 32, 3))).shape
    ((2, 10), (2, 32))
  """

  def __init__(self, num_classes: int, patch_size: int, hidden: int, depth: int, heads: int,
               mlp_dim: int, *, image_size: int | Sequence[int] = 32, in_channels: int = 3,
               pooling: str = "token", dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype = compute_dtype(dtype)
    sizes = {"num_classes": num_classes, "patch_size": patch_size, "hidden": hidden,
             "depth": depth, "heads": heads, "mlp_dim": mlp_dim, "in_channels": in_channels}
    num_classes, patch_size, hidden, depth, heads, mlp_dim, in_channels = (
        _positive_int(name, value) for name, value in sizes.items())
    height, width = _image_size(image_size)
    if hidden % heads:
      raise ValueError(f"ViT: hidden ({hidden}) must be divisible by heads ({heads}), so that "
                       "every head has hidden // heads dimensions.")
    if height % patch_size or width % patch_size:
      raise ValueError(f"ViT: image_size ({height}, {width}) must be divisible by patch_size "
                       f"({patch_size}) in height and width.")
    if pooling not in POOLINGS:
      raise ValueError(f"ViT: pooling must be 'token' or 'mean'; got {pooling!r}.")
    self.image_size, self.in_channels = (height, width), in_channels
    self.hidden, self.pooling = hidden, pooling
    self.patch_embedding = nnx.Conv(in_channels, hidden, (patch_size, patch_size),
                                    strides=(patch_size, patch_size), padding="VALID",
                                    use_bias=True, dtype=dtype, param_dtype=jnp.float32,
                                    rngs=rngs)
    tokens = (height // patch_size) * (width // patch_size)
    if pooling == "token":
      self.class_token = nnx.Param(jnp.zeros((1, 1, hidden), jnp.float32))
      tokens += 1
    else:
      self.class_token = None
    self.position_embedding = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (1, tokens, hidden), jnp.float32))
    self.blocks = nnx.List([EncoderBlock(hidden, heads, mlp_dim, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = _layer_norm(hidden, dtype=dtype, rngs=rngs)
    self.head = head(hidden, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The pooled output of the final LayerNorm, ``(batch, hidden)``, in the compute dtype."""
    expected = (*self.image_size, self.in_channels)
    if tuple(x.shape[1:]) != expected:
      raise ValueError(f"ViT: the images must have shape (batch, {expected[0]}, {expected[1]}, "
                       f"{expected[2]}) (image_size and in_channels); got {tuple(x.shape)}.")
    x = self.patch_embedding(jnp.asarray(x, self.dtype))
    x = jnp.reshape(x, (x.shape[0], -1, self.hidden))
    if self.class_token is not None:
      token = jnp.asarray(self.class_token[...], self.dtype)
      x = jnp.concatenate([jnp.broadcast_to(token, (x.shape[0], 1, self.hidden)), x], axis=1)
    x = x + jnp.asarray(self.position_embedding[...], self.dtype)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    return x[:, 0] if self.pooling == "token" else jnp.mean(x, axis=1)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Float32 logits ``(batch, num_classes)``."""
    return self.head(self.features(x))
