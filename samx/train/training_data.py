"""The run's data: the configured dataset, its subsets and its label noise, as numpy arrays.

Everything here is a pure function of the configuration (seeds included), so every process of
a multi-host run, and a resumed run, builds exactly the same arrays.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import numpy as np

from samx import data as samx_data
from samx.data import noise as noise_models
from samx.data import synthetic
from samx.train.config import Config
from samx.train.errors import ConfigError

# Defaults of the generated datasets; any can be changed with data.options.NAME=value.
GAUSSIAN_MIXTURE_DEFAULTS = {"train_size": 8192, "test_size": 4096, "num_classes": 10,
                             "dim": 32, "center_scale": 0.45}
PATCHES_DEFAULTS = {"train_size": 100, "test_size": 2000, "dim": 200, "signal_norm": 2.0,
                    "noise_std": 1.0}


SPLIT_KEYS = ("input", "label", "clean_label", "noisy")


def split_arrays(inputs: np.ndarray, labels: np.ndarray, clean_labels: np.ndarray | None = None,
                 noisy: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """One split in the engine's data contract (:data:`SPLIT_KEYS`, examples along axis 0).

  ``label`` is the label training and evaluation use (after noise, on the training split);
  ``clean_label`` the true one and ``noisy`` where they differ. Without ``clean_labels`` the
  labels are clean (a test split): ``clean_label`` is ``label`` and ``noisy`` all False.
  """
  labels = np.asarray(labels, np.int32)
  clean = labels if clean_labels is None else np.asarray(clean_labels, np.int32)
  noisy = np.zeros(len(labels), bool) if noisy is None else np.asarray(noisy, bool)
  if not len(inputs) == len(labels) == len(clean) == len(noisy):
    raise ValueError(f"a split needs one input, label, clean label and noise flag per example; "
                     f"got {len(inputs)}, {len(labels)}, {len(clean)} and {len(noisy)}.")
  return {"input": inputs, "label": labels, "clean_label": clean, "noisy": noisy}


class TrainingData(NamedTuple):
  """The arrays of a run.

  Attributes:
    train: the training split, as ``split_arrays`` makes it: ``input``, ``label`` (the
      given labels, after noise), ``clean_label`` and ``noisy`` (the corruption record).
    test: the test split in the same contract (clean: ``noisy`` is all False).
    num_classes: the number of classes.
    name: what the data is, as results should call it.
    mean: the per-channel mean of the training images for uint8 inputs (``None`` for float
      inputs, which the model sees as they are).
    std: their per-channel standard deviation (``None`` likewise).
  """

  train: dict[str, np.ndarray]
  test: dict[str, np.ndarray]
  num_classes: int
  name: str
  mean: np.ndarray | None
  std: np.ndarray | None

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train["input"].shape[1:])

  @property
  def noise_rate(self) -> float:
    return float(np.mean(self.train["noisy"]))


def _options(config: Config, defaults: dict[str, Any], accepted: set[str]) -> dict[str, Any]:
  unknown = set(config.data.options) - accepted
  if unknown:
    raise ConfigError(f"unknown key data.options.{sorted(unknown)[0]} for data.name="
                      f"{config.data.name}; accepted: {', '.join(sorted(accepted))}.")
  return {**defaults, **config.data.options}


# The generators' options: (minimum, integer?) of each; every one must be finite and at least
# its minimum (a float minimum of 0.0 means > 0).
_GENERATOR_OPTIONS = {"train_size": (1, True), "test_size": (1, True), "num_classes": (2, True),
                      "dim": (1, True), "center_scale": (0.0, False),
                      "signal_norm": (0.0, False), "noise_std": (0.0, False)}


def _checked_options(config: Config, defaults: dict[str, Any]) -> dict[str, Any]:
  """The generator's options with their defaults, each checked: an integer option must be a
  whole number >= its minimum (``1.5`` and ``"abc"`` are refused, not truncated), a number
  option finite and > 0."""
  options = _options(config, defaults, set(defaults))
  for key, value in options.items():
    minimum, integer = _GENERATOR_OPTIONS[key]
    name = f"data.options.{key}"
    if integer:
      ok = (isinstance(value, int | np.integer) and not isinstance(value, bool)
            and value >= minimum)
      if not ok:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}.")
      options[key] = int(value)
    else:
      ok = (isinstance(value, int | float | np.number) and not isinstance(value, bool)
            and math.isfinite(value) and value > minimum)
      if not ok:
        raise ConfigError(f"{name} must be a finite number > {minimum:g}; got {value!r}.")
      options[key] = float(value)
  return options


def _generated_gaussian_mixture(config: Config):
  o = _checked_options(config, GAUSSIAN_MIXTURE_DEFAULTS)
  kwargs = {"num_classes": int(o["num_classes"]), "dim": int(o["dim"]),
            "center_scale": float(o["center_scale"]), "seed": config.seed}
  x, y = synthetic.gaussian_mixture(int(o["train_size"]), split="train", **kwargs)
  x_test, y_test = synthetic.gaussian_mixture(int(o["test_size"]), split="test", **kwargs)
  name = f"Gaussian mixture ({kwargs['num_classes']} classes, dim {kwargs['dim']})"
  return x, y, x_test, y_test, kwargs["num_classes"], name


def _generated_patches(config: Config):
  o = _checked_options(config, PATCHES_DEFAULTS)
  signal_norm, noise_std = float(o["signal_norm"]), float(o["noise_std"])
  train = synthetic.signal_noise_patches(int(o["train_size"]), int(o["dim"]), seed=config.seed,
                                         signal_norm=signal_norm, noise_std=noise_std)
  test = synthetic.signal_noise_patches(int(o["test_size"]), int(o["dim"]), mu=train.mu,
                                        seed=config.seed + 1_000_003, signal_norm=signal_norm,
                                        noise_std=noise_std)
  name = f"signal/noise patches (d={o['dim']}, ||mu||={signal_norm})"
  return (train.inputs.astype(np.float32), train.labels, test.inputs.astype(np.float32),
          test.labels, 2, name)


def _loaded(config: Config):
  d = config.data
  if d.name.startswith("dominoes:"):
    accepted = set(inspect.signature(samx_data.dominoes).parameters) - {
        "kind", "split", "seed", "data_dir", "cache_dir"}
    options = _options(config, {}, accepted)
    for key in ("easy_classes", "hard_classes"):
      if isinstance(options.get(key), str):
        options[key] = tuple(int(v) for v in options[key].strip("()[]").split(","))
    kind = d.name.removeprefix("dominoes:")
    common = {"seed": config.seed, "data_dir": d.data_dir, "cache_dir": d.cache_dir, **options}
    train = samx_data.dominoes(kind, "train", **common)
    test = samx_data.dominoes(kind, "test", **common)
  else:
    _options(config, {}, set())
    train = samx_data.load(d.name, "train", data_dir=d.data_dir, cache_dir=d.cache_dir)
    test = samx_data.load(d.name, "test", data_dir=d.data_dir, cache_dir=d.cache_dir)
  return train.images, train.labels, test.images, test.labels, train.num_classes, train.name


def _subset(n: int, size: int | None, seed: int, stream: int, key: str) -> np.ndarray:
  if size is None:
    return np.arange(n)
  if size > n:
    raise ConfigError(f"{key} must be at most the {n} examples of the split; got {size}.")
  return np.sort(np.random.default_rng([seed, stream]).choice(n, size, replace=False))


def _noisy_labels(config: Config, labels: np.ndarray, inputs: np.ndarray, num_classes: int
                  ) -> noise_models.NoisyLabels:
  n = config.noise
  seed = config.seed if n.seed is None else n.seed
  if n.kind == "none":
    return noise_models.NoisyLabels(labels, np.zeros(len(labels), bool),
                                    noise_models.transition_matrix(labels, labels, num_classes))
  if n.kind == "symmetric":
    return noise_models.symmetric(labels, n.rate, num_classes, seed=seed)
  if n.kind == "asymmetric":
    return noise_models.asymmetric(labels, n.rate, num_classes, seed=seed, mapping=n.mapping)
  if n.kind == "instance":
    features = inputs.reshape(len(inputs), -1).astype(np.float32)
    if inputs.dtype == np.uint8:
      features = features / 255.0
    return noise_models.instance_dependent(labels, n.rate, num_classes, features=features,
                                           seed=seed)
  if not n.file:  # validate() refuses noise.kind=file without one
    raise ConfigError(f"noise.file must be a path when noise.kind=file; got {n.file!r}.")
  return noise_models.from_file(labels, n.file, num_classes)


def _channel_statistics(images: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of uint8 images scaled to [0, 1], in chunks."""
  channels = images.shape[-1]
  total, squares, count = np.zeros(channels), np.zeros(channels), 0
  for start in range(0, len(images), chunk):
    part = images[start:start + chunk].reshape(-1, channels).astype(np.float64) / 255.0
    total += part.sum(axis=0)
    squares += np.square(part).sum(axis=0)
    count += len(part)
  mean = total / count
  return mean, np.maximum(np.sqrt(np.maximum(squares / count - mean**2, 0.0)), 1e-3)


