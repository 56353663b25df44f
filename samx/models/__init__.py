"""Flax NNX models; each exposes ``features(x)`` (penultimate features) and its last layer ``head``.

The CIFAR ResNets (``resnet18``, ``resnet34``, ``preact_resnet18``, ``wide_resnet``) with
BatchNorm, a Vision Transformer (``ViT``), and the seeds' small networks (``MLP``, ``SmallCNN``,
``TwoLayerReLUCNN``, ``TwoLayerLinear``); ``normalization_mask`` and ``weight_mask`` are the
masks of SAM-ON and of the ASAM authors' convention, and ``batch_statistics`` with
``normalizing_with`` hold BatchNorm's statistics fixed for m-sharpness
(``samx.models.statistics``).

Mixed precision. Every model and block takes ``dtype``, the *compute* dtype, ``jnp.float32`` (the
default) or ``jnp.bfloat16``:

* parameters (``nnx.Param``) are stored in float32 whatever ``dtype`` is (``param_dtype``), so
  gradients, optimizer states and updates stay in float32;
* convolutions, hidden dense layers and BatchNorm compute in ``dtype``: the first layer casts
  float32 inputs to it, and each layer casts its float32 parameters to it;
* BatchNorm's running statistics (``nnx.BatchStat`` mean and var) stay float32: Flax creates
  them in float32, computes the batch mean and variance in float32 even for bfloat16 inputs
  and updates the running averages in float32 (training mode normalizes with the batch
  statistics in float32 and rounds the output to ``dtype``; eval mode normalizes in ``dtype``
  with the running statistics rounded to it);
* the last layer ``head`` computes in float32 on its features cast to float32, so ``model(x)``
  returns float32 logits and the loss is float32; ``model.features(x)`` returns the
  penultimate features in ``dtype``.

float16 is refused: it needs loss scaling to train without underflow, which samx does not
implement; bfloat16 has float32's exponent range and needs none.
"""

from samx.models.masks import normalization_mask, weight_mask
from samx.models.mlp import MLP
from samx.models.preact import PreActBlock, PreActResNet, preact_resnet18, wide_resnet
from samx.models.resnet import BasicBlock, ResNet, resnet18, resnet34
from samx.models.small import FixedHead, SmallCNN, TwoLayerLinear, TwoLayerReLUCNN
from samx.models.statistics import batch_statistics, normalizing_with
from samx.models.vit import ViT

__all__ = [
    "MLP",
    "BasicBlock",
    "FixedHead",
    "PreActBlock",
    "PreActResNet",
    "ResNet",
    "SmallCNN",
    "TwoLayerLinear",
    "TwoLayerReLUCNN",
    "ViT",
    "batch_statistics",
    "normalization_mask",
    "normalizing_with",
    "preact_resnet18",
    "resnet18",
    "resnet34",
    "weight_mask",
    "wide_resnet",
]
