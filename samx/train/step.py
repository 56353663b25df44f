"""The training step: one pure, jit-compilable function ``(TrainState, batch) -> (TrainState,
metrics)``, and what it shares with evaluation (input preparation, the loss).

The clean pass at ``w`` computes the loss, its gradient and the new BatchNorm statistics; the
method's samx transform (first in the optax chain) gets that gradient and a
:class:`samx.Objective` whose passes write nothing and normalise as
``optimizer.perturbed_statistics`` says (:data:`PERTURBED_STATISTICS`): with each group's own
batch statistics, with the clean pass's (held fixed) or with the running averages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import samx
from samx import models
from samx.data import pipeline
from samx.penalties import per_example_feature_and_weight_penalty
from samx.train.config import PenaltyConfig
from samx.train.methods import Method
from samx.train.optimizer import all_finite

PyTree = Any
Batch = dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything a step changes.

  Attributes:
    step: the number of steps taken (int32 scalar).
    params: the model's ``nnx.Param`` variables (what the optimizer updates).
    model_state: the other variables (BatchNorm statistics), updated by the clean pass only.
    opt_state: the optax chain's state.
  """

  step: jax.Array
  params: nnx.State
  model_state: nnx.State
  opt_state: optax.OptState


class Normalization(NamedTuple):
  """Per-channel statistics of uint8 images (``None`` for float inputs, used as they are)."""

  mean: np.ndarray | None
  std: np.ndarray | None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def prepare_inputs(inputs: jax.Array, normalization: Normalization,
                   augment_key: jax.Array | None = None) -> jax.Array:
  """Inputs as the model sees them: uint8 images normalised (and, with ``augment_key``,
  randomly cropped and flipped); float inputs as they are."""
  mean, std = normalization  # both or neither
  if mean is None or std is None:
    return inputs.astype(jnp.float32)
  if augment_key is not None:
    return pipeline.augment(augment_key, inputs, crop_padding=4, flip=True, mean=mean, std=std)
  return pipeline.normalize(inputs, mean, std)


def logits_of(outputs: PyTree) -> jax.Array:
  """The logits among a model's training outputs (see :func:`training_outputs`)."""
  return outputs["logits"] if isinstance(outputs, dict) else outputs


class Head(Protocol):
  """A model's last layer: a linear map of the features to the logits (``nnx.Linear``, or
  ``samx.models.small.FixedHead`` when it is not trained)."""

  @property
  def kernel(self) -> nnx.Variable: ...

  def __call__(self, features: jax.Array, /) -> jax.Array: ...


class FeaturesAndHead(Protocol):
  """A model as the step uses it (every ``samx.models`` model): ``features(x)``, the
  penultimate features, and ``head``, the last layer, with ``model(x) == head(features(x))``."""

  def features(self, x: jax.Array, /) -> jax.Array: ...

  @property
  def head(self) -> Head: ...


def training_outputs(model: FeaturesAndHead, inputs: jax.Array, penalty: PenaltyConfig
                     ) -> PyTree:
  """What the loss needs from the model: the logits (float32 whatever the compute dtype), and
  with the penalty on, also the penultimate features (in float32) and the last layer's squared
  norm (repeated per example, so that every
  output has the batch on axis 0 and m-sharpness can split it)."""
  features = model.features(inputs)
  logits = model.head(features)
  if not penalty.active:
    return logits
  kernel_norm = jnp.sum(jnp.square(model.head.kernel[...]))
  return {"logits": logits, "features": features.astype(jnp.float32),
          "kernel_sq_norm": jnp.broadcast_to(kernel_norm, logits.shape[:1])}


def per_example_loss_fn(penalty: PenaltyConfig) -> Callable[[PyTree, jax.Array], jax.Array]:
  """``(outputs, labels) -> losses (batch,)``: cross-entropy, plus the penalty if it is on."""

  def losses(outputs: PyTree, labels: jax.Array) -> jax.Array:
    loss = cross_entropy(logits_of(outputs), labels)
    if penalty.active:
      loss = loss + per_example_feature_and_weight_penalty(
          outputs["features"], outputs["kernel_sq_norm"], feature_coef=penalty.feature_coef,
          weight_coef=penalty.weight_coef)
    return loss

  return losses


