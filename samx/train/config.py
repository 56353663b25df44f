"""The training configuration: typed dataclasses, ``key=value`` overrides, checks before training.

A run is fully described by one :class:`Config`; its resolved form is written next to the
metrics as JSON, and :func:`from_dict` reads it back (that is how ``--resume`` works). Presets
(:mod:`samx.train.presets`) are functions that return a ``Config``; the command line changes
any field with ``--set section.field=value``.

Example:
  >>> from samx.train import config as cfg
  >>> c = cfg.override(cfg.Config(), ["optimizer.name=sam", "optimizer.rho=0.1", "epochs=3"])
  >>> c.optimizer.name, c.optimizer.rho, c.epochs
  ('sam', 0.1, 3)
  >>> cfg.override(cfg.Config(), ["optimizer.rhoo=0.1"])
  Traceback (most recent call last):
  ...
  samx.train.config.ConfigError: unknown key 'optimizer.rhoo'; optimizer accepts: ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

OPTIMIZERS = ("sgd", "sam", "asam", "saner", "gsam", "lsam", "jsam", "penalty")
BASE_OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
NOISE_KINDS = ("none", "symmetric", "asymmetric", "instance", "file")
MODELS = ("mlp", "resnet18", "resnet34", "preact_resnet18", "wide_resnet", "small_cnn",
          "two_layer_relu_cnn", "two_layer_linear")
DATASETS = ("gaussian_mixture", "patches", "mnist", "fashion_mnist", "cifar10", "cifar100",
            "dominoes:cifar_mnist", "dominoes:fmnist_mnist", "folder:PATH", "tfds:NAME")


class ConfigError(ValueError):
  """A configuration value that samx cannot train with; the message names the key."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data, how much of it, and its augmentation.

  Attributes:
    name: one of ``DATASETS``: ``gaussian_mixture`` and ``patches`` (Chen et al.'s
      signal/noise patches) are generated, the others are read by :func:`samx.data.load` (or
      :func:`samx.data.dominoes`) from ``data_dir``.
    data_dir: where the files are (default ``$SAMX_DATA_DIR``, else ``./data``).
    cache_dir: where decoded image folders are cached (default ``$SAMX_CACHE_DIR``).
    train_examples: train on a fixed random subset of this size (``None``: all), drawn from
      the run's seed; the CPU presets use it.
    test_examples: evaluate on a fixed random subset of the test split (``None``: all).
    augment: random crop (padding 4) and horizontal flip on device, for CIFAR-like images.
    options: keyword arguments of the generator (``gaussian_mixture``: ``train_examples``...
      see :func:`samx.train.data.load_data`) or of :func:`samx.data.dominoes`.
  """

  name: str = "gaussian_mixture"
  data_dir: str | None = None
  cache_dir: str | None = None
  train_examples: int | None = None
  test_examples: int | None = None
  augment: bool = False
  options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """Label noise on the training split (the test split stays clean).

  Attributes:
    kind: ``none``, ``symmetric``, ``asymmetric`` (``mapping``), ``instance`` (Xia et al.
      2020, on the flattened images) or ``file`` (given labels read from ``file``).
    rate: the fraction of corrupted labels, in [0, 1).
    mapping: for ``asymmetric``: ``next_class`` or ``cifar10``.
    file: for ``file``: a ``.npy``, ``.npz`` or text file of labels.
    seed: the noise seed (default: the run's seed).
  """

  kind: str = "none"
  rate: float = 0.0
  mapping: str = "next_class"
  file: str | None = None
  seed: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network (:mod:`samx.models`).

  Attributes:
    name: one of ``MODELS``.
    width: channel multiplier of the convolutional models (1.0 = the paper's size).
    hidden: hidden layer sizes of ``mlp``; ``hidden[0]`` is ``two_layer_linear``'s width.
    depth, widen_factor: of ``wide_resnet`` (e.g. 28 and 10 for WRN-28-10).
    filters_per_sign, power, init_std: of ``two_layer_relu_cnn`` (Chen et al.).
  """

  name: str = "mlp"
  width: float = 1.0
  hidden: tuple[int, ...] = (256, 256)
  depth: int = 16
  widen_factor: int = 4
  filters_per_sign: int = 10
  power: float = 1.0
  init_std: float = 0.01


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The gradient transform at the head of the chain, and the base optimizer after it.

  Attributes:
    name: ``sgd``; ``sam``; ``asam`` (SAM with ``adaptive=True``); ``saner``; ``gsam``;
      ``lsam`` and ``jsam`` (Baek et al.'s logit-only and Jacobian-only SAM); ``penalty``
      (SGD on the loss plus Baek et al.'s explicit feature and last-layer penalties).
    rho: the perturbation radius.
    group_size: m-sharpness (``1``: 1-SAM; ``None``: the whole global batch).
    groups_in_parallel: how many groups to evaluate at once (``1`` is fastest for convnets
      on CPU; ``None``: all).
    adaptive: ASAM's perturbation for ``saner``, ``gsam``, ``lsam``, ``jsam`` too.
    eta: ASAM's ``eta``.
    alpha: SANER's final group-B weight.
    warmup_epochs: SANER's ramp of ``beta`` from 1 to ``alpha``, in epochs.
    gsam_alpha: GSAM's ``alpha`` (for ``gsam``, and SANER on top of GSAM when > 0).
    feature_coef, weight_coef: the ``penalty`` coefficients on the penultimate features'
      squared norm and the last layer's squared weights.
    base: ``sgd`` (with ``momentum``, ``nesterov``) or ``adam``.
    learning_rate: the peak learning rate (shaped by the schedule).
    weight_decay: added to the update after the samx transform (coupled, as in the papers).
  """

  name: str = "sgd"
  rho: float = 0.05
  group_size: int | None = None
  groups_in_parallel: int | None = None
  adaptive: bool = False
  eta: float = 0.01
  alpha: float = 0.5
  warmup_epochs: float = 50.0
  gsam_alpha: float = 0.0
  feature_coef: float = 1e-3
  weight_coef: float = 1e-3
  base: str = "sgd"
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """The learning-rate schedule, over the run's steps.

  Attributes:
    kind: ``constant``; ``cosine`` (to zero at the end); ``step`` (multiply by ``decay`` at
      each of ``boundaries``, given as fractions of the run, e.g. (0.5, 0.75)).
    warmup_epochs: a linear warmup from zero, in epochs, before the schedule.
  """

  kind: str = "constant"
  warmup_epochs: float = 0.0
  boundaries: tuple[float, ...] = (0.5, 0.75)
  decay: float = 0.1


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run.

  Attributes:
    epochs: passes over the training set.
    batch_size: the global batch (split over the devices of the mesh).
    eval_batch_size: the global batch of the evaluation passes.
    seed: fixes the initialisation, the subsets, the noise (unless ``noise.seed``), the batch
      order and the augmentation.
    devices: train on the first ``devices`` of ``jax.devices()`` (``None``: all of them), as
      a 1-D mesh with the batch sharded on its ``data`` axis.
    train_eval_examples: how many training examples (a fixed subset) the per-epoch metrics of
      the training set use (``None``: all).
    eval_every: evaluate every this many epochs (and always after the last).
    checkpoint_every: save a checkpoint every this many epochs (0: never).
    keep_checkpoints: how many checkpoints to keep.
  """

  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
  epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 1000
  seed: int = 0
  devices: int | None = None
  train_eval_examples: int | None = None
  eval_every: int = 1
  checkpoint_every: int = 1
  keep_checkpoints: int = 2


# ---------------------------------------------------------------------------------------------
# Overrides and (de)serialisation.


def _field_types(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _is_optional(tp) -> tuple[bool, Any]:
  args = typing.get_args(tp)
  if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
    rest = [a for a in args if a is not type(None)]
    return True, rest[0]
  return False, tp


def _parse_scalar(text: str) -> Any:
  """A free-form value (``data.options.*``): int, float, bool, None or string."""
  lowered = text.strip().lower()
  if lowered in ("none", "null"):
    return None
  if lowered in ("true", "false"):
    return lowered == "true"
  for parse in (int, float):
    try:
      return parse(text)
    except ValueError:
      pass
  return text


def _convert(key: str, value: Any, tp: Any) -> Any:
  """``value`` (a string from the command line or a JSON value) as type ``tp``."""
  optional, tp = _is_optional(tp)
  if value is None or (optional and isinstance(value, str)
                       and value.strip().lower() in ("none", "null")):
    if optional:
      return None
    raise ConfigError(f"{key} cannot be None.")
  try:
    if tp is bool:
      if isinstance(value, bool):
        return value
      if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0",
                                                              "no"):
        return value.strip().lower() in ("true", "1", "yes")
      raise ValueError
    if tp is int:
      if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
      return int(value)
    if tp is float:
      if isinstance(value, bool):
        raise ValueError
      return float(value)
    if tp is str:
      return str(value)
    if typing.get_origin(tp) is tuple:
      item = typing.get_args(tp)[0]
      if isinstance(value, str):
        value = [v for v in value.strip().strip("[]()").split(",") if v.strip()]
      return tuple(_convert(key, v, item) for v in value)
    if typing.get_origin(tp) is dict:
      if isinstance(value, str):
        value = json.loads(value)
      if not isinstance(value, dict):
        raise ValueError
      return dict(value)
  except (ValueError, TypeError, json.JSONDecodeError):
    pass
  else:
    raise ConfigError(f"{key} has an unsupported type {tp}.")
  raise ConfigError(f"{key} must be {_describe(tp, optional)}; got {value!r}.")


def _describe(tp: Any, optional: bool) -> str:
  names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
  if typing.get_origin(tp) is tuple:
    text = f"a comma-separated list of {names.get(typing.get_args(tp)[0], 'values')}"
  elif typing.get_origin(tp) is dict:
    text = "a JSON object"
  else:
    text = names.get(tp, str(tp))
  return text + (" or none" if optional else "")


def override(config: Config, assignments: Iterable[str]) -> Config:
  """``config`` with each ``"section.field=value"`` (or ``"field=value"``) applied in order.

  ``data.options.NAME=value`` sets one generator option. Raises :class:`ConfigError` naming
  the key for an unknown key or a value of the wrong type.
  """
  for assignment in assignments:
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"an override must look like section.field=value; got {assignment!r}.")
    config = _assign(config, key, text)
  return config


def _assign(config: Config, key: str, text: str) -> Config:
  parts = key.split(".")
  if parts[:2] == ["data", "options"] and len(parts) == 3:
    options = {**config.data.options, parts[2]: _parse_scalar(text)}
    return dataclasses.replace(config, data=dataclasses.replace(config.data, options=options))
  top = _field_types(Config)
  sections = {name for name, tp in top.items() if dataclasses.is_dataclass(tp)}
  if len(parts) == 1:
    if parts[0] not in top or parts[0] in sections:
      scalars = sorted(set(top) - sections)
      raise ConfigError(f"unknown key {key!r}; top-level keys: {', '.join(scalars)}; sections: "
                        f"{', '.join(sorted(sections))}.")
    return dataclasses.replace(config, **{parts[0]: _convert(key, text, top[parts[0]])})
  if len(parts) == 2 and parts[0] in sections:
    section = getattr(config, parts[0])
    fields = _field_types(type(section))
    if parts[1] not in fields:
      raise ConfigError(f"unknown key {key!r}; {parts[0]} accepts: {', '.join(fields)}.")
    section = dataclasses.replace(section, **{parts[1]: _convert(key, text, fields[parts[1]])})
    return dataclasses.replace(config, **{parts[0]: section})
  raise ConfigError(f"unknown key {key!r}; keys look like 'epochs' or 'optimizer.rho' (sections: "
                    f"{', '.join(sorted(sections))}).")


def to_dict(config: Config) -> dict[str, Any]:
  """A JSON-ready dict of ``config`` (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(values: dict[str, Any]) -> Config:
  """The inverse of :func:`to_dict`; unknown keys raise :class:`ConfigError`."""
  kwargs = {}
  top = _field_types(Config)
  for name, value in values.items():
    if name not in top:
      raise ConfigError(f"unknown key {name!r} in the configuration.")
    tp = top[name]
    if dataclasses.is_dataclass(tp):
      fields = _field_types(tp)
      unknown = set(value) - set(fields)
      if unknown:
        raise ConfigError(f"unknown key {name}.{sorted(unknown)[0]} in the configuration.")
      kwargs[name] = tp(**{k: _convert(f"{name}.{k}", v, fields[k]) for k, v in value.items()})
    else:
      kwargs[name] = _convert(name, value, tp)
  return Config(**kwargs)


# ---------------------------------------------------------------------------------------------
# Checks that need nothing but the config (the data-dependent ones run when the data is loaded,
# still before the first step).


def _check(condition: bool, key: str, accepted: str, value: Any) -> None:
  if not condition:
    raise ConfigError(f"{key} must be {accepted}; got {value!r}.")


def _known_dataset(name: str) -> bool:
  fixed = [d for d in DATASETS if not d.endswith(("PATH", "NAME"))]
  return name in fixed or (name.startswith(("folder:", "tfds:")) and len(name.split(":", 1)[1]) > 0)


def validate(config: Config, *, device_count: int | None = None) -> Config:
  """Checks ``config``; raises :class:`ConfigError` naming the first bad key. Returns it."""
  d, n, m, o, s = config.data, config.noise, config.model, config.optimizer, config.schedule
  _check(_known_dataset(d.name), "data.name", f"one of {', '.join(DATASETS)}", d.name)
  for key, value in (("data.train_examples", d.train_examples),
                     ("data.test_examples", d.test_examples),
                     ("train_eval_examples", config.train_eval_examples)):
    _check(value is None or value >= 1, key, "a positive integer or none", value)
  _check(n.kind in NOISE_KINDS, "noise.kind", f"one of {', '.join(NOISE_KINDS)}", n.kind)
  _check(math.isfinite(n.rate) and 0.0 <= n.rate < 1.0, "noise.rate", "in [0, 1)", n.rate)
  _check(n.kind in ("none", "file") or n.rate > 0, "noise.rate",
         f"> 0 for noise.kind={n.kind}", n.rate)
  _check(n.kind != "none" or n.rate == 0.0, "noise.rate", "0 when noise.kind=none (set "
         "noise.kind)", n.rate)
  _check(n.kind != "file" or bool(n.file), "noise.file", "a path when noise.kind=file", n.file)
  _check(n.mapping in ("next_class", "cifar10"), "noise.mapping", "next_class or cifar10",
         n.mapping)
  _check(m.name in MODELS, "model.name", f"one of {', '.join(MODELS)}", m.name)
  _check(m.width > 0, "model.width", "> 0", m.width)
  _check(all(h >= 1 for h in m.hidden) and len(m.hidden) >= 1, "model.hidden",
         "a non-empty list of positive sizes", m.hidden)
  _check(m.depth >= 10 and (m.depth - 4) % 6 == 0, "model.depth", "6k + 4 with k >= 1", m.depth)
  _check(m.widen_factor >= 1, "model.widen_factor", ">= 1", m.widen_factor)
  _check(m.filters_per_sign >= 1, "model.filters_per_sign", ">= 1", m.filters_per_sign)
  _check(o.name in OPTIMIZERS, "optimizer.name", f"one of {', '.join(OPTIMIZERS)}", o.name)
  _check(math.isfinite(o.rho) and o.rho >= 0, "optimizer.rho", ">= 0", o.rho)
  _check(o.group_size is None or o.group_size >= 1, "optimizer.group_size",
         "a positive integer or none", o.group_size)
  _check(o.groups_in_parallel is None or o.groups_in_parallel >= 1,
         "optimizer.groups_in_parallel", "a positive integer or none", o.groups_in_parallel)
  _check(o.groups_in_parallel is None or o.group_size is not None,
         "optimizer.groups_in_parallel", "none unless optimizer.group_size is set",
         o.groups_in_parallel)
  _check(o.eta >= 0, "optimizer.eta", ">= 0", o.eta)
  _check(0 <= o.alpha <= 1, "optimizer.alpha", "in [0, 1]", o.alpha)
  _check(o.warmup_epochs >= 0, "optimizer.warmup_epochs", ">= 0", o.warmup_epochs)
  _check(o.gsam_alpha >= 0, "optimizer.gsam_alpha", ">= 0", o.gsam_alpha)
  _check(o.feature_coef >= 0, "optimizer.feature_coef", ">= 0", o.feature_coef)
  _check(o.weight_coef >= 0, "optimizer.weight_coef", ">= 0", o.weight_coef)
  _check(o.base in BASE_OPTIMIZERS, "optimizer.base", f"one of {', '.join(BASE_OPTIMIZERS)}",
         o.base)
  _check(o.learning_rate > 0, "optimizer.learning_rate", "> 0", o.learning_rate)
  _check(0 <= o.momentum < 1, "optimizer.momentum", "in [0, 1)", o.momentum)
  _check(o.weight_decay >= 0, "optimizer.weight_decay", ">= 0", o.weight_decay)
  _check(s.kind in SCHEDULES, "schedule.kind", f"one of {', '.join(SCHEDULES)}", s.kind)
  _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", ">= 0", s.warmup_epochs)
  _check(all(0 < b < 1 for b in s.boundaries) and list(s.boundaries) == sorted(s.boundaries),
         "schedule.boundaries", "increasing fractions of the run in (0, 1)", s.boundaries)
  _check(0 < s.decay <= 1, "schedule.decay", "in (0, 1]", s.decay)
  _check(config.epochs >= 1, "epochs", ">= 1", config.epochs)
  _check(config.batch_size >= 1, "batch_size", ">= 1", config.batch_size)
  _check(config.eval_batch_size >= 1, "eval_batch_size", ">= 1", config.eval_batch_size)
  _check(config.eval_every >= 1, "eval_every", ">= 1", config.eval_every)
  _check(config.checkpoint_every >= 0, "checkpoint_every", ">= 0", config.checkpoint_every)
  _check(config.keep_checkpoints >= 1, "keep_checkpoints", ">= 1", config.keep_checkpoints)
  _check(config.devices is None or config.devices >= 1, "devices", "a positive integer or none",
         config.devices)
  if device_count is not None:
    _check(config.devices is None or config.devices <= device_count, "devices",
           f"at most the {device_count} available devices", config.devices)
    used = device_count if config.devices is None else config.devices
    _check(config.batch_size % used == 0, "batch_size", f"divisible by the {used} devices",
           config.batch_size)
    _check(config.eval_batch_size % used == 0, "eval_batch_size",
           f"divisible by the {used} devices", config.eval_batch_size)
  if o.group_size is not None and o.name not in ("sgd", "penalty"):
    _check(config.batch_size % o.group_size == 0, "optimizer.group_size",
           f"a divisor of batch_size={config.batch_size}", o.group_size)
  if o.name == "gsam":
    _check(o.gsam_alpha > 0, "optimizer.gsam_alpha", "> 0 for optimizer.name=gsam",
           o.gsam_alpha)
  return config
