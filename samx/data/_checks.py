"""Argument checks shared by the data modules, each raising ``ValueError`` with what it got."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_integer(name: str, value: Any, low: int) -> None:
  """Raises unless ``value`` is an integer (not a bool) of at least ``low``."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


def check_label_range(labels: np.ndarray, num_classes: int, what: str = "labels") -> None:
  """Raises unless every entry of ``labels`` lies in ``[0, num_classes)``."""
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{what} must lie in [0, {num_classes}); got [{labels.min()}, "
                     f"{labels.max()}].")
