"""Dominoes: an easy and a hard image stacked vertically, both predictive of one binary label.

Shah et al. 2020 ("The Pitfalls of Simplicity Bias in Neural Networks") built them to show that
networks learn the easy feature and ignore the hard one; Springer, Nagarajan & Raghunathan 2024
("SAM Enhances Feature Quality via Balanced Learning") use them to show that SAM learns both.
Each example keeps the label of each of its parts, so a linear probe can be fit per feature.
"""

from __future__ import annotations

import os

import numpy as np

from samx.data._dataset import Dataset
from samx.data._sources import load

KINDS = {
    # kind: (easy dataset, hard dataset, default easy classes, default hard classes)
    "cifar_mnist": ("mnist", "cifar10", (0, 1), (1, 9)),  # digits 0/1; automobile/truck
    "fmnist_mnist": ("mnist", "fashion_mnist", (0, 1), (0, 3)),  # digits 0/1; T-shirt/dress
}


def _as_rgb_32(images: np.ndarray) -> np.ndarray:
  """28x28x1 digits padded to 32x32 and repeated over three channels, to sit on CIFAR images."""
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  return np.repeat(padded, 3, axis=-1)


def _pick(labels: np.ndarray, classes: tuple[int, int], wanted: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
  """Indices of examples of ``classes[wanted[i]]``, without repeats where there are enough."""
  chosen = np.empty(len(wanted), np.int64)
  for binary in (0, 1):
    slots = np.flatnonzero(wanted == binary)
    pool = np.flatnonzero(labels == classes[binary])
    chosen[slots] = rng.choice(pool, size=len(slots), replace=len(slots) > len(pool))
  return chosen


def dominoes(
    kind: str = "cifar_mnist",
    split: str = "train",
    *,
    seed: int = 0,
    easy_correlation: float = 1.0,
    hard_correlation: float = 1.0,
    easy_classes: tuple[int, int] | None = None,
    hard_classes: tuple[int, int] | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
  """A dominoes dataset: the easy image (MNIST) on top of the hard one (CIFAR-10 or FMNIST).

  There is one example per image of the hard dataset's two classes. Its label ``y`` in {0, 1}
  is drawn uniformly; the hard part shows ``hard_classes[y]`` with probability
  ``hard_correlation`` (else the other class) and the easy part ``easy_classes[y]`` with
  probability ``easy_correlation``. With both at 1 (the default) each part alone predicts the
  label; ``easy_correlation=0.5`` makes the easy part uninformative.

  Returns:
    A :class:`samx.data.Dataset` of shape ``(n, 64, 32, 3)`` (CIFAR-MNIST) or
    ``(n, 56, 28, 1)`` (FMNIST-MNIST) with ``metadata["easy_labels"]`` and
    ``metadata["hard_labels"]``: the binary class each part shows.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {sorted(KINDS)}; got {kind!r}.")
  for name, value in (("easy_correlation", easy_correlation),
                      ("hard_correlation", hard_correlation)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must be in [0, 1]; got {value!r}.")
  easy_name, hard_name, default_easy, default_hard = KINDS[kind]
  easy_classes = default_easy if easy_classes is None else tuple(easy_classes)
  hard_classes = default_hard if hard_classes is None else tuple(hard_classes)
  easy = load(easy_name, split, data_dir=data_dir, cache_dir=cache_dir)
  hard = load(hard_name, split, data_dir=data_dir, cache_dir=cache_dir)
  for name, classes, source in (("easy_classes", easy_classes, easy),
                                ("hard_classes", hard_classes, hard)):
    if len(classes) != 2 or classes[0] == classes[1] or not all(
        0 <= c < source.num_classes for c in classes):
      raise ValueError(f"{name} must be two different classes of {source.name}; got {classes}.")

  rng = np.random.default_rng(seed)
  n = int(np.isin(hard.labels, hard_classes).sum())
  labels = rng.integers(0, 2, size=n).astype(np.int32)
  hard_shown = np.where(rng.uniform(size=n) < hard_correlation, labels, 1 - labels)
  easy_shown = np.where(rng.uniform(size=n) < easy_correlation, labels, 1 - labels)
  hard_images = hard.images[_pick(hard.labels, hard_classes, hard_shown, rng)]
  easy_images = easy.images[_pick(easy.labels, easy_classes, easy_shown, rng)]
  if hard_images.shape[1:] == (32, 32, 3):
    easy_images = _as_rgb_32(easy_images)
  images = np.concatenate([easy_images, hard_images], axis=1)
  names = tuple(f"{easy.class_names[e]}|{hard.class_names[h]}"
                for e, h in zip(easy_classes, hard_classes, strict=True))
  return Dataset(images, labels, names, f"{hard.name}-{easy.name} dominoes", split, {
      "easy_labels": easy_shown.astype(np.int32), "hard_labels": hard_shown.astype(np.int32),
      "easy_classes": easy_classes, "hard_classes": hard_classes,
      "easy_correlation": easy_correlation, "hard_correlation": hard_correlation, "seed": seed})
