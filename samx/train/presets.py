"""Named configurations: the papers' settings at full scale, and CPU-sized versions of them.

A preset is a function returning a :class:`samx.train.Config`, so it can be read and diffed;
``samx train --preset NAME --set key=value`` starts from it. The ``-cpu`` presets finish in
minutes on a laptop CPU; the others are the papers' settings, for a GPU or TPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from samx.train.config import (
    Config,
    DataConfig,
    ModelConfig,
    NoiseConfig,
    OptimizerConfig,
    ScheduleConfig,
)
from samx.train.errors import ConfigError
from samx.train.methods import GSAMConfig, SANERConfig


def quickstart() -> Config:
  """The README's first command: a 10-class Gaussian mixture (no download) with 40% symmetric
  label noise and a two-hidden-layer MLP; 16 epochs of 64 steps, about 6 s per optimizer on a
  2-core CPU (most of it compiling). SGD memorizes the noisy labels, SAM far fewer. rho 0.3 for
  every method; GSAM's alpha 0.3; SANER reaches alpha 0.5 after 5 epochs and takes its groups
  on GSAM's gradient (``saner.gsam_alpha=0.3``)."""
  return Config(
      data=DataConfig(name="gaussian_mixture"),
      noise=NoiseConfig(kind="symmetric", rate=0.4),
      model=ModelConfig(name="mlp", hidden=(256, 256)),
      optimizer=OptimizerConfig(name="sam", rho=0.3, learning_rate=0.05, momentum=0.9,
                                weight_decay=5e-4),
      saner=SANERConfig(alpha=0.5, warmup_epochs=5, gsam_alpha=0.3),
      gsam=GSAMConfig(alpha=0.3),
      epochs=16, batch_size=128, eval_batch_size=4096, checkpoint_every=0)


def mnist_cpu() -> Config:
  """MNIST with an MLP (one hidden layer of 256), two epochs of SGD: 96.8% test accuracy
  (seed 0) in a few seconds on a CPU."""
  return Config(
      data=DataConfig(name="mnist"),
      model=ModelConfig(name="mlp", hidden=(256,)),
      optimizer=OptimizerConfig(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.0),
      epochs=2, batch_size=128, eval_batch_size=2000, checkpoint_every=0)


def saner_cifar10() -> Config:
  """Luong et al.'s SANER setting: ResNet-18 on CIFAR-10 with 50% symmetric label noise, 200
  epochs of batch 128, SGD (lr 0.1, momentum 0.9, weight decay 5e-4) with the learning rate
  divided by 10 at 50% and 75% of training, standard augmentation, rho 0.1, SANER's alpha 0.5
  reached after 50 epochs. For a GPU/TPU; ``saner-cifar10-cpu`` is its CPU-sized version."""
  return Config(
      data=DataConfig(name="cifar10", augment=True),
      noise=NoiseConfig(kind="symmetric", rate=0.5),
      model=ModelConfig(name="resnet18", width=1.0),
      optimizer=OptimizerConfig(name="saner", rho=0.1, learning_rate=0.1, momentum=0.9,
                                weight_decay=5e-4),
      saner=SANERConfig(alpha=0.5, warmup_epochs=50),
      schedule=ScheduleConfig(kind="step", boundaries=(0.5, 0.75), decay=0.1),
      epochs=200, batch_size=128, eval_batch_size=1000, train_eval_examples=10000,
      checkpoint_every=5)


def saner_cifar10_cpu() -> Config:
  """``saner-cifar10`` at CPU scale: a ResNet-18 of width 1/8, 5,000 training and 2,000 test
  images, 15 epochs (SANER's ramp over the first quarter, as 50 of 200), cosine schedule."""
  full = saner_cifar10()
  return dataclasses.replace(
      full,
      data=dataclasses.replace(full.data, train_examples=5000, test_examples=2000),
      model=dataclasses.replace(full.model, width=0.125),
      saner=dataclasses.replace(full.saner, warmup_epochs=4),
      schedule=ScheduleConfig(kind="cosine"),
      epochs=15, train_eval_examples=None, checkpoint_every=1)


def fashion_mnist_noise_cpu() -> Config:
  """Fashion-MNIST with 50% symmetric noise and Springer et al.'s small CNN: 10,000 training
  images, 10 epochs, SAM with rho 0.1; a few minutes on a CPU."""
  return Config(
      data=DataConfig(name="fashion_mnist", train_examples=10000),
      noise=NoiseConfig(kind="symmetric", rate=0.5),
      model=ModelConfig(name="small_cnn"),
      optimizer=OptimizerConfig(name="sam", rho=0.1, learning_rate=0.05, momentum=0.9,
                                weight_decay=5e-4),
      saner=SANERConfig(warmup_epochs=3),
      schedule=ScheduleConfig(kind="cosine"),
      epochs=10, batch_size=128, eval_batch_size=2000, checkpoint_every=1)


