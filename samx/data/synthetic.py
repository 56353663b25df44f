"""Synthetic data of the seed papers: signal/noise patches (Chen et al. 2023), a Gaussian
mixture, and an easy and a hard feature (Springer et al. 2024)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from samx.data._checks import check_integer


class PatchData(NamedTuple):
  """Two-patch data ``x = [y mu, xi]`` (patches in random order).

  Attributes:
    inputs: float32 ``(n, 2, d)``: per example a signal patch and a noise patch.
    labels: int32 ``(n,)`` in {0, 1}, the *given* labels (after flips); ``y = 2 label - 1``.
    clean_labels: int32 ``(n,)``, the labels before flips (the sign of the signal patch).
    noisy_mask: bool ``(n,)``, True where the given label was flipped.
    signal_patch: int32 ``(n,)``, which patch (0 or 1) carries the signal.
    mu: float32 ``(d,)``, the signal vector.
  """

  inputs: np.ndarray
  labels: np.ndarray
  clean_labels: np.ndarray
  noisy_mask: np.ndarray
  signal_patch: np.ndarray
  mu: np.ndarray


def signal_noise_patches(
    n: int, d: int, *, signal_norm: float, noise_std: float, flip_probability: float = 0.0,
    seed: int, mu: np.ndarray | None = None,
) -> PatchData:
  r"""The data model of Chen et al. 2023 ("Why Does SAM Generalize Better Than SGD?").

  Each example has a label :math:`y \in \{-1, +1\}` (uniform), a signal patch :math:`y\mu` and a
  noise patch :math:`\xi \sim N(0, \sigma_p^2 (I - \mu\mu^\top / \lVert\mu\rVert^2))`, orthogonal
  to :math:`\mu`, in random order; then the given label is flipped with probability ``p``.
  ``mu`` is drawn once per seed as a random direction of norm ``signal_norm`` (or passed in, to
  draw a test set with the training set's signal).

  Args:
    n: number of examples.
    d: dimension of each patch.
    signal_norm: :math:`\lVert\mu\rVert`.
    noise_std: :math:`\sigma_p`.
    flip_probability: :math:`p`, in [0, 1).
    seed: random seed.
    mu: a given signal vector of shape ``(d,)`` instead of a random one.

  Example:
    >>> from samx.data.synthetic import signal_noise_patches
    >>> data = signal_noise_patches(8, 16, signal_norm=2.0, noise_std=1.0, seed=0)
    >>> data.inputs.shape, float(abs((data.inputs[:, 0] * data.inputs[:, 1]).sum(1)).max()) < 1e-4
    ((8, 2, 16), True)
  """
  check_integer("n", n, 1)
  check_integer("d", d, 2)
  if not signal_norm > 0 or not noise_std >= 0:
    raise ValueError(f"signal_norm must be > 0 and noise_std >= 0; got {signal_norm!r}, "
                     f"{noise_std!r}.")
  if not 0.0 <= flip_probability < 1.0:
    raise ValueError(f"flip_probability must be in [0, 1); got {flip_probability!r}.")
  rng = np.random.default_rng(seed)
  if mu is None:
    direction = rng.standard_normal(d)
    mu = signal_norm * direction / np.linalg.norm(direction)
  mu = np.asarray(mu, np.float64)
  if mu.shape != (d,):
    raise ValueError(f"mu must have shape ({d},); got {mu.shape}.")
  unit = mu / np.linalg.norm(mu)
  signs = rng.choice([-1.0, 1.0], size=n)
  noise = rng.standard_normal((n, d)) * noise_std
  noise -= np.outer(noise @ unit, unit)  # project out the signal direction
  signal_patch = rng.integers(0, 2, size=n)
  inputs = np.empty((n, 2, d), np.float64)
  rows = np.arange(n)
  inputs[rows, signal_patch] = signs[:, None] * mu
  inputs[rows, 1 - signal_patch] = noise
  clean = ((signs + 1) // 2).astype(np.int32)
  flipped = rng.uniform(size=n) < flip_probability
  given = np.where(flipped, 1 - clean, clean).astype(np.int32)
  return PatchData(inputs.astype(np.float32), given, clean, flipped,
                   signal_patch.astype(np.int32), mu.astype(np.float32))


def gaussian_mixture(
    n: int, *, num_classes: int = 10, dim: int = 32, center_scale: float = 0.45,
    split: str = "train", seed: int,
) -> tuple[np.ndarray, np.ndarray]:
  r"""A Gaussian mixture classification problem: :math:`x = c_y + z`, :math:`z \sim N(0, I)`.

  The class centers :math:`c_k \sim N(0, s^2 I)` (``s = center_scale``) are drawn once from
  ``seed``, so the ``"train"`` and ``"test"`` splits of one seed share them; labels are uniform.
  With the defaults the classes overlap enough that a network fits noisy labels only by
  memorizing them: the small, download-free problem of samx's quick start.

  Returns:
    ``(inputs, labels)``: float32 ``(n, dim)`` and int32 ``(n,)``.

  Example:
    >>> from samx.data.synthetic import gaussian_mixture
    >>> x, y = gaussian_mixture(100, num_classes=3, dim=4, seed=0)
    >>> x.shape, x.dtype, sorted(set(y.tolist()))
    ((100, 4), dtype('float32'), [0, 1, 2])
  """
  check_integer("n", n, 1)
  check_integer("num_classes", num_classes, 2)
  check_integer("dim", dim, 1)
  if not center_scale > 0:
    raise ValueError(f"center_scale must be > 0; got {center_scale!r}.")
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
  centers = np.random.default_rng(seed).normal(size=(num_classes, dim)) * center_scale
  rng = np.random.default_rng([seed, 0 if split == "train" else 1])
  labels = rng.integers(0, num_classes, size=n)
  inputs = centers[labels] + rng.normal(size=(n, dim))
  return inputs.astype(np.float32), labels.astype(np.int32)


class TwoFeatureData(NamedTuple):
  """:func:`two_features`' examples: ``inputs = [easy block, hard block]``.

  Attributes:
    inputs: float32 ``(n, easy_dim + hard_dim)``.
    labels: int32 ``(n,)`` in {0, 1}; ``signs`` is the same as -1/+1.
    easy_labels: the class the easy block shows (equal to ``labels`` where its correlation
      is 1).
    hard_labels: the class the hard block shows, likewise.
    easy_dim: the number of leading columns that hold the easy block.
  """

  inputs: np.ndarray
  labels: np.ndarray
  easy_labels: np.ndarray
  hard_labels: np.ndarray
  easy_dim: int

  @property
  def signs(self) -> np.ndarray:
    return (2.0 * self.labels - 1.0).astype(np.float32)


def two_features(
    n: int, *, easy_dim: int = 1, hard_dim: int = 20, easy_margin: float = 2.0,
    hard_margin: float = 1.0, easy_noise: float = 0.1, hard_noise: float = 1.0,
    easy_correlation: float = 1.0, hard_correlation: float = 1.0, seed: int,
) -> TwoFeatureData:
  r"""A binary problem with an easy and a hard feature, both predictive of the label.

  The toy setting of feature balance (Springer et al. 2024): with :math:`t = \pm 1`, the easy
  block is :math:`t_e\, a_e\, e_1 + \sigma_e z_e` in ``easy_dim`` dimensions (a large margin
  :math:`a_e` and little noise: separable, learned at once) and the hard block
  :math:`t_h\, a_h\, e_1 + \sigma_h z_h` in ``hard_dim`` dimensions (a small margin in one
  direction among many noisy ones: its Bayes accuracy alone is :math:`\Phi(a_h / \sigma_h)`,
  0.84 with the defaults, and a network learns it slowly). Each block shows the label
  (:math:`t_e = t` or :math:`t_h = t`) with probability its correlation, else the other class:
  ``0.5`` makes a block uninformative, as the dominoes' probes need.

  Example:
    >>> from samx.data.synthetic import two_features
    >>> data = two_features(8, seed=0)
    >>> data.inputs.shape, data.easy_dim, bool((data.easy_labels == data.labels).all())
    ((8, 21), 1, True)
  """
  check_integer("n", n, 1)
  check_integer("easy_dim", easy_dim, 1)
  check_integer("hard_dim", hard_dim, 1)
  for name, value in (("easy_correlation", easy_correlation),
                      ("hard_correlation", hard_correlation)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must be in [0, 1]; got {value!r}.")
  for name, value in (("easy_noise", easy_noise), ("hard_noise", hard_noise)):
    if not value >= 0:
      raise ValueError(f"{name} must be >= 0; got {value!r}.")
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, size=n)
  easy_labels = np.where(rng.uniform(size=n) < easy_correlation, labels, 1 - labels)
  hard_labels = np.where(rng.uniform(size=n) < hard_correlation, labels, 1 - labels)

  def block(shown: np.ndarray, dim: int, margin: float, noise: float) -> np.ndarray:
    values = noise * rng.normal(size=(n, dim))
    values[:, 0] += (2.0 * shown - 1.0) * margin
    return values

  inputs = np.concatenate([block(easy_labels, easy_dim, easy_margin, easy_noise),
                           block(hard_labels, hard_dim, hard_margin, hard_noise)], axis=1)
  return TwoFeatureData(inputs.astype(np.float32), labels.astype(np.int32),
                        easy_labels.astype(np.int32), hard_labels.astype(np.int32), easy_dim)