def load_data(config: Config) -> TrainingData:
  """Builds the run's arrays from ``config``; raises :class:`ConfigError` naming a bad key.

  ``gaussian_mixture`` options: ``train_size`` (8192), ``test_size`` (4096), ``num_classes``
  (10), ``dim`` (32), ``center_scale`` (0.45). ``patches`` options (Chen et al.'s data, clean
  labels; corrupt them with ``noise.*``): ``train_size`` (100), ``test_size`` (2000), ``dim``
  (200), ``signal_norm`` (2.0), ``noise_std`` (1.0). Dominoes options: the keyword arguments
  of :func:`samx.data.dominoes` (``easy_correlation``, ``hard_correlation``, ...).
  """
  d = config.data
  if d.name == "gaussian_mixture":
    x, y, x_test, y_test, num_classes, name = _generated_gaussian_mixture(config)
  elif d.name == "patches":
    x, y, x_test, y_test, num_classes, name = _generated_patches(config)
  else:
    try:
      x, y, x_test, y_test, num_classes, name = _loaded(config)
    except (ValueError, FileNotFoundError) as error:
      if isinstance(error, ConfigError):
        raise
      raise ConfigError(f"data.name={d.name!r} could not be loaded: {error}") from error
  if d.augment and (x.dtype != np.uint8 or x.ndim != 4):
    raise ConfigError(f"data.augment needs image data (uint8 NHWC); {name} has inputs of shape "
                      f"{x.shape[1:]} and dtype {x.dtype}.")
  keep = _subset(len(y), d.train_examples, config.seed, 1, "data.train_examples")
  keep_test = _subset(len(y_test), d.test_examples, config.seed, 2, "data.test_examples")
  try:
    if config.noise.kind == "file":  # the file holds one label per example of the whole split
      noisy = _noisy_labels(config, y, x, num_classes)
      x, y = x[keep], y[keep]
      given, noisy_mask = noisy.labels[keep], noisy.noisy_mask[keep]
    else:
      x, y = x[keep], y[keep]
      noisy = _noisy_labels(config, y, x, num_classes)
      given, noisy_mask = noisy.labels, noisy.noisy_mask
  except (ValueError, FileNotFoundError) as error:
    raise ConfigError(f"noise ({config.noise.kind}): {error}") from error
  mean, std = _channel_statistics(x) if x.dtype == np.uint8 else (None, None)
  train = split_arrays(x, given, y, noisy_mask)
  test = split_arrays(x_test[keep_test], y_test[keep_test])
  return TrainingData(train, test, num_classes, name, mean, std)
