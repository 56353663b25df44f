"""Dominoes: an easy and a hard image stacked vertically, both predictive of one label.

Shah et al. 2020 ("The Pitfalls of Simplicity Bias in Neural Networks") built them to show that
networks learn the easy feature and ignore the hard one; Springer, Nagarajan & Raghunathan 2024
("SAM Enhances Feature Quality via Balanced Learning") use them to show that SAM learns both,
with two classes and, on FMNIST-MNIST, five (after Kirichenko et al. 2022). Each example keeps
the class each of its parts shows, so a linear probe can be fit per feature.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence

import numpy as np

from samx.data._dataset import Dataset
from samx.data._sources import load

KINDS = {
    # kind: (easy dataset, hard dataset, default easy classes, default hard classes)
    "cifar_mnist": ("mnist", "cifar10", (0, 1), (1, 9)),  # digits 0/1; automobile/truck
    "fmnist_mnist": ("mnist", "fashion_mnist", (0, 1), (0, 3)),  # digits 0/1; T-shirt/dress
}
SPLITS = ("train", "validation", "test")


def _as_rgb_32(images: np.ndarray) -> np.ndarray:
  """28x28x1 digits padded to 32x32 and repeated over three channels, to sit on CIFAR images."""
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  return np.repeat(padded, 3, axis=-1)


def _is_seed(value: object) -> bool:
  """Whether ``value`` is a non-negative int (``np.random.default_rng`` takes it)."""
  return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value >= 0)


def _class_ids(name: str, classes: Sequence[int]) -> tuple[int, ...]:
  """``classes`` as a tuple of at least two different non-negative ints, else a ValueError."""
  try:
    ids = tuple(operator.index(c) for c in classes)
  except TypeError:
    raise ValueError(f"{name} must be a tuple of class ids (ints); got {classes!r}.") from None
  if len(ids) < 2 or len(set(ids)) != len(ids) or min(ids) < 0:
    raise ValueError(f"{name} must be at least two different class ids; got {classes!r}.")
  return ids


def resolve_classes(kind: str = "cifar_mnist", easy_classes: Sequence[int] | None = None,
                    hard_classes: Sequence[int] | None = None
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The easy and hard source classes :func:`dominoes` uses: the given ones, else ``kind``'s.

  Checks what it can without reading the data (distinct ids, equal numbers of easy and hard
  classes); :func:`dominoes` also checks each id against its source's classes.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {sorted(KINDS)}; got {kind!r}.")
  _, _, default_easy, default_hard = KINDS[kind]
  easy = _class_ids("easy_classes", default_easy if easy_classes is None else easy_classes)
  hard = _class_ids("hard_classes", default_hard if hard_classes is None else hard_classes)
  if len(easy) != len(hard):
    raise ValueError(f"easy_classes and hard_classes must have the same length (the number of "
                     f"classes); got {len(easy)} and {len(hard)}.")
  return easy, hard


def num_classes(kind: str = "cifar_mnist", easy_classes: Sequence[int] | None = None,
                hard_classes: Sequence[int] | None = None) -> int:
  """The number of classes ``k`` of :func:`dominoes` called with these arguments (2 by default).

  >>> num_classes("fmnist_mnist", hard_classes=(0, 1, 2), easy_classes=(0, 1, 2))
  3
  """
  return len(resolve_classes(kind, easy_classes, hard_classes)[0])


def holdout(labels: np.ndarray, classes: Sequence[int], fraction: float, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """Per-class partition of a train split into (train part, validation part) boolean masks.

  For each class ``c`` of ``classes``, ``round(fraction * count)`` of its examples, chosen by
  ``np.random.default_rng([seed, c])``, go to validation and the rest to train; examples of other
  classes are in neither. A class's partition depends only on ``seed``, ``fraction`` and its
  own examples, not on the other classes chosen. Raises a ValueError naming
  ``validation_fraction`` if it would leave a part of a class empty.
  """
  train_part = np.zeros(len(labels), bool)
  validation_part = np.zeros(len(labels), bool)
  for c in classes:
    pool = np.flatnonzero(labels == c)
    count = round(fraction * len(pool))
    if not 0 < count < len(pool):
      raise ValueError(f"validation_fraction={fraction} holds out {count} of the {len(pool)} "
                       f"training images of class {c}; each part needs at least one.")
    held = np.random.default_rng([seed, c]).permutation(len(pool))[:count]
    validation_part[pool[held]] = True
    train_part[pool] = ~validation_part[pool]
  return train_part, validation_part


def _other_classes(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """For each label, a class drawn uniformly among the ``k - 1`` others (no draw for k = 2)."""
  if k == 2:
    return 1 - labels
  return (labels + rng.integers(1, k, size=len(labels))) % k


def _shown(labels: np.ndarray, k: int, correlation: float, rng: np.random.Generator
           ) -> np.ndarray:
  """The class a part shows: the label with probability ``correlation``, else another one."""
  agree = rng.uniform(size=len(labels)) < correlation
  return np.where(agree, labels, _other_classes(labels, k, rng))


def _pick(labels: np.ndarray, classes: tuple[int, ...], wanted: np.ndarray,
          rng: np.random.Generator, allowed: np.ndarray | None = None) -> np.ndarray:
  """Indices of examples of ``classes[wanted[i]]`` (among ``allowed``), without repeats where
  there are enough."""
  chosen = np.empty(len(wanted), np.int64)
  for index, c in enumerate(classes):
    slots = np.flatnonzero(wanted == index)
    in_class = labels == c
    pool = np.flatnonzero(in_class if allowed is None else in_class & allowed)
    chosen[slots] = rng.choice(pool, size=len(slots), replace=len(slots) > len(pool))
  return chosen


def dominoes(
    kind: str = "cifar_mnist",
    split: str = "train",
    *,
    seed: int = 0,
    easy_correlation: float = 1.0,
    hard_correlation: float = 1.0,
    easy_classes: Sequence[int] | None = None,
    hard_classes: Sequence[int] | None = None,
    validation_fraction: float = 0.0,
    validation_seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
  """A dominoes dataset: the easy image (MNIST) on top of the hard one (CIFAR-10 or FMNIST).

  ``easy_classes`` and ``hard_classes`` are ``k >= 2`` different classes of their source each
  (default: ``kind``'s two; Springer et al.'s five-class FMNIST-MNIST is
  ``easy_classes=hard_classes=(0, 1, 2, 3, 4)``). There is one example per image of the hard
  source's ``k`` classes in the split. Its label ``y`` is drawn uniformly in ``[0, k)``; the
  hard part shows ``hard_classes[y]`` with probability ``hard_correlation``, else a class drawn
  uniformly among the ``k - 1`` others (for ``k = 2``, the other one), and the easy part
  likewise with ``easy_correlation``. With both at 1 (the default) each part alone predicts the
  label; a correlation of ``1 / k`` (0.5 for two classes) makes its part uninformative.

  Args:
    kind: ``"cifar_mnist"`` or ``"fmnist_mnist"`` (see ``KINDS``).
    split: ``"train"``, ``"validation"`` or ``"test"``.
    seed: the draws of labels, shown classes and images.
    easy_correlation, hard_correlation: in ``[0, 1]``, as above.
    easy_classes, hard_classes: the source classes of labels ``0..k-1`` (equal lengths).
    validation_fraction: in ``[0, 1)``. Above 0, the train split of each source is partitioned
      (``holdout``): this fraction of each chosen class's images is held out for
      ``split="validation"`` and ``split="train"`` uses only the rest (one example per hard
      image of its part). ``split="test"`` ignores it.
    validation_seed: the partition's only seed, so that every ``seed`` and correlation holds
      out the same images.
    data_dir, cache_dir: as for :func:`samx.data.load`.

  Returns:
    A :class:`samx.data.Dataset` of shape ``(n, 64, 32, 3)`` (CIFAR-MNIST) or
    ``(n, 56, 28, 1)`` (FMNIST-MNIST) with ``k`` classes named ``"easy|hard"``, and in
    ``metadata`` ``easy_labels`` and ``hard_labels`` (the class in ``[0, k)`` each part shows)
    and the arguments (classes, correlations, seeds, ``validation_fraction``).
  """
  easy_classes, hard_classes = resolve_classes(kind, easy_classes, hard_classes)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
  for name, value in (("easy_correlation", easy_correlation),
                      ("hard_correlation", hard_correlation)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must be in [0, 1]; got {value!r}.")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1); got {validation_fraction!r}.")
  if split == "validation" and validation_fraction == 0.0:
    raise ValueError("split='validation' needs validation_fraction > 0 (the share of the train "
                     "split held out for it); got validation_fraction=0.")
  if not _is_seed(validation_seed):
    raise ValueError(f"validation_seed must be a non-negative int; got {validation_seed!r}.")
  easy_name, hard_name, _, _ = KINDS[kind]
  source_split = "test" if split == "test" else "train"
  easy = load(easy_name, source_split, data_dir=data_dir, cache_dir=cache_dir)
  hard = load(hard_name, source_split, data_dir=data_dir, cache_dir=cache_dir)
  for name, classes, source in (("easy_classes", easy_classes, easy),
                                ("hard_classes", hard_classes, hard)):
    if max(classes) >= source.num_classes:
      raise ValueError(f"{name} must be classes of {source.name} (0 to "
                       f"{source.num_classes - 1}); got {classes}.")

  easy_allowed = hard_allowed = None
  if split != "test" and validation_fraction > 0.0:
    part = 0 if split == "train" else 1
    easy_allowed = holdout(easy.labels, easy_classes, validation_fraction, validation_seed)[part]
    hard_allowed = holdout(hard.labels, hard_classes, validation_fraction, validation_seed)[part]
  in_classes = np.isin(hard.labels, hard_classes)
  n = int((in_classes if hard_allowed is None else in_classes & hard_allowed).sum())
  k = len(hard_classes)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, size=n).astype(np.int32)
  hard_shown = _shown(labels, k, hard_correlation, rng)
  easy_shown = _shown(labels, k, easy_correlation, rng)
  hard_images = hard.images[_pick(hard.labels, hard_classes, hard_shown, rng, hard_allowed)]
  easy_images = easy.images[_pick(easy.labels, easy_classes, easy_shown, rng, easy_allowed)]
  if hard_images.shape[1:] == (32, 32, 3):
    easy_images = _as_rgb_32(easy_images)
  images = np.concatenate([easy_images, hard_images], axis=1)
  names = tuple(f"{easy.class_names[e]}|{hard.class_names[h]}"
                for e, h in zip(easy_classes, hard_classes, strict=True))
  return Dataset(images, labels, names, f"{hard.name}-{easy.name} dominoes", split, {
      "easy_labels": easy_shown.astype(np.int32), "hard_labels": hard_shown.astype(np.int32),
      "easy_classes": easy_classes, "hard_classes": hard_classes,
      "easy_correlation": easy_correlation, "hard_correlation": hard_correlation, "seed": seed,
      "validation_fraction": validation_fraction, "validation_seed": validation_seed})
