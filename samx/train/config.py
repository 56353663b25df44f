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
  samx.train.errors.ConfigError: unknown key 'optimizer.rhoo'; optimizer accepts: ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

from samx.train.errors import ConfigError
from samx.train.methods import (
  ADAPTIVE_MASK_CHOICES,
  METHODS,
  PERTURB_CHOICES,
  PERTURBED_STATISTICS_CHOICES,
  AESAMConfig,
  GSAMConfig,
  LookSAMConfig,
  SANERConfig,
  Steps,
  build_transform,
  mask_options,
  method,
)

BASE_OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
DTYPES = ("float32", "bfloat16")
NOISE_KINDS = ("none", "symmetric", "asymmetric", "instance", "file")
MODELS = ("mlp", "resnet18", "resnet34", "preact_resnet18", "wide_resnet", "small_cnn", "vit",
          "two_layer_relu_cnn", "two_layer_linear")
VIT_POOLINGS = ("token", "mean")
DATASETS = ("gaussian_mixture", "patches", "mnist", "fashion_mnist", "cifar10", "cifar100",
            "dominoes:cifar_mnist", "dominoes:fmnist_mnist", "folder:PATH", "tfds:NAME")

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
    prefetch: how many training batches are gathered and put on the devices ahead of the step
      that uses them (0: none), so host work and transfers overlap the compute.
    options: keyword arguments of the generator (``gaussian_mixture``: ``train_examples``...
      see :func:`samx.train.load_data`) or of :func:`samx.data.dominoes`.
  """

  name: str = "gaussian_mixture"
  data_dir: str | None = None
  cache_dir: str | None = None
  train_examples: int | None = None
  test_examples: int | None = None
  augment: bool = False
  prefetch: int = 2
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
    dtype: the compute dtype, ``float32`` or ``bfloat16`` (parameters, BatchNorm statistics,
      logits and the loss stay float32; the transforms form their norms and eps in float32).
      ``float16`` is refused: it needs loss scaling, which samx does not do.
    width: channel multiplier of the convolutional models (1.0 = the paper's size).
    hidden: hidden layer sizes of ``mlp``; ``hidden[0]`` is ``two_layer_linear``'s width and
      ``vit``'s token width.
    depth: ``wide_resnet``'s depth (``6k + 4``, e.g. 28 for WRN-28-10) or ``vit``'s number of
      encoder blocks.
    widen_factor: of ``wide_resnet``.
    patch_size: ``vit``'s patch side (:class:`samx.models.ViT`).
    heads: ``vit``'s attention heads (dividing ``hidden[0]``).
    mlp_dim: the width of each ``vit`` block's MLP.
    pooling: ``vit``'s ``token`` (class token) or ``mean`` pooling.
    filters_per_sign: of ``two_layer_relu_cnn`` (Chen et al.).
    power: of ``two_layer_relu_cnn``: the activation's power.
    init_std: of ``two_layer_relu_cnn``: the initial weights' standard deviation.
  """

  name: str = "mlp"
  dtype: str = "float32"
  width: float = 1.0
  hidden: tuple[int, ...] = (256, 256)
  depth: int = 16
  widen_factor: int = 4
  patch_size: int = 4
  heads: int = 4
  mlp_dim: int = 512
  pooling: str = "token"
  filters_per_sign: int = 10
  power: float = 1.0
  init_std: float = 0.01


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The method (the samx transform at the head of the chain) and the base optimizer after it.

  Attributes:
    name: the method, one of :data:`samx.train.methods.METHODS`: ``sgd``; ``sam``; ``asam``
      (SAM with ``adaptive=True``); ``saner`` (options in the ``saner`` section); ``gsam``
      (``gsam`` section); ``lsam`` and ``jsam`` (Baek et al.'s logit-only and Jacobian-only
      SAM); the cheaper ``looksam`` (``looksam`` section) and ``ae_sam`` (``ae_sam``
      section); ``sam_on`` (SAM with ``perturb=normalization``). ``penalty`` is short for
      ``sgd`` with the ``penalty`` section's coefficients set.
    rho: the perturbation radius (every sharpness-aware method); with ``rho_min``, its
      largest value.
    rho_min: ``None`` (the default): ``rho`` is constant. A number in ``[0, rho]``: the radius
      follows the learning rate, ``rho_min + (rho - rho_min) (lr_t - lr_min) / (lr_max -
      lr_min)`` at step ``t`` (``lr_min``, ``lr_max``: the schedule's smallest and largest
      values over the run), as GSAM's authors schedule it (Zhuang et al. 2022); a constant
      learning rate leaves it at ``rho``. For every sharpness-aware method.
    group_size: m-sharpness (``1``: 1-SAM; ``None``: the whole global batch).
    groups_in_parallel: how many groups to evaluate at once (``1`` is fastest for convnets
      on CPU; ``None``: all).
    group_path: with ``group_size``, ``layers`` (the default: dense and convolution weights
      from their inputs and output gradients, no per-example weights) or ``vmap`` (every
      group gradient vmapped); the same updates, see :func:`samx.sam`.
    adaptive: ASAM's perturbation, for any sharpness-aware method.
    eta: ASAM's ``eta``.
    perturb: ``all`` parameters, or only the ``normalization`` layers' (SAM-ON's rule, for
      any sharpness-aware method; refused for a model without normalization layers).
    adaptive_mask: with ``adaptive``, the parameters ASAM scales by ``|w| + eta``: ``all``
      (samx's default) or ``weights`` (all but the biases, as the ASAM authors' code).
    perturbed_statistics: what BatchNorm normalises with in the method's passes at
      ``w + eps`` (and, with ``group_size``, in the groups' clean passes): ``group`` (each
      group's own batch statistics: the whole batch's at ``w + eps`` without ``group_size``,
      as google-research/sam and the m-SAM authors' code), ``batch`` (the clean pass's batch
      statistics at ``w``, held fixed, so each example's loss depends on its own input
      alone), ``running`` (the running averages, as in evaluation) or ``auto`` (the default:
      ``batch`` with ``group_size``, ``group`` without); see ``samx.models.statistics``.
      With fixed statistics (``batch``, ``running``) the update is the clean gradient plus
      what the perturbation changes in the fixed-statistics gradient
      (``samx.Objective.surrogate``; without ``group_size`` one more gradient evaluation).
      Models without BatchNorm are unaffected.
    base: ``sgd`` (with ``momentum``, ``nesterov``), ``adam`` or ``adamw`` (Adam with weight
      decay decoupled from the gradient, Loshchilov & Hutter, the usual optimizer of ViTs).
    learning_rate: the peak learning rate (shaped by the schedule).
    weight_decay: added to the update after the samx transform (coupled, as in the papers);
      with ``base=adamw``, AdamW's decoupled decay (``lr * weight_decay * w``) instead.
    skip_nonfinite: ``0`` (the default): a NaN or infinite loss or parameter stops the run with
      a message. ``N > 0``: a step whose final update is not finite is skipped (the parameters
      and optimizer state stay as they were), up to ``N`` in a row; the epoch's
      ``skipped_step_fraction`` counts them (see ``samx.train.optimizer.
      skip_nonfinite_updates``).
  """

  name: str = "sgd"
  rho: float = 0.05
  rho_min: float | None = None
  group_size: int | None = None
  groups_in_parallel: int | None = None
  group_path: str = "layers"
  adaptive: bool = False
  eta: float = 0.01
  perturb: str = "all"
  adaptive_mask: str = "all"
  perturbed_statistics: str = "auto"
  base: str = "sgd"
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4
  skip_nonfinite: int = 0

  def shared_options(self) -> dict[str, Any]:
    """The options every sharpness-aware transform takes, as its keyword arguments."""
    return {"rho": self.rho, "adaptive": self.adaptive, "eta": self.eta,
            "group_size": self.group_size, "groups_in_parallel": self.groups_in_parallel,
            "group_path": self.group_path}

  @property
  def statistics(self) -> str:
    """``perturbed_statistics`` with ``auto`` resolved: ``batch`` with ``group_size``, else
    ``group``."""
    if self.perturbed_statistics != "auto":
      return self.perturbed_statistics
    return "group" if self.group_size is None else "batch"


@dataclasses.dataclass(frozen=True)
class PenaltyConfig:
  """Baek et al.'s explicit regulariser on the loss (:mod:`samx.penalties`), with any method.

  The loss becomes ``cross-entropy + feature_coef * mean_i ||phi(x_i)||^2 / 2 + weight_coef *
  ||V||^2 / 2``, with ``phi`` the penultimate features and ``V`` the last layer's kernel; a
  sharpness-aware method then works on that regularised loss (at ``w`` and at ``w + eps``).
  ``sgd`` with the penalty is the paper's cheap alternative to SAM (one gradient per step).

  Attributes:
    feature_coef: the coefficient of the penultimate features' squared norm (0: off).
    weight_coef: the coefficient of the last layer's squared weights (0: off).
  """

  feature_coef: float = 0.0
  weight_coef: float = 0.0

  @property
  def active(self) -> bool:
    return self.feature_coef != 0.0 or self.weight_coef != 0.0


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """How the training state is laid out over the devices (``samx.train.sharding``); it
  changes where arrays live, not what is computed (the metrics are the same to rounding), so a
  run may be resumed with other values.

  Attributes:
    fsdp: fully sharded data parallel over this many devices: the devices form a mesh of
      ``devices / fsdp`` (axis ``data``) by ``fsdp`` (axis ``fsdp``), the batch is split over
      both, and every array of the state with at least ``min_elements`` elements is split
      ``fsdp`` ways along its largest dimension that ``fsdp`` divides (the last on a tie);
      the others are replicated. 1: data parallel, the state replicated on every device.
    min_elements: arrays with fewer elements stay replicated (the default, 2^14 float32
      elements, is 64 KiB: below it a gather costs more in latency than it saves in memory).
  """

  fsdp: int = 1
  min_elements: int = 2**14


# What ``optimizer.name=penalty`` sets when the penalty section is still off.
PENALTY_SHORTHAND = PenaltyConfig(feature_coef=1e-3, weight_coef=1e-3)


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

  Sections: ``data``, ``noise``, ``model``, ``optimizer`` (the method and the base optimizer),
  one section per method with options of its own (``saner``, ``gsam``, ``looksam``,
  ``ae_sam``), ``penalty`` (a
  regulariser for any method), ``schedule`` and ``sharding`` (how the state is laid out over
  the devices).

  Attributes:
    epochs: passes over the training set.
    batch_size: the global batch (split over the devices of the mesh).
    eval_batch_size: the global batch of the evaluation passes.
    seed: fixes the initialisation, the subsets, the noise (unless ``noise.seed``), the batch
      order and the augmentation.
    devices: train on the first ``devices`` of ``jax.devices()`` (``None``: all of them), the
      batch split over them (``sharding`` says how the state is laid out).
    train_eval_examples: how many training examples (a fixed subset) the per-epoch metrics of
      the training set use (``None``: all).
    eval_every: evaluate every this many epochs (and always after the last).
    checkpoint_every: save a checkpoint at the end of every this many epochs (0: never).
    checkpoint_every_steps: also save one every this many training steps, mid-epoch too (0:
      never).
    checkpoint_every_minutes: also save one whenever this many minutes have passed since the
      last save, at the next step (0: never). Whatever these say, a run stopped by SIGTERM or
      Ctrl-C saves the step it stopped at (see ``samx.train.stopping``).
    keep_checkpoints: how many checkpoints to keep (the latest ones).
  """

  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  saner: SANERConfig = dataclasses.field(default_factory=SANERConfig)
  gsam: GSAMConfig = dataclasses.field(default_factory=GSAMConfig)
  looksam: LookSAMConfig = dataclasses.field(default_factory=LookSAMConfig)
  ae_sam: AESAMConfig = dataclasses.field(default_factory=AESAMConfig)
  penalty: PenaltyConfig = dataclasses.field(default_factory=PenaltyConfig)
  schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
  sharding: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
  epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 1000
  seed: int = 0
  devices: int | None = None
  train_eval_examples: int | None = None
  eval_every: int = 1
  checkpoint_every: int = 1
  checkpoint_every_steps: int = 0
  checkpoint_every_minutes: float = 0.0
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


