"""Flax NNX models; each exposes ``features(x)`` (penultimate features) and its last layer ``head``.
"""

from samx.models.mlp import MLP
from samx.models.preact import PreActBlock, PreActResNet, preact_resnet18, wide_resnet
from samx.models.resnet import BasicBlock, ResNet, resnet18, resnet34
from samx.models.small import FixedHead, SmallCNN, TwoLayerLinear, TwoLayerReLUCNN

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
    "preact_resnet18",
    "resnet18",
    "resnet34",
    "wide_resnet",
]