def chen_patches() -> Config:
  """Chen et al.'s setting: signal/noise patches (100 training examples, patch dimension 200,
  ||mu|| = 2, sigma_p = 1, 10% flipped labels), the two-layer ReLU CNN with 10 filters per sign
  and a fixed second layer, full-batch gradient descent with lr 0.5 for 300 epochs; SAM with
  rho 1.0 (the grid of ``benchmarks/benign_overfitting.py`` varies ||mu|| and d)."""
  return Config(
      data=DataConfig(name="patches", options={"train_size": 100, "test_size": 2000,
                                               "dim": 200, "signal_norm": 2.0,
                                               "noise_std": 1.0}),
      noise=NoiseConfig(kind="symmetric", rate=0.1),
      model=ModelConfig(name="two_layer_relu_cnn", filters_per_sign=10, init_std=0.01),
      optimizer=OptimizerConfig(name="sam", rho=1.0, learning_rate=0.5, momentum=0.0,
                                weight_decay=0.0),
      epochs=300, batch_size=100, eval_batch_size=2000, eval_every=10, checkpoint_every=0)


def dominoes_cifar_mnist() -> Config:
  """Springer et al.'s CIFAR-MNIST dominoes (MNIST 0/1 on top of CIFAR-10 automobile/truck, both
  fully predictive) with their small CNN; SGD momentum 0.9, lr 0.05, 10 epochs."""
  return Config(
      data=DataConfig(name="dominoes:cifar_mnist"),
      model=ModelConfig(name="small_cnn"),
      optimizer=OptimizerConfig(name="sam", rho=0.05, learning_rate=0.05, momentum=0.9,
                                weight_decay=5e-4),
      schedule=ScheduleConfig(kind="cosine"),
      epochs=10, batch_size=128, eval_batch_size=2000, checkpoint_every=0)


def vit_cifar10() -> Config:
  """A Vision Transformer trained from scratch on CIFAR-10 with SAM: the ViT-T/4 of Mueller et
  al. 2023's CIFAR experiments (SAM-ON, arXiv 2306.04226; their code's ``vit_t``: 4x4 patches,
  192-wide tokens, 12 blocks of 3 heads, MLP 768, class token), batch 128, 200 epochs, cosine
  schedule, random crops and flips; AdamW with lr 1e-3 (5 warm-up epochs) and weight decay
  0.05, rho 0.1. The optimizer's values are the common AdamW recipe for ViTs on CIFAR, not the
  paper's (its table of ViT hyperparameters was not available here): check them against it
  before quoting a result as a reproduction. SANER (``optimizer.name=saner``) reaches alpha 0.5
  after 50 epochs, as in its paper. For a GPU/TPU; ``vit-cifar10-cpu`` is its CPU-sized
  version."""
  return Config(
      data=DataConfig(name="cifar10", augment=True),
      model=ModelConfig(name="vit", patch_size=4, hidden=(192,), depth=12, heads=3,
                        mlp_dim=768, pooling="token"),
      optimizer=OptimizerConfig(name="sam", rho=0.1, base="adamw", learning_rate=1e-3,
                                weight_decay=0.05),
      saner=SANERConfig(alpha=0.5, warmup_epochs=50),
      schedule=ScheduleConfig(kind="cosine", warmup_epochs=5),
      epochs=200, batch_size=128, eval_batch_size=1000, train_eval_examples=10000,
      checkpoint_every=5)


def vit_cifar10_cpu() -> Config:
  """``vit-cifar10`` at CPU scale: a ViT of 4 blocks of 4 heads on 64-wide tokens (4x4
  patches, MLP 128), 5,000 training and 2,000 test images, 15 epochs (1 warm-up epoch; SANER's
  ramp over the first 4)."""
  full = vit_cifar10()
  return dataclasses.replace(
      full,
      data=dataclasses.replace(full.data, train_examples=5000, test_examples=2000),
      model=dataclasses.replace(full.model, hidden=(64,), depth=4, heads=4, mlp_dim=128),
      saner=dataclasses.replace(full.saner, warmup_epochs=4),
      schedule=ScheduleConfig(kind="cosine", warmup_epochs=1),
      epochs=15, train_eval_examples=None, checkpoint_every=1)


#: The named configurations (``--preset NAME``, :func:`samx.train.preset`): each a function
#: returning a fresh :class:`samx.train.Config`; ``samx presets`` lists them.
PRESETS: dict[str, Callable[[], Config]] = {
    "quickstart": quickstart,
    "mnist-cpu": mnist_cpu,
    "saner-cifar10": saner_cifar10,
    "saner-cifar10-cpu": saner_cifar10_cpu,
    "fashion-mnist-noise-cpu": fashion_mnist_noise_cpu,
    "chen-patches": chen_patches,
    "dominoes-cifar-mnist": dominoes_cifar_mnist,
    "vit-cifar10": vit_cifar10,
    "vit-cifar10-cpu": vit_cifar10_cpu,
}


def preset(name: str) -> Config:
  """The preset ``name``; raises :class:`ConfigError` listing the known names."""
  if name not in PRESETS:
    raise ConfigError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}.")
  return PRESETS[name]()
