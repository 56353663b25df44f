"""The run's network, built from :class:`samx.train.config.ModelConfig`."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from samx import models
from samx.train.config import ModelConfig
from samx.train.errors import ConfigError


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *,
                seed: int) -> nnx.Module:
  """The configured model for inputs of ``input_shape`` (one example) and ``num_classes``.

  Every model computes in ``config.dtype`` with float32 parameters, BatchNorm statistics and
  logits (see :mod:`samx.models`). The convolutional models take images ``(height, width,
  channels)``; ``mlp`` and ``two_layer_linear`` flatten any input; ``two_layer_relu_cnn`` takes
  ``(patches, dim)`` with two classes.
  """
  rngs = nnx.Rngs(seed)
  name = config.name
  dtype = jnp.dtype(config.dtype)
  if name in ("resnet18", "resnet34", "preact_resnet18", "wide_resnet", "small_cnn"):
    if len(input_shape) != 3:
      raise ConfigError(f"model.name={name} needs images (height, width, channels); the data "
                        f"has inputs of shape {input_shape}.")
    channels = input_shape[-1]
    if name == "resnet18":
      return models.resnet18(num_classes, width=config.width, in_channels=channels, dtype=dtype,
                             rngs=rngs)
    if name == "resnet34":
      return models.resnet34(num_classes, width=config.width, in_channels=channels, dtype=dtype,
                             rngs=rngs)
    if name == "preact_resnet18":
      return models.preact_resnet18(num_classes, width=config.width, in_channels=channels,
                                    dtype=dtype, rngs=rngs)
    if name == "wide_resnet":
      return models.wide_resnet(config.depth, config.widen_factor, num_classes,
                                width=config.width, in_channels=channels, dtype=dtype, rngs=rngs)
    return models.SmallCNN(input_shape, num_classes, width=config.width, dtype=dtype,
                           rngs=rngs)
  if name == "vit":
    if len(input_shape) != 3:
      raise ConfigError(f"model.name=vit needs images (height, width, channels); the data has "
                        f"inputs of shape {input_shape}.")
    height, width, channels = input_shape
    if height % config.patch_size or width % config.patch_size:
      raise ConfigError(f"model.patch_size={config.patch_size} must divide the images' height "
                        f"and width ({height}, {width}).")
    return models.ViT(num_classes, config.patch_size, config.hidden[0], config.depth,
                      config.heads, config.mlp_dim, image_size=(height, width),
                      in_channels=channels, pooling=config.pooling, dtype=dtype, rngs=rngs)
  features = math.prod(input_shape)
  if name == "mlp":
    return models.MLP(features, tuple(config.hidden), num_classes, dtype=dtype, rngs=rngs)
  if name == "two_layer_linear":
    return models.TwoLayerLinear(features, config.hidden[0], num_classes, dtype=dtype, rngs=rngs)
  if name == "two_layer_relu_cnn":
    if len(input_shape) != 2 or num_classes != 2:
      raise ConfigError(f"model.name=two_layer_relu_cnn needs patch data (patches, dim) with two "
                        f"classes (data.name=patches); got inputs {input_shape} and "
                        f"{num_classes} classes.")
    return models.TwoLayerReLUCNN(input_shape[-1], config.filters_per_sign,
                                  init_std=config.init_std, power=config.power, dtype=dtype,
                                  rngs=rngs)
  raise ConfigError(f"model.name must be one of the known models; got {name!r}.")
