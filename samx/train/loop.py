"""The training loop: epochs of compiled steps, evaluation, the best epoch, checkpoints and
exact resume."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from samx.data import pipeline
from samx.train import checkpoints
from samx.train.config import Config
from samx.train.progress import ProgressBar, epoch_line
from samx.train.run_dir import RunDirectory, is_writer, load_run_config
from samx.train.step import TrainState
from samx.train.trainer import BATCH_AXIS, Trainer, make_trainer
from samx.train.training_data import TrainingData


class RunResult(NamedTuple):
  """What :func:`run` returns: the per-epoch metrics, the summary and the final state."""

  history: list[dict[str, Any]]
  summary: dict[str, Any]
  state: TrainState
  config: Config
  run_dir: pathlib.Path | None


def parameter_count(state: TrainState) -> int:
  return int(sum(leaf.size for leaf in jax.tree.leaves(state.params)))


def method_label(config: Config) -> str:
  """The optimizer's name, with ``+penalty`` when the penalty regulariser is on."""
  return config.optimizer.name + ("+penalty" if config.penalty.active else "")


class BestEpoch:
  """The best test accuracy so far and its epoch."""

  def __init__(self, history: list[dict[str, Any]]):
    self.accuracy: float | None = None
    self.epoch: int | None = None
    for record in history:
      self.update(record)

  def update(self, record: dict[str, Any]) -> None:
    accuracy = record.get("test_accuracy")
    if accuracy is not None and (self.accuracy is None or accuracy > self.accuracy):
      self.accuracy, self.epoch = accuracy, record["epoch"]


def _train_epoch(trainer: Trainer, step_fn, state: TrainState, arrays: dict[str, np.ndarray],
                 epoch: int, bar: ProgressBar) -> tuple[TrainState, dict[str, float], float]:
  """One pass over the training split: the new state, the epoch's mean step metrics, seconds."""
  config = trainer.config
  step_metrics = []
  started = time.perf_counter()
  for batch in pipeline.batches(arrays, config.batch_size, seed=config.seed, epoch=epoch,
                                mesh=trainer.mesh, batch_axis=BATCH_AXIS):
    state, metrics = step_fn(state, batch)
    step_metrics.append(metrics)
    bar.update(metrics)
  step_metrics = jax.device_get(step_metrics)
  seconds = time.perf_counter() - started
  means = {("step_" + name) if name in ("loss", "accuracy") else name:
           float(np.mean([m[name] for m in step_metrics])) for name in step_metrics[0]}
  return state, means, seconds


def _summary(trainer: Trainer, state: TrainState, history: list[dict[str, Any]], best: BestEpoch,
             train_seconds: float, compile_seconds: float) -> dict[str, Any]:
  config, data = trainer.config, trainer.data
  final = history[-1] if history else {}
  return {
      "dataset": data.name, "optimizer": method_label(config), "model": config.model.name,
      "parameters": parameter_count(state), "noise_rate": data.noise_rate,
      "devices": trainer.mesh.size, "processes": jax.process_count(),
      "epochs": config.epochs, "steps": trainer.total_steps,
      "best_test_accuracy": best.accuracy, "best_epoch": best.epoch,
      "final_test_accuracy": final.get("test_accuracy"),
      "final_noisy_memorization": final.get("noisy_memorization"),
      "final_noisy_true_label_accuracy": final.get("noisy_true_label_accuracy"),
      "final_train_clean_accuracy": final.get("train_clean_accuracy"),
      "train_seconds": train_seconds, "compile_seconds": compile_seconds,
      "images_per_second": (trainer.total_steps * config.batch_size / train_seconds)
      if train_seconds else None,
  }


