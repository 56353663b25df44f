"""Label-noise models. Each is seeded and returns the noisy labels, which ones were changed, and
the realised transition matrix.

All take the clean labels as an int array and return :class:`NoisyLabels`; none touches the
images. The same seed and arguments give the same noisy labels on every machine
(``numpy.random.default_rng``).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from samx.data._checks import check_integer, check_label_range

# Patrini et al. 2017's class-dependent flips for CIFAR-10 (alphabetical label order):
# truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog.
CIFAR10_ASYMMETRIC_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


class NoisyLabels(NamedTuple):
  """Labels after corruption.

  Attributes:
    labels: the given (possibly wrong) labels, int32 ``(n,)``.
    noisy_mask: True where ``labels`` differs from the clean label, bool ``(n,)``.
    transition_matrix: the realised ``T[i, j]`` = fraction of examples of clean class ``i``
      whose given label is ``j``, float64 ``(num_classes, num_classes)``; rows of classes
      without examples are zero.
  """

  labels: np.ndarray
  noisy_mask: np.ndarray
  transition_matrix: np.ndarray

  @property
  def noise_rate(self) -> float:
    """The realised fraction of wrong labels."""
    return float(np.mean(self.noisy_mask)) if len(self.noisy_mask) else 0.0


def transition_matrix(clean: np.ndarray, given: np.ndarray, num_classes: int) -> np.ndarray:
  """Row-normalised counts ``T[i, j]`` of (clean ``i``, given ``j``) pairs."""
  counts = np.zeros((num_classes, num_classes), np.float64)
  np.add.at(counts, (clean, given), 1.0)
  totals = counts.sum(axis=1, keepdims=True)
  return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _check(labels: np.ndarray, rate: float, num_classes: int) -> np.ndarray:
  check_integer("num_classes", num_classes, 2)
  if isinstance(rate, bool) or not isinstance(rate, float | int | np.floating) or not (
      0.0 <= rate < 1.0):
    raise ValueError(f"rate must be a number in [0, 1); got {rate!r}.")
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array; got {labels.dtype} {labels.shape}.")
  check_label_range(labels, num_classes)
  return labels.astype(np.int32)


def _result(clean: np.ndarray, given: np.ndarray, num_classes: int) -> NoisyLabels:
  given = given.astype(np.int32)
  return NoisyLabels(given, given != clean, transition_matrix(clean, given, num_classes))


def symmetric(labels: np.ndarray, rate: float, num_classes: int, *, seed: int) -> NoisyLabels:
  """Flips exactly ``round(rate * n)`` labels, each to a uniformly random *other* class.

  Example:
    >>> import numpy as np
    >>> from samx.data import noise
    >>> noisy = noise.symmetric(np.arange(100) % 10, 0.25, 10, seed=0)
    >>> int(noisy.noisy_mask.sum()), noisy.noise_rate
    (25, 0.25)
  """
  clean = _check(labels, rate, num_classes)
  rng = np.random.default_rng(seed)
  chosen = rng.choice(len(clean), size=round(rate * len(clean)), replace=False)
  given = clean.copy()
  given[chosen] = (clean[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
  return _result(clean, given, num_classes)


def asymmetric(
    labels: np.ndarray,
    rate: float,
    num_classes: int,
    *,
    seed: int,
    mapping: str | Mapping[int, int] = "next_class",
) -> NoisyLabels:
  """Class-dependent flips: in each source class, exactly ``round(rate * n_c)`` labels move.

  Args:
    labels: clean labels.
    rate: fraction of each source class that is flipped, in [0, 1).
    num_classes: number of classes.
    seed: random seed.
    mapping: ``"next_class"`` (class ``c`` to ``(c + 1) % num_classes``, the generic pair
      flip), ``"cifar10"`` (Patrini et al.'s map: truck->automobile, bird->airplane,
      deer->horse, cat<->dog; classes outside it keep their labels) or a dict
      ``{source: target}``.

  Example:
    >>> import numpy as np
    >>> from samx.data import noise
    >>> noisy = noise.asymmetric(np.repeat(np.arange(10), 10), 0.4, 10, seed=0, mapping="cifar10")
    >>> float(noisy.transition_matrix[9, 1]), float(noisy.transition_matrix[9, 9])  # truck
    (0.4, 0.6)
  """
  clean = _check(labels, rate, num_classes)
  if mapping == "next_class":
    mapping = {c: (c + 1) % num_classes for c in range(num_classes)}
  elif mapping == "cifar10":
    if num_classes != 10:
      raise ValueError(f"mapping='cifar10' needs num_classes=10; got {num_classes}.")
    mapping = CIFAR10_ASYMMETRIC_MAP
  elif not isinstance(mapping, Mapping):
    raise ValueError(f"mapping must be 'next_class', 'cifar10' or a dict of source to target "
                     f"class; got {mapping!r}.")
  for source, target in mapping.items():
    if not (0 <= source < num_classes and 0 <= target < num_classes) or source == target:
      raise ValueError(f"mapping: {source} -> {target} must map a class in [0, {num_classes}) "
                       "to a different one.")
  rng = np.random.default_rng(seed)
  given = clean.copy()
  for source in sorted(mapping):
    members = np.flatnonzero(clean == source)
    chosen = rng.choice(members, size=round(rate * len(members)), replace=False)
    given[chosen] = mapping[source]
  return _result(clean, given, num_classes)


def _truncated_normal(rng: np.random.Generator, mean: float, std: float, size: int) -> np.ndarray:
  """Samples of N(mean, std^2) conditioned on [0, 1], by rejection."""
  samples = rng.normal(mean, std, size)
  outside = (samples < 0) | (samples > 1)
  while outside.any():
    samples[outside] = rng.normal(mean, std, int(outside.sum()))
    outside = (samples < 0) | (samples > 1)
  return samples


def instance_dependent(
    labels: np.ndarray,
    rate: float,
    num_classes: int,
    *,
    features: np.ndarray,
    seed: int,
    rate_std: float = 0.1,
) -> NoisyLabels:
  """Instance-dependent noise: how likely and to which class a label flips depends on the input.

  The generator of Xia et al. 2020 (Algorithm 2 of "Part-dependent Label Noise: Towards
  Instance-dependent Label Noise", arXiv 2006.10546): each example ``i`` gets a flip rate
  ``q_i`` drawn from ``N(rate, rate_std^2)`` truncated to ``[0, 1]``; each class ``c`` gets a
  random projection ``W_c`` (standard normal, ``features x classes``); the example's label is
  then drawn from ``(1 - q_i) onehot(y_i) + q_i softmax(x_i W_{y_i})`` with the softmax taken
  over the other classes. The realised rate is ``rate`` in expectation (the ``noise_rate`` of
  the result says what it came to); ``rate = 0`` gives no noise at all.

  Args:
    labels: clean labels, ``(n,)``.
    rate: the mean flip rate, in [0, 1).
    num_classes: number of classes.
    features: ``(n, ...)`` inputs (e.g. images scaled to [0, 1]); flattened per example.
    seed: random seed.
    rate_std: the spread of the per-example flip rates.

  Example:
    >>> import numpy as np
    >>> from samx.data import noise
    >>> x = np.random.default_rng(0).uniform(size=(2000, 64))
    >>> noisy = noise.instance_dependent(np.arange(2000) % 10, 0.3, 10, features=x, seed=0)
    >>> round(noisy.noise_rate, 1)
    0.3
  """
  clean = _check(labels, rate, num_classes)
  features = np.asarray(features, np.float32)
  if len(features) != len(clean):
    raise ValueError(f"features must have one row per label ({len(clean)}); got "
                     f"{features.shape}.")
  if not (isinstance(rate_std, float | int) and rate_std > 0):
    raise ValueError(f"rate_std must be a positive number; got {rate_std!r}.")
  features = features.reshape(len(clean), -1)
  rng = np.random.default_rng(seed)
  flip_rates = (_truncated_normal(rng, rate, rate_std, len(clean)) if rate > 0
                else np.zeros(len(clean)))
  projections = rng.standard_normal((num_classes, features.shape[1], num_classes),
                                    dtype=np.float32)
  logits = np.empty((len(clean), num_classes), np.float64)
  for c in range(num_classes):
    members = clean == c
    logits[members] = features[members] @ projections[c]
  rows = np.arange(len(clean))
  logits[rows, clean] = -np.inf
  logits -= logits.max(axis=1, keepdims=True)
  others = np.exp(logits)
  others /= others.sum(axis=1, keepdims=True)
  probabilities = flip_rates[:, None] * others
  probabilities[rows, clean] = 1.0 - flip_rates
  cumulative = np.cumsum(probabilities, axis=1)
  draws = rng.uniform(size=(len(clean), 1)) * cumulative[:, -1:]
  given = np.minimum((cumulative < draws).sum(axis=1), num_classes - 1)
  return _result(clean, given, num_classes)


def from_file(labels: np.ndarray, path: str | os.PathLike, num_classes: int, *,
              key: str | None = None) -> NoisyLabels:
  """Noisy labels given in a file, one per training example, in order (the CIFAR-N style).

  Reads ``.npy`` (never with pickle), ``.npz`` (the array ``key``, or the only one), or text
  (``.txt``/``.csv``: one integer per line; a header line that is not a number is skipped).

  Raises:
    ValueError: if the file holds a number of labels other than ``len(labels)``, or labels
      outside ``[0, num_classes)``, or is not readable as integers.
  """
  clean = _check(labels, 0.0, num_classes)
  path = pathlib.Path(path)
  try:
    if path.suffix == ".npy":
      given = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
      with np.load(path, allow_pickle=False) as archive:
        names = list(archive.keys())
        if key is None and len(names) != 1:
          raise ValueError(f"{path}: holds {names}; say which with key=.")
        given = archive[key or names[0]]
    else:
      lines = [line.strip().split(",")[0] for line in path.read_text().splitlines()
               if line.strip()]
      if lines and not lines[0].lstrip("-").isdigit():
        lines = lines[1:]
      given = np.array([int(line) for line in lines])
  except (OSError, ValueError, KeyError) as error:
    if isinstance(error, FileNotFoundError):
      raise
    raise ValueError(f"{path}: not a readable file of integer labels ({error}).") from error
  given = np.asarray(given)
  if given.shape != clean.shape or not np.issubdtype(given.dtype, np.integer):
    raise ValueError(f"{path}: expected {len(clean)} integer labels, one per example; got "
                     f"{given.dtype} {given.shape}.")
  check_label_range(given, num_classes, f"{path}: labels")
  return _result(clean, given, num_classes)
