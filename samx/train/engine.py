"""The training engine: jit-compiled steps, data parallel over a device mesh, per-epoch metrics
that separate clean from noisy training examples, checkpoints and exact resume.

The training step is a pure function ``(TrainState, batch) -> (TrainState, step metrics)``
compiled once. The parameters are replicated and the global batch is sharded along the mesh's
``data`` axis, so the same code runs on one CPU, several GPUs or a TPU pod slice (one process
per host, after :func:`jax.distributed.initialize`); XLA inserts the cross-device reductions,
and a SAM-family transform sees the gradient of the whole global batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import samx
from samx.data import pipeline
from samx.penalties import feature_and_weight_penalty
from samx.train import checkpoints
from samx.train.config import Config, ConfigError, to_dict, validate
from samx.train.data import TrainingData, load_data
from samx.train.models import build_model
from samx.train.optimizers import build_optimizer, learning_rate_schedule
from samx.train.progress import ProgressBar, TensorBoardWriter

BATCH_AXIS = "data"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


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


class RunResult(NamedTuple):
  """What :func:`run` returns: the per-epoch metrics, the summary and the final state."""

  history: list[dict[str, Any]]
  summary: dict[str, Any]
  state: TrainState
  config: Config
  run_dir: pathlib.Path | None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _saner_group_fractions(opt_state: optax.OptState) -> samx.GroupFractions | None:
  is_saner = lambda node: isinstance(node, samx.SANERState)  # noqa: E731
  for node in jax.tree.leaves(opt_state, is_leaf=is_saner):
    if is_saner(node):
      return node.group_fractions
  return None


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The compiled pieces of a run: mesh, model definition, optimizer and the step functions.

  Built by :func:`make_trainer`; :func:`run` drives it. Exposed for notebooks and benchmarks
  that want to time or call the step themselves.
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
  train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]
  eval_sums: Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.config.epochs

  def preprocess(self, inputs: jax.Array) -> jax.Array:
    """Inputs as the model sees them at evaluation (uint8 images normalised, no augmentation)."""
    return _prepare_inputs(jnp.asarray(inputs), None, self.data, False)

  def eval_model(self, state: TrainState) -> nnx.Module:
    """The model of ``state`` in evaluation mode (BatchNorm with its running statistics), e.g.
    for ``model.features(trainer.preprocess(images))`` in a linear probe."""
    return nnx.merge(self.eval_graphdef, state.params, state.model_state, copy=True)


def _prepare_inputs(inputs: jax.Array, key: jax.Array | None, data: TrainingData,
                    augment: bool) -> jax.Array:
  if data.mean is None:
    return inputs.astype(jnp.float32)
  if augment and key is not None:
    return pipeline.augment(key, inputs, crop_padding=4, flip=True, mean=data.mean, std=data.std)
  return pipeline.normalize(inputs, data.mean, data.std)


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
  used = devices if config.devices is None else devices[:config.devices]
  mesh = Mesh(np.asarray(used), (BATCH_AXIS,))
  replicated = NamedSharding(mesh, PartitionSpec())

  def new_model() -> nnx.Module:
    return build_model(config.model, data.input_shape, data.num_classes, seed=config.seed)

  abstract_model = nnx.eval_shape(new_model)
  graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
  abstract_model.eval()
  eval_graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
  if config.optimizer.name == "penalty" and not hasattr(abstract_model, "features"):
    raise ConfigError(f"optimizer.name=penalty needs a model with features() and head; "
                      f"model.name={config.model.name} has none.")

  total_steps = steps_per_epoch * config.epochs
  tx = build_optimizer(config.optimizer, config.schedule, total_steps=total_steps,
                       steps_per_epoch=steps_per_epoch)
  learning_rate = learning_rate_schedule(config.optimizer, config.schedule, total_steps,
                                         steps_per_epoch)
  o = config.optimizer
  uses_outputs = o.name == "jsam"
  penalty = o.name == "penalty"
  base_key = jax.random.key(config.seed)

  def init() -> TrainState:
    _, params, model_state = nnx.split(new_model(), nnx.Param, ...)
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params))

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    key = jax.random.fold_in(base_key, state.step)
    inputs = _prepare_inputs(batch["input"], key, data, config.data.augment)
    labels = batch["label"]

    def clean_loss(params):
      model = nnx.merge(graphdef, params, state.model_state, copy=True)
      features = model.features(inputs)
      logits = model.head(features)
      loss = jnp.mean(cross_entropy(logits, labels))
      if penalty:
        loss = loss + feature_and_weight_penalty(
            features, model.head.kernel[...], feature_coef=o.feature_coef,
            weight_coef=o.weight_coef)
      _, _, model_state = nnx.split(model, nnx.Param, ...)
      return loss, (logits, model_state)

    (loss, (logits, model_state)), grads = jax.value_and_grad(clean_loss, has_aux=True)(
        state.params)
    frozen = state.model_state

    def apply_fn(params, x):  # the perturbed passes: batch statistics, no writes
      return nnx.merge(graphdef, params, frozen, copy=True)(x)

    objective = samx.Objective(apply_fn, cross_entropy, inputs, labels,
                               outputs=logits if uses_outputs else None)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, objective=objective)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels).astype(jnp.float32)}
    fractions = _saner_group_fractions(opt_state)
    if fractions is not None:
      metrics.update(saner_group_a=fractions.a, saner_group_b=fractions.b,
                     saner_group_c=fractions.c)
    return TrainState(state.step + 1, params, model_state, opt_state), metrics

  def eval_sums(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    model = nnx.merge(eval_graphdef, state.params, state.model_state, copy=True)
    logits = model(_prepare_inputs(batch["input"], None, data, False))
    predictions = jnp.argmax(logits, -1)
    weight = batch["weight"].astype(jnp.float32)
    noisy = batch["noisy"].astype(jnp.float32) * weight
    clean = weight - noisy
    fits_given = (predictions == batch["label"]).astype(jnp.float32)
    fits_true = (predictions == batch["clean_label"]).astype(jnp.float32)
    return {"count": weight.sum(), "loss": (cross_entropy(logits, batch["label"]) * weight).sum(),
            "correct": (fits_given * weight).sum(),
            "clean_count": clean.sum(), "clean_correct": (fits_given * clean).sum(),
            "noisy_count": noisy.sum(), "noisy_fits_given": (fits_given * noisy).sum(),
            "noisy_fits_true": (fits_true * noisy).sum()}

  return Trainer(
      config=config, data=data, mesh=mesh, graphdef=graphdef, eval_graphdef=eval_graphdef,
      tx=tx, steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
      init=jax.jit(init, out_shardings=replicated),
      train_step=jax.jit(train_step, out_shardings=replicated, donate_argnums=0),
      eval_sums=jax.jit(eval_sums, out_shardings=replicated))


# ---------------------------------------------------------------------------------------------
# Evaluation.


def _eval_arrays(arrays: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """``arrays`` padded to a multiple of ``batch_size`` with ``weight`` 0 on the padding."""
  n = len(arrays["label"])
  padded = math.ceil(n / batch_size) * batch_size
  out = {}
  for name in ("input", "label", "clean_label", "noisy"):
    source = arrays.get(name, arrays["label"] if name == "clean_label" else
                        np.zeros(n, bool) if name == "noisy" else None)
    pad = np.zeros((padded - n, *source.shape[1:]), source.dtype)
    out[name] = np.concatenate([source, pad])
  out["weight"] = np.concatenate([np.ones(n, np.float32), np.zeros(padded - n, np.float32)])
  return out


class Evaluator:
  """Fixed evaluation sets (the test split and a fixed subset of the training split)."""

  def __init__(self, trainer: Trainer):
    config, data = trainer.config, trainer.data
    devices = trainer.mesh.size
    train = data.train
    if config.train_eval_examples is not None and config.train_eval_examples < len(
        train["label"]):
      rows = np.sort(np.random.default_rng([config.seed, 3]).choice(
          len(train["label"]), config.train_eval_examples, replace=False))
      train = {name: array[rows] for name, array in train.items()}
    self._trainer = trainer
    self._sets = {}
    for name, arrays in (("test", data.test), ("train", train)):
      n = len(arrays["label"])
      batch = min(config.eval_batch_size, math.ceil(n / devices) * devices)
      batch = math.ceil(batch / (devices * jax.process_count())) * devices * jax.process_count()
      self._sets[name] = (_eval_arrays(arrays, batch), batch)

  def sums(self, state: TrainState, name: str) -> dict[str, float]:
    arrays, batch = self._sets[name]
    total = None
    for inputs in pipeline.batches(arrays, batch, seed=0, epoch=0, shuffle=False,
                                   mesh=self._trainer.mesh, batch_axis=BATCH_AXIS):
      sums = self._trainer.eval_sums(state, inputs)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return {k: float(v) for k, v in jax.device_get(total).items()}

  def metrics(self, state: TrainState) -> dict[str, float | None]:
    test, train = self.sums(state, "test"), self.sums(state, "train")

    def ratio(a, b):
      return a / b if b > 0 else None

    return {
        "test_accuracy": ratio(test["correct"], test["count"]),
        "test_loss": ratio(test["loss"], test["count"]),
        "train_loss": ratio(train["loss"], train["count"]),
        "train_accuracy": ratio(train["correct"], train["count"]),
        "train_clean_accuracy": ratio(train["clean_correct"], train["clean_count"]),
        "noisy_memorization": ratio(train["noisy_fits_given"], train["noisy_count"]),
        "noisy_true_label_accuracy": ratio(train["noisy_fits_true"], train["noisy_count"]),
    }


# ---------------------------------------------------------------------------------------------
# The loop.


def _is_writer() -> bool:
  return jax.process_index() == 0


def _read_history(run_dir: pathlib.Path, up_to_epoch: int) -> list[dict[str, Any]]:
  path = run_dir / METRICS_FILE
  if not path.exists():
    return []
  history = []
  for line in path.read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      if record["epoch"] <= up_to_epoch:
        history.append(record)
  return history


def load_run_config(run_dir: str | pathlib.Path) -> Config:
  """The resolved configuration a run directory was started with."""
  from samx.train.config import from_dict

  path = pathlib.Path(run_dir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a samx run directory.")
  return from_dict(json.loads(path.read_text()))


def parameter_count(state: TrainState) -> int:
  return int(sum(leaf.size for leaf in jax.tree.leaves(state.params)))


def run(
    config: Config,
    run_dir: str | pathlib.Path | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
    tensorboard: bool = False,
    log: Callable[[str], None] | None = print,
    data: TrainingData | None = None,
) -> RunResult:
  """Trains ``config`` and returns its metrics; writes them into ``run_dir`` if given.

  ``run_dir`` receives ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one
  JSON object per evaluated epoch), ``summary.json`` at the end, ``checkpoints/`` (orbax) and,
  with ``tensorboard=True``, ``tensorboard/``. With ``resume=True`` the run continues from
  the latest checkpoint in ``run_dir`` with the configuration stored there, and ends with the
  same metrics as an uninterrupted run.

  Per-epoch metrics: ``test_accuracy``/``test_loss``; on the training set (evaluation mode,
  all of it or ``train_eval_examples`` of it) ``train_accuracy`` (against the given labels),
  ``train_clean_accuracy`` (examples whose label is clean), ``noisy_memorization`` (noisy
  examples predicted as their given, wrong label) and ``noisy_true_label_accuracy`` (predicted
  as their true label); ``step_loss`` and ``step_accuracy`` averaged over the epoch's steps;
  SANER's group fractions averaged over the epoch (``saner_group_a/b/c``);
  ``best_test_accuracy`` and ``best_epoch`` so far; ``learning_rate``, ``epoch_seconds``,
  ``images_per_second`` and ``steps_per_second`` of the training steps.
  """
  say = (log if log is not None and _is_writer() else (lambda _: None))
  run_dir = None if run_dir is None else pathlib.Path(run_dir)
  if resume:
    if run_dir is None:
      raise ValueError("resume=True needs the run_dir of the run to continue.")
    config = load_run_config(run_dir)
  trainer = make_trainer(config, data)
  state = trainer.init()
  start_epoch, history = 0, []
  manager = None
  if run_dir is not None:
    if not resume and (run_dir / METRICS_FILE).exists():
      raise FileExistsError(f"{run_dir} already holds a run; continue it with resume "
                            f"(samx train --resume {run_dir}) or choose another run directory.")
    if _is_writer():
      run_dir.mkdir(parents=True, exist_ok=True)
      (run_dir / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2) + "\n")
    if config.checkpoint_every:
      manager = checkpoints.manager(run_dir, keep=config.keep_checkpoints)
    if resume:
      latest = None if manager is None else manager.latest_step()
      if latest is not None:
        state = checkpoints.restore(manager, latest, state)
        start_epoch = latest
      history = _read_history(run_dir, start_epoch)
      if _is_writer():
        (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
      say(f"resuming {run_dir} after epoch {start_epoch}")

  data = trainer.data
  say(f"{data.name}: {len(data.train['label'])} training examples ({data.noise_rate:.0%} noisy "
      f"labels), {len(data.test['label'])} test; {config.model.name} with "
      f"{parameter_count(state):,} parameters; {config.optimizer.name}; {trainer.mesh.size} "
      f"device(s), {jax.process_count()} process(es)")
  evaluator = Evaluator(trainer)
  step_arrays = {"input": data.train["input"], "label": data.train["label"]}
  writer = TensorBoardWriter(run_dir / "tensorboard") if (
      tensorboard and run_dir is not None and _is_writer()) else None
  bar = ProgressBar(config.epochs, trainer.steps_per_epoch, enabled=progress and _is_writer())

  first = next(pipeline.batches(step_arrays, config.batch_size, seed=config.seed, epoch=0,
                                mesh=trainer.mesh, batch_axis=BATCH_AXIS))
  started = time.perf_counter()
  step_fn = trainer.train_step.lower(state, first).compile()
  compile_seconds = time.perf_counter() - started
  best = max(history, key=lambda r: (r.get("test_accuracy") or -1.0), default=None)
  best_accuracy = None if best is None else best["test_accuracy"]
  best_epoch = None if best is None else best["epoch"]
  train_seconds = sum(r.get("epoch_seconds", 0.0) for r in history)

  for epoch in range(start_epoch, config.epochs):
    bar.start_epoch(epoch + 1)
    step_metrics = []
    started = time.perf_counter()
    for batch in pipeline.batches(step_arrays, config.batch_size, seed=config.seed,
                                  epoch=epoch, mesh=trainer.mesh, batch_axis=BATCH_AXIS):
      state, metrics = step_fn(state, batch)
      step_metrics.append(metrics)
      bar.update(metrics)
    step_metrics = jax.device_get(step_metrics)
    epoch_seconds = time.perf_counter() - started
    train_seconds += epoch_seconds
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": (epoch + 1) * trainer.steps_per_epoch,
        "learning_rate": float(trainer.learning_rate((epoch + 1) * trainer.steps_per_epoch - 1)),
    }
    for name in step_metrics[0]:
      record[("step_" + name) if name in ("loss", "accuracy") else name] = float(
          np.mean([m[name] for m in step_metrics]))
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
      record.update(evaluator.metrics(state))
      if best_accuracy is None or record["test_accuracy"] > best_accuracy:
        best_accuracy, best_epoch = record["test_accuracy"], epoch + 1
    record.update(best_test_accuracy=best_accuracy, best_epoch=best_epoch,
                  epoch_seconds=epoch_seconds,
                  images_per_second=trainer.steps_per_epoch * config.batch_size / epoch_seconds,
                  steps_per_second=trainer.steps_per_epoch / epoch_seconds)
    history.append(record)
    bar.end_epoch(record)
    if run_dir is not None and _is_writer():
      with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
      writer.write(record)
    if manager is not None and ((epoch + 1) % config.checkpoint_every == 0
                                or epoch + 1 == config.epochs):
      checkpoints.save(manager, epoch + 1, state)
    if not progress:
      say(_epoch_line(record, config.epochs))
  bar.close()
  if manager is not None:
    manager.wait_until_finished()
    manager.close()
  if writer is not None:
    writer.close()

  final = history[-1] if history else {}
  summary = {
      "dataset": data.name, "optimizer": config.optimizer.name, "model": config.model.name,
      "parameters": parameter_count(state), "noise_rate": data.noise_rate,
      "devices": trainer.mesh.size, "processes": jax.process_count(),
      "epochs": config.epochs, "steps": config.epochs * trainer.steps_per_epoch,
      "best_test_accuracy": best_accuracy, "best_epoch": best_epoch,
      "final_test_accuracy": final.get("test_accuracy"),
      "final_noisy_memorization": final.get("noisy_memorization"),
      "final_noisy_true_label_accuracy": final.get("noisy_true_label_accuracy"),
      "final_train_clean_accuracy": final.get("train_clean_accuracy"),
      "train_seconds": train_seconds, "compile_seconds": compile_seconds,
      "images_per_second": (config.epochs * trainer.steps_per_epoch * config.batch_size
                            / train_seconds) if train_seconds else None,
  }
  if run_dir is not None and _is_writer():
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
  return RunResult(history, summary, state, config, run_dir)


def _format(value: Any) -> str:
  return "-" if value is None else f"{value:.3f}"


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
  parts = [f"epoch {record['epoch']:>3}/{epochs}", f"loss {record['step_loss']:.3f}"]
  if "test_accuracy" in record:
    parts += [f"test {_format(record['test_accuracy'])}",
              f"clean-train {_format(record['train_clean_accuracy'])}",
              f"noisy memorized {_format(record['noisy_memorization'])}"]
  if "saner_group_b" in record:
    parts.append(f"group B {record['saner_group_b']:.3f}")
  parts.append(f"{record['images_per_second']:.0f} img/s")
  return "  ".join(parts)