def run(
    config: Config | None,
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
  the latest checkpoint in ``run_dir`` with the configuration stored there (``config`` is then
  ignored and may be ``None``), and ends with the same metrics as an uninterrupted run.
  ``progress=True`` shows a live bar where stderr is a terminal; one line per epoch goes to
  ``log`` in any case.

  Per-epoch metrics: ``test_accuracy``/``test_loss``; on the training set (evaluation mode,
  all of it or ``train_eval_examples`` of it) ``train_accuracy`` (against the given labels),
  ``train_clean_accuracy`` (examples whose label is clean), ``noisy_memorization`` (noisy
  examples predicted as their given, wrong label) and ``noisy_true_label_accuracy`` (predicted
  as their true label); ``step_loss`` and ``step_accuracy`` averaged over the epoch's steps;
  SANER's group fractions averaged over the epoch (``saner_group_a/b/c``);
  ``best_test_accuracy`` and ``best_epoch`` so far; ``learning_rate``, ``epoch_seconds``,
  ``images_per_second`` and ``steps_per_second`` of the training steps.
  """
  say = log if log is not None and is_writer() else (lambda _: None)
  directory = None if run_dir is None else RunDirectory(run_dir, tensorboard=tensorboard)
  if resume:
    if directory is None:
      raise ValueError("resume=True needs the run_dir of the run to continue.")
    config = load_run_config(directory.path)
  trainer = make_trainer(config, data)
  state = trainer.init()
  start_epoch, history, manager = 0, [], None
  if directory is not None:
    directory.start(config, resume=resume)
    if config.checkpoint_every:
      manager = checkpoints.manager(directory.path, keep=config.keep_checkpoints)
    if resume:
      latest = None if manager is None else manager.latest_step()
      if latest is not None:
        state = checkpoints.restore(manager, latest, state)
        start_epoch = latest
      history = directory.continue_after(start_epoch)
      say(f"resuming {directory.path} after epoch {start_epoch}")

  data = trainer.data
  say(f"{data.name}: {len(data.train['label'])} training examples ({data.noise_rate:.0%} noisy "
      f"labels), {len(data.test['label'])} test; {config.model.name} with "
      f"{parameter_count(state):,} parameters; {method_label(config)}; {trainer.mesh.size} "
      f"device(s), {jax.process_count()} process(es)")
  evaluator = trainer.evaluator()
  step_arrays = {"input": data.train["input"], "label": data.train["label"]}
  bar = ProgressBar(config.epochs, trainer.steps_per_epoch, enabled=progress and is_writer())

  first = next(pipeline.batches(step_arrays, config.batch_size, seed=config.seed, epoch=0,
                                mesh=trainer.mesh, batch_axis=BATCH_AXIS))
  started = time.perf_counter()
  step_fn = trainer.train_step.lower(state, first).compile()
  compile_seconds = time.perf_counter() - started
  best = BestEpoch(history)
  train_seconds = sum(r.get("epoch_seconds", 0.0) for r in history)

  for epoch in range(start_epoch, config.epochs):
    bar.start_epoch(epoch + 1)
    state, step_means, epoch_seconds = _train_epoch(trainer, step_fn, state, step_arrays, epoch,
                                                    bar)
    bar.end_epoch()
    train_seconds += epoch_seconds
    steps = (epoch + 1) * trainer.steps_per_epoch
    record: dict[str, Any] = {"epoch": epoch + 1, "step": steps,
                              "learning_rate": float(trainer.learning_rate(steps - 1)),
                              **step_means}
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
      record.update(evaluator.metrics(state))
      best.update(record)
    record.update(best_test_accuracy=best.accuracy, best_epoch=best.epoch,
                  epoch_seconds=epoch_seconds,
                  images_per_second=trainer.steps_per_epoch * config.batch_size / epoch_seconds,
                  steps_per_second=trainer.steps_per_epoch / epoch_seconds)
    history.append(record)
    if directory is not None:
      directory.append(record)
    if manager is not None and ((epoch + 1) % config.checkpoint_every == 0
                                or epoch + 1 == config.epochs):
      checkpoints.save(manager, epoch + 1, state)
    say(epoch_line(record, config.epochs))
  if manager is not None:
    manager.wait_until_finished()
    manager.close()

  summary = _summary(trainer, state, history, best, train_seconds, compile_seconds)
  if directory is not None:
    directory.finish(summary)
  return RunResult(history, summary, state, config, None if directory is None else directory.path)
