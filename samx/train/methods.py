"""The training methods in one place: each optimizer name, its own config section, how its samx
transform is built, and what it needs from the training step.

A method is one :class:`Method` entry in :data:`METHODS` plus, if it has options of its own, a
frozen dataclass for them (its config section, e.g. ``saner.alpha``). The options every
sharpness-aware method shares (``rho``, ``adaptive``, ``eta``, ``group_size``,
``groups_in_parallel``) live in the ``optimizer`` section and reach ``build`` as keyword
arguments ready for the transforms. Adding a method, say a new SAM variant ``foo`` with an
option ``beta``::

    @dataclasses.dataclass(frozen=True)
    class FooConfig:
      beta: float = 0.5

    METHODS["foo"] = Method(
        build=lambda shared, section, steps_per_epoch: samx.foo(**shared, beta=section.beta),
        section="foo", keys={"beta": "foo.beta"}, summary="...")

and a ``foo: FooConfig`` field in :class:`samx.train.Config`. Nothing else in the engine reads
the optimizer's name.

Argument checks are the transforms' own: building a method's transform with the configured
values raises :class:`samx.transforms.ArgumentError`, which :func:`check` turns into a
:class:`ConfigError` naming the config key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import optax

import samx
from samx.train.errors import ConfigError
from samx.transforms import ArgumentError

Transform = optax.GradientTransformationExtraArgs


@dataclasses.dataclass(frozen=True)
class SANERConfig:
  """SANER's own options (section ``saner``; Luong et al. 2024).

  Attributes:
    alpha: the final weight of group B (the paper: 0.5; 1 is SAM, > 1 amplifies group B).
    warmup_epochs: ``beta`` goes linearly from 1 to ``alpha`` over this many epochs (the
      paper: 50 of 200).
    gsam_alpha: take the groups on GSAM's gradient with this ``alpha`` (0: on SAM's).
  """

  alpha: float = 0.5
  warmup_epochs: float = 50.0
  gsam_alpha: float = 0.0


@dataclasses.dataclass(frozen=True)
class GSAMConfig:
  """GSAM's own options (section ``gsam``; Zhuang et al. 2022).

  Attributes:
    alpha: the weight of the surrogate-gap descent step (0 is SAM).
  """

  alpha: float = 0.1


Build = Callable[[dict[str, Any], Any, int], Transform | None]


class Method(NamedTuple):
  """How the engine trains with one optimizer name.

  Attributes:
    build: ``(shared, section, steps_per_epoch) -> transform`` (``None``: plain gradients).
      ``shared`` holds the sharpness-aware options as the transforms' keyword arguments
      (``rho``, ``adaptive``, ``eta``, ``group_size``, ``groups_in_parallel``); ``section`` is
      the method's own config section (``None`` if it has none).
    summary: one line for ``samx presets`` and the docs.
    section: the name of its config section, if it has one.
    keys: the config key of each transform argument that its section sets, for error messages.
    needs_clean_outputs: the step passes the clean pass's outputs to the transform
      (``samx.Objective(outputs=...)``), sparing it a forward pass (J-SAM).
    step_metrics: per-step metrics read from the optimizer state (SANER's group fractions).
  """

  build: Build
  summary: str
  section: str | None = None
  keys: Mapping[str, str] = {}
  needs_clean_outputs: bool = False
  step_metrics: Callable[[optax.OptState], dict[str, jax.Array]] | None = None


def _saner_warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
  if not warmup_epochs >= 0:
    raise ConfigError(f"saner.warmup_epochs must be >= 0; got {warmup_epochs!r}.")
  return max(1, round(warmup_epochs * steps_per_epoch))


def _saner(shared: dict[str, Any], section: SANERConfig, steps_per_epoch: int) -> Transform:
  return samx.saner(**shared, alpha=section.alpha, gsam_alpha=section.gsam_alpha,
                    warmup_steps=_saner_warmup_steps(section.warmup_epochs, steps_per_epoch))


def _saner_group_fractions(opt_state: optax.OptState) -> dict[str, jax.Array]:
  fractions = optax.tree_utils.tree_get(opt_state, "group_fractions")
  return {"saner_group_a": fractions.a, "saner_group_b": fractions.b,
          "saner_group_c": fractions.c}


METHODS: dict[str, Method] = {
    "sgd": Method(lambda shared, section, steps: None,
                  "plain gradients (no samx transform)"),
    "sam": Method(lambda shared, section, steps: samx.sam(**shared),
                  "SAM (Foret et al. 2021); m-sharpness with optimizer.group_size"),
    "asam": Method(lambda shared, section, steps: samx.sam(**{**shared, "adaptive": True}),
                   "ASAM (Kwon et al. 2021): SAM with adaptive=true"),
    "saner": Method(_saner, "SANER (Luong et al. 2024): SAM with group B down-weighted",
                    section="saner", step_metrics=_saner_group_fractions,
                    keys={"alpha": "saner.alpha", "warmup_steps": "saner.warmup_epochs",
                          "gsam_alpha": "saner.gsam_alpha"}),
    "gsam": Method(lambda shared, section, steps: samx.gsam(**shared, alpha=section.alpha),
                   "GSAM (Zhuang et al. 2022)", section="gsam", keys={"alpha": "gsam.alpha"}),
    "lsam": Method(lambda shared, section, steps: samx.logit_sam(**shared),
                   "L-SAM (Baek et al. 2024): only the logit term perturbed"),
    "jsam": Method(lambda shared, section, steps: samx.jacobian_sam(**shared),
                   "J-SAM (Baek et al. 2024): only the Jacobian perturbed",
                   needs_clean_outputs=True),
}

# The config key of each shared transform argument.
SHARED_KEYS = {"rho": "optimizer.rho", "adaptive": "optimizer.adaptive", "eta": "optimizer.eta",
               "group_size": "optimizer.group_size",
               "groups_in_parallel": "optimizer.groups_in_parallel"}


def method(name: str) -> Method:
  """The entry of ``name``; raises :class:`ConfigError` listing the known names."""
  if name not in METHODS:
    raise ConfigError(f"optimizer.name must be one of {', '.join(METHODS)} (or penalty, "
                      f"short for sgd with the penalty section set); got {name!r}.")
  return METHODS[name]


def build_transform(name: str, shared: dict[str, Any], section: Any, steps_per_epoch: int
                    ) -> Transform | None:
  """The samx transform of method ``name``; a bad argument raises :class:`ConfigError` naming
  its config key."""
  entry = method(name)
  try:
    return entry.build(shared, section, steps_per_epoch)
  except ArgumentError as error:  # the transform's own check, told in the config's terms
    keys = {**SHARED_KEYS, **entry.keys}
    if error.argument not in keys:
      raise
    message = str(error)
    for argument, key in keys.items():
      message = message.replace(f"`{argument}`", key)
    raise ConfigError(f"{message} (optimizer.name={name})") from error
