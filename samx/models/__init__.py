"""Flax NNX models; each exposes ``features(x)`` (penultimate features) and its last layer ``head``.
"""

from samx.models.mlp import MLP
from samx.models.resnet import BasicBlock, ResNet, resnet18, resnet34

__all__ = ["MLP", "BasicBlock", "ResNet", "resnet18", "resnet34"]