#: What BatchNorm normalises with in the samx transform's passes (see
#: :class:`samx.train.config.OptimizerConfig`): ``group``, each group's (or at ``w + eps`` the
#: whole batch's) own statistics; ``batch``, the clean pass's at ``w``; ``running``, the running
#: averages of the state before the step.
PERTURBED_STATISTICS = ("group", "batch", "running")


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformationExtraArgs, method: Method, *,
    penalty: PenaltyConfig, normalization: Normalization, augment: bool, seed: int,
    skips_nonfinite: bool = False, statistics: str = "group",
    fixed_graphdef: nnx.GraphDef | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The training step of a model (``graphdef``), an optax chain and a method.

  ``statistics`` (one of :data:`PERTURBED_STATISTICS`) is what BatchNorm normalises with in the
  transform's passes; ``batch`` and ``running`` need ``fixed_graphdef``, the model with its
  BatchNorm layers normalising with fixed statistics (:func:`samx.models.normalizing_with`),
  and make the objective a surrogate (``samx.Objective.surrogate``): the update is the clean
  gradient plus the change the perturbation makes in the fixed-statistics gradient, so the
  statistics' own gradient (which fixed statistics leave out) stays in it.

  The batch holds ``input`` and ``label``. The step's metrics are the clean pass's ``loss``
  and ``accuracy``, the method's own (e.g. SANER's group fractions) and ``nonfinite``: 1.0
  where the new parameters are not all finite, or (unless ``skips_nonfinite``: the chain is in
  ``optax.apply_if_finite``, and ``skipped`` says which steps it skipped) where the loss is not
  finite. The loop reads these flags with the other metrics, with no extra host sync.
  Augmentation draws from ``seed`` and the step count, so a resumed run sees the same crops and
  flips.
  """
  if statistics not in PERTURBED_STATISTICS:
    raise ValueError(f"statistics must be one of {', '.join(PERTURBED_STATISTICS)}; got "
                     f"{statistics!r}.")
  # The model of the transform's passes: in training mode, or normalising with fixed statistics.
  if statistics == "group":
    passes_graphdef = graphdef
  elif fixed_graphdef is None:
    raise ValueError(f"statistics={statistics!r} needs fixed_graphdef.")
  else:
    passes_graphdef = fixed_graphdef
  base_key = jax.random.key(seed)
  loss_fn = per_example_loss_fn(penalty)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    key = jax.random.fold_in(base_key, state.step) if augment else None
    inputs = prepare_inputs(batch["input"], normalization, key)
    labels = batch["label"]

    def clean_loss(params):
      model = nnx.merge(graphdef, params, state.model_state, copy=True)
      if statistics == "batch":
        outputs, batch_stats = models.batch_statistics(
            model, lambda m: training_outputs(m, inputs, penalty))
      else:
        outputs, batch_stats = training_outputs(model, inputs, penalty), None
      _, _, model_state = nnx.split(model, nnx.Param, ...)
      return jnp.mean(loss_fn(outputs, labels)), (outputs, model_state, batch_stats)

    (loss, (outputs, model_state, batch_stats)), grads = jax.value_and_grad(
        clean_loss, has_aux=True)(state.params)
    frozen = state.model_state
    if batch_stats is not None:
      batch_stats = jax.lax.stop_gradient(batch_stats)

    def apply_fn(params, x):  # the transform's passes: no writes
      # group: training mode, the statistics of the examples passed; else fixed statistics
      model = nnx.merge(passes_graphdef, params, frozen, copy=True)
      if batch_stats is not None:  # statistics == "batch": the clean pass's
        nnx.update(model, batch_stats)
      return training_outputs(model, x, penalty)

    objective = samx.Objective(apply_fn, loss_fn, inputs, labels,
                               outputs=outputs if method.needs_clean_outputs else None,
                               surrogate=statistics != "group")
    updates, opt_state = tx.update(grads, state.opt_state, state.params, objective=objective)
    # The same tree as state.params (optax types it as any tree of arrays).
    params = cast(nnx.State, optax.apply_updates(state.params, updates))
    logits = logits_of(outputs)
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels).astype(jnp.float32)}
    if method.step_metrics is not None:
      metrics.update(method.step_metrics(opt_state))
    bad = ~all_finite(params)
    if skips_nonfinite:
      metrics["skipped"] = 1.0 - optax.tree_utils.tree_get(opt_state, "last_finite").astype(
          jnp.float32)
    else:
      bad = bad | ~jnp.isfinite(loss)
    metrics["nonfinite"] = bad.astype(jnp.float32)
    return TrainState(state.step + 1, params, model_state, opt_state), metrics

  return train_step
