"""The compiled pieces of a run: the device mesh, the model definition, the optax chain and the
jit-compiled step, initialisation and evaluation functions.

The global batch is split over every device of the mesh (axes ``data`` and ``fsdp``); the state
is replicated, or with ``sharding.fsdp`` split over the ``fsdp`` axis (``samx.train.sharding``),
so the same code runs on one CPU, several GPUs or a TPU pod slice (one process per host, after
:func:`jax.distributed.initialize`); XLA inserts the collectives, and a SAM-family transform sees
the gradient of the whole global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from samx import models
from samx.train.architectures import build_model
from samx.train.config import Config, validate
from samx.train.errors import ConfigError
from samx.train.evaluation import EvalSums, Evaluator, make_eval_sums, train_eval_subset
from samx.train.methods import mask_options, method
from samx.train.optimizer import build_optimizer, learning_rate_schedule
from samx.train.sharding import BATCH_AXES, make_mesh, state_shardings
from samx.train.step import Batch, Normalization, TrainState, make_train_step, prepare_inputs
from samx.train.training_data import TrainingData, load_data

BATCH_AXIS = BATCH_AXES  # the batch is split over every axis of the mesh
MAX_STEPS = 2**31 - 1  # the step counters of the state and of optax are int32


class TrainStep(Protocol):
  """The jitted training step: ``(state, batch) -> (state, metrics)``, or lowered (and then
  compiled) ahead of time."""

  def __call__(self, state: TrainState, batch: Batch, /
               ) -> tuple[TrainState, dict[str, jax.Array]]: ...

  def lower(self, state: TrainState, batch: Batch, /) -> jax.stages.Lowered: ...


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The compiled pieces of a run, built by :func:`make_trainer`; :func:`samx.train.run`
  drives them. Exposed for notebooks and benchmarks that time or call the step themselves.
  """

  config: Config
  data: TrainingData
  mesh: Mesh
  graphdef: nnx.GraphDef
  eval_graphdef: nnx.GraphDef
  tx: optax.GradientTransformationExtraArgs
  steps_per_epoch: int
  learning_rate: optax.Schedule
  init: Callable[[], TrainState]
  train_step: TrainStep
  eval_sums: EvalSums
  state_sharding: TrainState  # a NamedSharding per leaf (samx.train.sharding)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.config.epochs

  @property
  def normalization(self) -> Normalization:
    return Normalization(self.data.mean, self.data.std)

  def preprocess(self, inputs: jax.Array) -> jax.Array:
    """Inputs as the model sees them at evaluation (uint8 images normalised, no augmentation)."""
    return prepare_inputs(jnp.asarray(inputs), self.normalization)

  def eval_model(self, state: TrainState) -> nnx.Module:
    """The model of ``state`` in evaluation mode (BatchNorm with its running statistics), e.g.
    for ``model.features(trainer.preprocess(images))`` in a linear probe."""
    return nnx.merge(self.eval_graphdef, state.params, state.model_state, copy=True)

  def evaluator(self) -> Evaluator:
    """The run's fixed evaluation sets: the test split and (a subset of) the training split."""
    train = train_eval_subset(self.data.train, self.config.train_eval_examples, self.config.seed)
    return Evaluator(self.eval_sums, self.mesh, BATCH_AXIS,
                     {"test": self.data.test, "train": train}, self.config.eval_batch_size)


def check_perturbed_parameters(config: Config, model: nnx.Module) -> None:
  """Raises a :class:`ConfigError` if the method perturbs the normalization layers
  (``optimizer.perturb=normalization``, ``sam_on``) and ``model`` has none."""
  o = config.optimizer
  masks = mask_options(o.name, o.perturb, o.adaptive_mask, model)
  if masks["perturb_mask"] is not None and not any(jax.tree.leaves(masks["perturb_mask"])):
    raise ConfigError(
        f"optimizer.name={o.name} with perturb=normalization perturbs only normalization layers, "
        f"and model.name={config.model.name} has none: every step would be SGD at SAM's cost. "
        "Use a model with normalization layers (resnet18, resnet34, preact_resnet18, "
        "wide_resnet: BatchNorm; vit: LayerNorm) or optimizer.perturb=all.")


def make_trainer(config: Config, data: TrainingData | None = None) -> Trainer:
  """Checks ``config``, loads the data and builds the jit-compiled step functions."""
  devices = jax.devices()
  validate(config, device_count=len(devices))
  data = load_data(config) if data is None else data
  train_size = len(data.train["label"])
  steps_per_epoch = train_size // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"batch_size must be at most the {train_size} training examples; got "
                      f"{config.batch_size}.")
  if steps_per_epoch * config.epochs > MAX_STEPS:
    raise ConfigError(f"epochs={config.epochs} makes {steps_per_epoch * config.epochs:,} steps "
                      f"({steps_per_epoch} per epoch), more than the {MAX_STEPS:,} that the "
                      f"step counters (int32) hold; train fewer epochs.")
  used = devices if config.devices is None else devices[:config.devices]
  mesh = make_mesh(used, config.sharding.fsdp)
  replicated = NamedSharding(mesh, PartitionSpec())

  def new_model() -> nnx.Module:
    return build_model(config.model, data.input_shape, data.num_classes, seed=config.seed)

  abstract_model = nnx.eval_shape(new_model)
  graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
  fixed_graphdef, _, _ = nnx.split(models.normalizing_with(abstract_model), nnx.Param, ...)
  # Without BatchNorm every choice of optimizer.perturbed_statistics is the same function.
  has_batch_norm = bool(jax.tree.leaves(nnx.state(abstract_model, nnx.BatchStat)))
  abstract_model.eval()
  eval_graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
  if config.penalty.active and not hasattr(abstract_model, "features"):
    raise ConfigError(f"the penalty section needs a model with features() and head; "
                      f"model.name={config.model.name} has none.")

  learning_rate = learning_rate_schedule(config.optimizer, config.schedule,
                                         steps_per_epoch * config.epochs, steps_per_epoch)
  check_perturbed_parameters(config, abstract_model)
  tx = build_optimizer(config, learning_rate, steps_per_epoch, model=abstract_model)
  normalization = Normalization(data.mean, data.std)

  def init() -> TrainState:
    _, params, model_state = nnx.split(new_model(), nnx.Param, ...)
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params))

  state_sharding = state_shardings(jax.eval_shape(init), mesh, config.sharding.min_elements)
  train_step = make_train_step(
      graphdef, tx, method(config.optimizer.name), penalty=config.penalty,
      normalization=normalization, augment=config.data.augment, seed=config.seed,
      skips_nonfinite=config.optimizer.skip_nonfinite > 0,
      statistics=config.optimizer.statistics if has_batch_norm else "group",
      fixed_graphdef=fixed_graphdef)
  return Trainer(
      config=config, data=data, mesh=mesh, graphdef=graphdef, eval_graphdef=eval_graphdef,
      tx=tx, steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
      init=jax.jit(init, out_shardings=state_sharding),
      train_step=jax.jit(train_step, out_shardings=(state_sharding, replicated),
                         donate_argnums=0),
      eval_sums=jax.jit(make_eval_sums(eval_graphdef, normalization),
                        out_shardings=replicated),
      state_sharding=state_sharding)
