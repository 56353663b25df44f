"""The training methods in one place: each optimizer name, its own config section, how its samx
transform is built, and what it needs from the training step.

A method is one :class:`Method` entry in :data:`METHODS` plus, if it has options of its own, a
frozen dataclass for them (its config section, e.g. ``saner.alpha``). The options every
sharpness-aware method shares (``rho``, ``adaptive``, ``eta``, ``group_size``,
``groups_in_parallel``, and the masks that ``optimizer.perturb`` and ``optimizer.adaptive_mask``
name) live in the ``optimizer`` section and reach ``build`` as keyword arguments ready for the
transforms; ``steps`` gives the run's length (:class:`Steps`). Adding a method, say a new SAM
variant ``foo`` with an option ``beta``::

    @dataclasses.dataclass(frozen=True)
    class FooConfig:
      beta: float = 0.5

    METHODS["foo"] = Method(
        build=lambda shared, section, steps: samx.foo(**shared, beta=section.beta),
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
import samx.models
from samx.train.errors import ConfigError
from samx.transforms import ArgumentError

Transform = optax.GradientTransformationExtraArgs


@dataclasses.dataclass(frozen=True)
class SANERConfig:
  """SANER's own options (section ``saner``; Luong et al. 2024).

  Attributes:
    alpha: the final weight of group B (the paper: 0.5; 1 is SAM, > 1 amplifies group B).
    warmup_epochs: ``K``: ``beta`` is set once per epoch, ``1 - (1 - alpha) e / K`` in the
      1-based epoch ``e < K`` and ``alpha`` from epoch ``K`` on, as in the authors' code
      (:func:`samx.saner_beta_schedule`; the paper: 50 of 200). 0: ``alpha`` from the start.
    gsam_alpha: take the groups on GSAM's gradient with this ``alpha`` (0: on SAM's).
    combine_per_group: with ``optimizer.group_size``, take the groups in each group of
      examples before averaging (``samx.saner(combine_per_group=True)``).
  """

  alpha: float = 0.5
  warmup_epochs: float = 50.0
  gsam_alpha: float = 0.0
  combine_per_group: bool = False


@dataclasses.dataclass(frozen=True)
class GSAMConfig:
  """GSAM's own options (section ``gsam``; Zhuang et al. 2022).

  Attributes:
    alpha: the weight of the surrogate-gap descent step (0 is SAM).
    combine_per_group: with ``optimizer.group_size``, apply the rule to each group before
      averaging (big_vision's per-device GSAM with ``group_size`` = the per-device batch).
  """

  alpha: float = 0.1
  combine_per_group: bool = False


@dataclasses.dataclass(frozen=True)
class LookSAMConfig:
  """LookSAM's own options (section ``looksam``; Liu et al. 2022).

  Attributes:
    k: the second gradient is evaluated every ``k`` steps (the paper: 5).
    alpha: the weight of the reused direction on the other steps (the paper: 0.7).
  """

  k: int = 5
  alpha: float = 0.7


@dataclasses.dataclass(frozen=True)
class AESAMConfig:
  """AE-SAM's own options (section ``ae_sam``; Jiang et al. 2023). The threshold moves
  linearly from ``threshold_start`` to ``threshold_end`` over the whole run.

  Attributes:
    threshold_start: ``c_t`` at the first step (the paper's ``lambda_2``).
    threshold_end: ``c_t`` at the last step (the paper's ``lambda_1``).
    delta: the forgetting factor of the running mean and variance of ``||g||^2``.
  """

  threshold_start: float = 1.0
  threshold_end: float = -1.0
  delta: float = 0.9


class Steps(NamedTuple):
  """The run's length, for methods whose schedules are set in epochs or over the run.

  Attributes:
    per_epoch: optimizer steps per epoch.
    total: optimizer steps in the whole run.
  """

  per_epoch: int
  total: int


Build = Callable[[dict[str, Any], Any, Steps], Transform | None]


class Method(NamedTuple):
  """How the engine trains with one optimizer name.

  Attributes:
    build: ``(shared, section, steps) -> transform`` (``None``: plain gradients). ``shared``
      holds the sharpness-aware options as the transforms' keyword arguments (``rho``,
      ``adaptive``, ``eta``, ``group_size``, ``groups_in_parallel``, ``perturb_mask``,
      ``adaptive_mask``); ``section`` is the method's own config section (``None`` if it has
      none); ``steps`` is a :class:`Steps`.
    summary: one line for ``samx presets`` and the docs.
    section: the name of its config section, if it has one.
    keys: the config key of each transform argument that its section sets, for error messages.
    needs_clean_outputs: the step passes the clean pass's outputs to the transform
      (``samx.Objective(outputs=...)``), sparing it a forward pass (J-SAM).
    step_metrics: per-step metrics read from the optimizer state (SANER's group fractions);
      the engine logs their mean over each epoch.
    perturb: the parameters the method perturbs, overriding ``optimizer.perturb`` (SAM-ON:
      ``normalization``); ``None``: as configured.
  """

  build: Build
  summary: str
  section: str | None = None
  keys: Mapping[str, str] = {}
  needs_clean_outputs: bool = False
  step_metrics: Callable[[optax.OptState], dict[str, jax.Array]] | None = None
  perturb: str | None = None


def _saner(shared: dict[str, Any], section: SANERConfig, steps: Steps) -> Transform:
  beta = samx.saner_beta_schedule(section.alpha, section.warmup_epochs, steps.per_epoch)
  return samx.saner(**shared, beta_schedule=beta, gsam_alpha=section.gsam_alpha,
                    combine_per_group=section.combine_per_group)


def _gsam(shared: dict[str, Any], section: GSAMConfig, steps: Steps) -> Transform:
  return samx.gsam(**shared, alpha=section.alpha, combine_per_group=section.combine_per_group)


def _looksam(shared: dict[str, Any], section: LookSAMConfig, steps: Steps) -> Transform:
  return samx.looksam(**shared, k=section.k, alpha=section.alpha)


def _ae_sam(shared: dict[str, Any], section: AESAMConfig, steps: Steps) -> Transform:
  return samx.ae_sam(**shared, total_steps=steps.total, delta=section.delta,
                     threshold_start=section.threshold_start,
                     threshold_end=section.threshold_end)


def _ae_sam_step(opt_state: optax.OptState) -> dict[str, jax.Array]:
  was_sam = optax.tree_utils.tree_get(opt_state, "last_was_sam")
  return {"ae_sam_fraction": was_sam.astype(jax.numpy.float32)}


def _saner_group_fractions(opt_state: optax.OptState) -> dict[str, jax.Array]:
  fractions = optax.tree_utils.tree_get(opt_state, "group_fractions")
  return {"saner_group_a": fractions.a, "saner_group_b": fractions.b,
          "saner_group_c": fractions.c}


#: The optimizer names the engine knows (``optimizer.name``), each with how it builds its samx
#: transform, its own config section and what it needs from the step; ``samx methods`` lists
#: them.
METHODS: dict[str, Method] = {
    "sgd": Method(lambda shared, section, steps: None,
                  "plain gradients (no samx transform)"),
    "sam": Method(lambda shared, section, steps: samx.sam(**shared),
                  "SAM (Foret et al. 2021); m-sharpness with optimizer.group_size"),
    "asam": Method(lambda shared, section, steps: samx.sam(**{**shared, "adaptive": True}),
                   "ASAM (Kwon et al. 2021): SAM with adaptive=true"),
    "saner": Method(_saner, "SANER (Luong et al. 2024): SAM with group B down-weighted",
                    section="saner", step_metrics=_saner_group_fractions,
                    keys={"alpha": "saner.alpha", "warmup_epochs": "saner.warmup_epochs",
                          "gsam_alpha": "saner.gsam_alpha",
                          "combine_per_group": "saner.combine_per_group"}),
    "gsam": Method(_gsam, "GSAM (Zhuang et al. 2022)", section="gsam",
                   keys={"alpha": "gsam.alpha", "combine_per_group": "gsam.combine_per_group"}),
    "lsam": Method(lambda shared, section, steps: samx.logit_sam(**shared),
                   "L-SAM (Baek et al. 2024): only the logit term perturbed"),
    "jsam": Method(lambda shared, section, steps: samx.jacobian_sam(**shared),
                   "J-SAM (Baek et al. 2024): only the Jacobian perturbed",
                   needs_clean_outputs=True),
    "looksam": Method(_looksam, "LookSAM (Liu et al. 2022): SAM's second gradient every "
                      "looksam.k steps, its new direction reused in between", section="looksam",
                      keys={"k": "looksam.k", "alpha": "looksam.alpha"}),
    "ae_sam": Method(_ae_sam, "AE-SAM (Jiang et al. 2023): SAM on the steps where ||g||^2 is "
                     "large against its running mean and variance, SGD otherwise",
                     section="ae_sam", step_metrics=_ae_sam_step,
                     keys={"threshold_start": "ae_sam.threshold_start",
                           "threshold_end": "ae_sam.threshold_end", "delta": "ae_sam.delta"}),
    "sam_on": Method(lambda shared, section, steps: samx.sam(**shared),
                     "SAM-ON (Mueller et al. 2023): SAM perturbing only the normalization "
                     "layers (optimizer.perturb=normalization)", perturb="normalization"),
}

# The config key of each shared transform argument.
SHARED_KEYS = {"rho": "optimizer.rho", "adaptive": "optimizer.adaptive", "eta": "optimizer.eta",
               "group_size": "optimizer.group_size",
               "groups_in_parallel": "optimizer.groups_in_parallel",
               "group_path": "optimizer.group_path",
               "perturb_mask": "optimizer.perturb", "adaptive_mask": "optimizer.adaptive_mask"}


#: ``optimizer.perturb``: which parameters the sharpness-aware methods perturb.
PERTURB_CHOICES = ("all", "normalization")
#: ``optimizer.adaptive_mask``: which parameters ASAM scales by ``|w| + eta``.
ADAPTIVE_MASK_CHOICES = ("all", "weights")
#: ``optimizer.perturbed_statistics``: what BatchNorm normalises with in the perturbed passes.
PERTURBED_STATISTICS_CHOICES = ("auto", "group", "batch", "running")


def _needs_the_model(params: Any) -> Any:
  raise RuntimeError("optimizer.perturb=normalization is resolved against the model; build the "
                     "optimizer with build_optimizer(config, ..., model=model).")


def mask_options(name: str, perturb: str, adaptive_mask: str, model: Any = None
                 ) -> dict[str, Any]:
  """The transforms' ``perturb_mask`` and ``adaptive_mask`` for method ``name``.

  ``perturb``: ``all`` (``None``) or ``normalization`` (the model's normalization layers,
  :func:`samx.models.normalization_mask`; the method's own ``perturb`` overrides it, as SAM-ON's
  does). ``adaptive_mask``: ``all`` (``None``) or ``weights`` (every parameter but the biases,
  :func:`samx.models.weight_mask`, the ASAM authors' convention). Without ``model`` the
  normalization mask is a placeholder, enough to check the options.
  """
  perturb = method(name).perturb or perturb
  perturb_mask = None
  if perturb == "normalization":
    perturb_mask = _needs_the_model if model is None else samx.models.normalization_mask(model)
  return {"perturb_mask": perturb_mask,
          "adaptive_mask": samx.models.weight_mask if adaptive_mask == "weights" else None}


def method(name: str) -> Method:
  """The entry of ``name``; raises :class:`ConfigError` listing the known names."""
  if name not in METHODS:
    raise ConfigError(f"optimizer.name must be one of {', '.join(METHODS)} (or penalty, "
                      f"short for sgd with the penalty section set); got {name!r}.")
  return METHODS[name]


def build_transform(name: str, shared: dict[str, Any], section: Any, steps: Steps
                    ) -> Transform | None:
  """The samx transform of method ``name``; a bad argument raises :class:`ConfigError` naming
  its config key."""
  entry = method(name)
  try:
    return entry.build(shared, section, steps)
  except ArgumentError as error:  # the transform's own check, told in the config's terms
    keys = {**SHARED_KEYS, **entry.keys}
    if error.argument not in keys:
      raise
    message = str(error)
    for argument, key in keys.items():
      message = message.replace(f"`{argument}`", key)
    raise ConfigError(f"{message} (optimizer.name={name})") from error
