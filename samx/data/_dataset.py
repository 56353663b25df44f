"""The in-memory dataset every loader returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from samx.data._checks import check_label_range


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split of an image-classification dataset, in memory.

  Attributes:
    images: ``uint8`` array of shape ``(n, height, width, channels)``.
    labels: ``int32`` array of shape ``(n,)`` with values in ``[0, num_classes)``.
    class_names: the name of each class, in label order.
    name: what the data is, as results should call it (e.g. "CIFAR-10 (JPEG re-encoding)").
    split: ``"train"`` or ``"test"``.
    metadata: where it came from and anything else a loader knows (e.g. CIFAR-100's coarse
      labels under ``"coarse_labels"``).
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  name: str
  split: str
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(f"Dataset.images must be uint8 NHWC; got {self.images.dtype} with shape "
                       f"{self.images.shape}.")
    if self.labels.shape != (len(self.images),):
      raise ValueError(f"Dataset.labels must have shape ({len(self.images)},); got "
                       f"{self.labels.shape}.")
    check_label_range(self.labels, len(self.class_names), "Dataset.labels")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.labels)

  def class_counts(self) -> np.ndarray:
    """Examples per class, shape ``(num_classes,)``."""
    return np.bincount(self.labels, minlength=self.num_classes)