# Keys of earlier versions, when every method's options sat in the optimizer section: each
# still works on the command line and in stored configs, and sets its new key(s).
LEGACY_KEYS = {
    "optimizer.alpha": ("saner.alpha",),
    "optimizer.warmup_epochs": ("saner.warmup_epochs",),
    "optimizer.gsam_alpha": ("gsam.alpha", "saner.gsam_alpha"),
    "optimizer.feature_coef": ("penalty.feature_coef",),
    "optimizer.weight_coef": ("penalty.weight_coef",),
}


def override(config: Config, assignments: Iterable[str]) -> Config:
  """``config`` with each ``"section.field=value"`` (or ``"field=value"``) applied in order.

  ``data.options.NAME=value`` sets one generator option; ``optimizer.name=penalty`` is short
  for ``optimizer.name=sgd`` with the penalty section's coefficients (1e-3 each, unless set).
  Raises :class:`ConfigError` naming the key for an unknown key or a value of the wrong type.
  """
  for assignment in assignments:
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"an override must look like section.field=value; got {assignment!r}.")
    config = _assign(config, key, text)
  return config


def _assign(config: Config, key: str, value: Any) -> Config:
  """``config`` with ``key`` set to ``value`` (a string from the command line, or a JSON value)."""
  if key in LEGACY_KEYS:
    for new_key in LEGACY_KEYS[key]:
      config = _assign(config, new_key, value)
    return config
  parts = key.split(".")
  if parts[:2] == ["data", "options"] and len(parts) == 3:
    parsed = _parse_scalar(value) if isinstance(value, str) else value
    options = {**config.data.options, parts[2]: parsed}
    return dataclasses.replace(config, data=dataclasses.replace(config.data, options=options))
  if key == "optimizer.name" and value == "penalty":
    penalty = config.penalty if config.penalty.active else PENALTY_SHORTHAND
    config = dataclasses.replace(config, penalty=penalty)
    value = "sgd"
  top = _field_types(Config)
  sections = {name for name, tp in top.items() if dataclasses.is_dataclass(tp)}
  if len(parts) == 1:
    if parts[0] not in top or parts[0] in sections:
      scalars = sorted(set(top) - sections)
      raise ConfigError(f"unknown key {key!r}; top-level keys: {', '.join(scalars)}; sections: "
                        f"{', '.join(sorted(sections))}.")
    return dataclasses.replace(config, **{parts[0]: _convert(key, value, top[parts[0]])})
  if len(parts) == 2 and parts[0] in sections:
    section = getattr(config, parts[0])
    fields = _field_types(type(section))
    if parts[1] not in fields:
      raise ConfigError(f"unknown key {key!r}; {parts[0]} accepts: {', '.join(fields)}.")
    section = dataclasses.replace(section, **{parts[1]: _convert(key, value, fields[parts[1]])})
    return dataclasses.replace(config, **{parts[0]: section})
  raise ConfigError(f"unknown key {key!r}; keys look like 'epochs' or 'optimizer.rho' (sections: "
                    f"{', '.join(sorted(sections))}).")


