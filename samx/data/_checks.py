"""Checks and errors shared by the data modules: each says what it got, naming the file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

REMEDY = "Delete it and download (or copy) it again."


class CorruptFileError(ValueError):
  """A data file is damaged, truncated or not the file expected; the message names it."""


def corrupt(path: str | os.PathLike, problem: str, remedy: str = REMEDY) -> CorruptFileError:
  """The error for a damaged ``path``: ``"<path>: <problem>. <remedy>"``.

  ``problem`` says it is corrupt and how, e.g. ``"corrupt gzip stream (CRC check failed)"``.
  """
  return CorruptFileError(f"{os.fspath(path)}: {problem}. {remedy}")


def describe(error: BaseException) -> str:
  """``"<type>: <message>"`` of a caught error, e.g. ``"zlib.error: Error -3 ..."``."""
  kind = type(error).__name__
  if kind == "error":  # zlib.error, struct.error: the module says what it is
    kind = f"{type(error).__module__}.error"
  return f"{kind}: {error}"


def check_integer(name: str, value: Any, low: int) -> None:
  """Raises unless ``value`` is an integer (not a bool) of at least ``low``."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


def check_label_range(labels: np.ndarray, num_classes: int, what: str = "labels") -> None:
  """Raises unless every entry of ``labels`` lies in ``[0, num_classes)``."""
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{what} must lie in [0, {num_classes}); got [{labels.min()}, "
                     f"{labels.max()}].")