def to_dict(config: Config) -> dict[str, Any]:
  """A JSON-ready dict of ``config`` (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(values: dict[str, Any]) -> Config:
  """The inverse of :func:`to_dict`; unknown keys raise :class:`ConfigError`.

  Configs stored by earlier versions (every method's options in the ``optimizer`` section)
  are read as they were meant: their ``optimizer.name=penalty`` becomes ``sgd`` with the
  penalty section, and the penalty coefficients of other methods, which they ignored, are
  dropped.
  """
  config = Config()
  for name, value in values.items():
    if isinstance(value, dict) and name != "data":
      stored = dict(value)
      if name == "optimizer" and stored.get("name") != "penalty":
        for unused in ("feature_coef", "weight_coef"):
          stored.pop(unused, None)
      for field, field_value in stored.items():
        config = _assign(config, f"{name}.{field}", field_value)
    elif name == "data" and isinstance(value, dict):
      options = value.get("options", {})
      rest = {k: v for k, v in value.items() if k != "options"}
      for field, field_value in rest.items():
        config = _assign(config, f"data.{field}", field_value)
      if not isinstance(options, dict):
        raise ConfigError(f"data.options must be a JSON object; got {options!r}.")
      config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                    options=dict(options)))
    else:
      config = _assign(config, name, value)
  return config


# ---------------------------------------------------------------------------------------------
# Checks that need nothing but the config (the data-dependent ones run when the data is loaded,
# still before the first step).


def _check(condition: bool, key: str, accepted: str, value: Any) -> None:
  if not condition:
    raise ConfigError(f"{key} must be {accepted}; got {value!r}.")


def _positive_sizes(sizes: tuple[int, ...]) -> bool:
  """Whether ``sizes`` is non-empty and each size is at least 1 (a function: an inline length
  test would narrow ``model.hidden`` to possibly empty for the rest of ``validate``)."""
  return all(size >= 1 for size in sizes) and len(sizes) >= 1


def _known_dataset(name: str) -> bool:
  fixed = [d for d in DATASETS if not d.endswith(("PATH", "NAME"))]
  return name in fixed or (name.startswith(("folder:", "tfds:")) and len(name.split(":", 1)[1]) > 0)


def method_section(config: Config) -> Any:
  """The config section of ``config.optimizer.name``'s own options (``None`` if it has none)."""
  section = method(config.optimizer.name).section
  return None if section is None else getattr(config, section)


# Each method section and a method whose options it holds.
SECTION_METHODS = {entry.section: name for name, entry in reversed(METHODS.items())
                   if entry.section is not None}


def unused_sections(config: Config) -> list[str]:
  """The method sections that ``config.optimizer.name`` does not read."""
  used = method(config.optimizer.name).section
  return [name for name in SECTION_METHODS if name != used]


def _non_finite_number(config: Config) -> tuple[str, float] | None:
  """The first float field (``key``, value) of ``config`` that is NaN or infinite."""
  def fields(obj, prefix):
    for field in dataclasses.fields(obj):
      value = getattr(obj, field.name)
      if dataclasses.is_dataclass(value):
        yield from fields(value, f"{field.name}.")
      elif isinstance(value, tuple):
        yield from ((f"{prefix}{field.name}", v) for v in value)
      else:
        yield f"{prefix}{field.name}", value

  for key, value in fields(config, ""):
    if isinstance(value, float) and not math.isfinite(value):
      return key, value
  return None


def validate(config: Config, *, device_count: int | None = None) -> Config:
  """Checks ``config``; raises :class:`ConfigError` naming the first bad key. Returns it.

  The method's own options are checked by building its transform (the transforms' checks,
  reported with the config key).
  """
  d, n, m, o, s = config.data, config.noise, config.model, config.optimizer, config.schedule
  bad = _non_finite_number(config)
  if bad is not None:
    raise ConfigError(f"{bad[0]} must be a finite number; got {bad[1]!r}.")
  _check(_known_dataset(d.name), "data.name", f"one of {', '.join(DATASETS)}", d.name)
  for key, value in (("data.train_examples", d.train_examples),
                     ("data.test_examples", d.test_examples),
                     ("train_eval_examples", config.train_eval_examples)):
    _check(value is None or value >= 1, key, "a positive integer or none", value)
  _check(n.kind in NOISE_KINDS, "noise.kind", f"one of {', '.join(NOISE_KINDS)}", n.kind)
  _check(0.0 <= n.rate < 1.0, "noise.rate", "in [0, 1)", n.rate)
  _check(n.kind in ("none", "file") or n.rate > 0, "noise.rate",
         f"> 0 for noise.kind={n.kind}", n.rate)
  _check(n.kind != "none" or n.rate == 0.0, "noise.rate", "0 when noise.kind=none (set "
         "noise.kind)", n.rate)
  _check(n.kind != "file" or bool(n.file), "noise.file", "a path when noise.kind=file", n.file)
  _check(n.mapping in ("next_class", "cifar10"), "noise.mapping", "next_class or cifar10",
         n.mapping)
  _check(m.name in MODELS, "model.name", f"one of {', '.join(MODELS)}", m.name)
  _check(m.dtype in DTYPES, "model.dtype", "float32 or bfloat16" + (
      " (float16 needs loss scaling to train without underflow, which samx does not do; "
      "bfloat16 has float32's range and needs none)" if m.dtype == "float16" else ""), m.dtype)
  _check(d.prefetch >= 0, "data.prefetch", ">= 0", d.prefetch)
  _check(m.width > 0, "model.width", "> 0", m.width)
  _check(_positive_sizes(m.hidden), "model.hidden", "a non-empty list of positive sizes",
         m.hidden)
  _check(m.patch_size >= 1, "model.patch_size", ">= 1", m.patch_size)
  _check(m.mlp_dim >= 1, "model.mlp_dim", ">= 1", m.mlp_dim)
  _check(m.pooling in VIT_POOLINGS, "model.pooling", " or ".join(VIT_POOLINGS), m.pooling)
  if m.name == "vit":
    _check(m.depth >= 1, "model.depth", ">= 1 (encoder blocks)", m.depth)
    _check(m.heads >= 1 and m.hidden[0] % m.heads == 0, "model.heads",
           f">= 1 and dividing model.hidden[0] = {m.hidden[0]}", m.heads)
  else:
    _check(m.depth >= 10 and (m.depth - 4) % 6 == 0, "model.depth", "6k + 4 with k >= 1",
           m.depth)
  _check(m.widen_factor >= 1, "model.widen_factor", ">= 1", m.widen_factor)
  _check(m.filters_per_sign >= 1, "model.filters_per_sign", ">= 1", m.filters_per_sign)
  _check(o.name in METHODS, "optimizer.name",
         f"one of {', '.join(METHODS)} (or penalty: sgd with the penalty section)", o.name)
  _check(o.perturb in PERTURB_CHOICES, "optimizer.perturb",
         f"one of {', '.join(PERTURB_CHOICES)}", o.perturb)
  _check(o.adaptive_mask in ADAPTIVE_MASK_CHOICES, "optimizer.adaptive_mask",
         f"one of {', '.join(ADAPTIVE_MASK_CHOICES)}", o.adaptive_mask)
  _check(o.perturbed_statistics in PERTURBED_STATISTICS_CHOICES, "optimizer.perturbed_statistics",
         f"one of {', '.join(PERTURBED_STATISTICS_CHOICES)}", o.perturbed_statistics)
  shared = {**o.shared_options(), **mask_options(o.name, o.perturb, o.adaptive_mask)}
  steps = Steps(per_epoch=1, total=max(config.epochs, 1))
  transform = build_transform(o.name, shared, method_section(config), steps)
  neutral = OptimizerConfig().shared_options()  # the section's own values alone are checked
  for name in unused_sections(config):  # checked too: a bad value is refused wherever it is
    try:
      build_transform(SECTION_METHODS[name], neutral, getattr(config, name), steps)
    except ConfigError as error:
      raise ConfigError(str(error).replace(f"(optimizer.name={SECTION_METHODS[name]})", (
          f"(in the {name} section, which optimizer.name={o.name} does not use)"))) from None
  _check(config.penalty.feature_coef >= 0, "penalty.feature_coef", ">= 0",
         config.penalty.feature_coef)
  _check(config.penalty.weight_coef >= 0, "penalty.weight_coef", ">= 0",
         config.penalty.weight_coef)
  _check(o.base in BASE_OPTIMIZERS, "optimizer.base", f"one of {', '.join(BASE_OPTIMIZERS)}",
         o.base)
  _check(o.learning_rate > 0, "optimizer.learning_rate", "> 0", o.learning_rate)
  _check(o.rho_min is None or (math.isfinite(o.rho_min) and 0 <= o.rho_min <= o.rho),
         "optimizer.rho_min", f"null or a number in [0, optimizer.rho = {o.rho}]", o.rho_min)
  _check(0 <= o.momentum < 1, "optimizer.momentum", "in [0, 1)", o.momentum)
  _check(o.weight_decay >= 0, "optimizer.weight_decay", ">= 0", o.weight_decay)
  _check(o.skip_nonfinite >= 0, "optimizer.skip_nonfinite", ">= 0", o.skip_nonfinite)
  _check(s.kind in SCHEDULES, "schedule.kind", f"one of {', '.join(SCHEDULES)}", s.kind)
  _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", ">= 0", s.warmup_epochs)
  _check(all(0 < b < 1 for b in s.boundaries) and list(s.boundaries) == sorted(s.boundaries),
         "schedule.boundaries", "increasing fractions of the run in (0, 1)", s.boundaries)
  _check(0 < s.decay <= 1, "schedule.decay", "in (0, 1]", s.decay)
  _check(config.epochs >= 1, "epochs", ">= 1", config.epochs)
  _check(0 <= config.seed < 2**31, "seed", "an integer in [0, 2^31)", config.seed)
  _check(n.seed is None or 0 <= n.seed < 2**31, "noise.seed", "an integer in [0, 2^31) or none",
         n.seed)
  _check(config.batch_size >= 1, "batch_size", ">= 1", config.batch_size)
  _check(config.eval_batch_size >= 1, "eval_batch_size", ">= 1", config.eval_batch_size)
  _check(config.eval_every >= 1, "eval_every", ">= 1", config.eval_every)
  _check(config.checkpoint_every >= 0, "checkpoint_every", ">= 0", config.checkpoint_every)
  _check(config.checkpoint_every_steps >= 0, "checkpoint_every_steps", ">= 0",
         config.checkpoint_every_steps)
  _check(config.checkpoint_every_minutes >= 0, "checkpoint_every_minutes", ">= 0",
         config.checkpoint_every_minutes)
  _check(config.keep_checkpoints >= 1, "keep_checkpoints", ">= 1", config.keep_checkpoints)
  _check(config.devices is None or config.devices >= 1, "devices", "a positive integer or none",
         config.devices)
  _check(config.sharding.fsdp >= 1, "sharding.fsdp", ">= 1", config.sharding.fsdp)
  _check(config.sharding.min_elements >= 1, "sharding.min_elements", ">= 1",
         config.sharding.min_elements)
  if device_count is not None:
    _check(config.devices is None or config.devices <= device_count, "devices",
           f"at most the {device_count} available devices", config.devices)
    used = device_count if config.devices is None else config.devices
    _check(config.batch_size % used == 0, "batch_size", f"divisible by the {used} devices",
           config.batch_size)
    _check(config.eval_batch_size % used == 0, "eval_batch_size",
           f"divisible by the {used} devices", config.eval_batch_size)
    _check(used % config.sharding.fsdp == 0, "sharding.fsdp",
           f"a divisor of the {used} devices", config.sharding.fsdp)
  if o.group_size is not None and transform is not None:
    _check(config.batch_size % o.group_size == 0, "optimizer.group_size",
           f"a divisor of batch_size={config.batch_size}", o.group_size)
  return config
