"""The training loop: epochs of compiled steps, evaluation, the best epoch, checkpoints and
exact resume."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from samx.data import pipeline
from samx.train import checkpoints, run_lock
from samx.train.config import Config, validate
from samx.train.errors import RunDirectoryError, TrainingDivergedError, TrainingInterrupted
from samx.train.in_flight import InFlight
from samx.train.progress import ProgressBar, epoch_line
from samx.train.run_dir import (
    RunDirectory,
    RunStatus,
    inspect_run,
    is_writer,
    load_run_config,
    read_history,
    read_summary,
    refuse_to_overwrite,
    remove_run,
)
from samx.train.step import TrainState
from samx.train.trainer import BATCH_AXIS, Trainer, make_trainer
from samx.train.training_data import TrainingData

# (trainer, state) -> extra numbers for an evaluated epoch's record.
EpochMetrics = Callable[[Trainer, TrainState], Mapping[str, Any]]


class RunResult(NamedTuple):
  """What :func:`run` returns: the per-epoch metrics, the summary and the final state."""

  history: list[dict[str, Any]]
  summary: dict[str, Any]
  state: TrainState | None  # None for a finished run read back from its directory
  config: Config
  run_dir: pathlib.Path | None


def parameter_count(state: TrainState) -> int:
  return int(sum(leaf.size for leaf in jax.tree.leaves(state.params)))


def method_label(config: Config) -> str:
  """The optimizer's name, with ``+penalty`` when the penalty regulariser is on."""
  return config.optimizer.name + ("+penalty" if config.penalty.active else "")


def finished_run(run_dir: str | pathlib.Path) -> RunResult:
  """The :class:`RunResult` of an ended (finished or diverged) run directory, read back
  (``state`` is ``None``)."""
  return RunResult(read_history(run_dir), read_summary(run_dir), None,
                   load_run_config(run_dir), pathlib.Path(run_dir))


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


# How often the loop looks at a recent step's finiteness flag during an epoch, and how far it
# looks back: a flag LAG steps old has long been computed, so reading it does not stall the
# device, and a run that diverges mid-epoch stops within about CHECK_EVERY steps.
CHECK_EVERY, LAG = 100, 10


class Divergence(NamedTuple):
  """Where a run stopped being finite: the step, and the last finite loss before it."""

  step: int
  loss: float
  last_finite_step: int | None
  last_finite_loss: float | None


def _first_divergence(step_metrics: list[dict[str, Any]], first_step: int) -> Divergence | None:
  for i, metrics in enumerate(step_metrics):
    if metrics["nonfinite"] > 0:
      finite = [(j, float(m["loss"])) for j, m in enumerate(step_metrics[:i])
                if np.isfinite(m["loss"])]
      last_step, last_loss = finite[-1] if finite else (None, None)
      return Divergence(first_step + i + 1, float(metrics["loss"]),
                        None if last_step is None else first_step + last_step + 1, last_loss)
  return None


def _epoch_means(step_metrics: list[dict[str, Any]]) -> dict[str, float]:
  """Each step metric averaged over the epoch (``loss``, ``accuracy`` as ``step_*``); the
  finiteness flag is dropped, skipped steps (non-finite losses) are left out of the loss."""
  means = {}
  for name in step_metrics[0]:
    if name == "nonfinite":
      continue
    values = np.asarray([m[name] for m in step_metrics], np.float64)
    finite = values[np.isfinite(values)]
    key = {"loss": "step_loss", "accuracy": "step_accuracy",
           "skipped": "skipped_step_fraction"}.get(name, name)
    means[key] = float(finite.mean()) if len(finite) else float("nan")
  return means


def _train_epoch(trainer: Trainer, step_fn, state: TrainState, arrays: dict[str, np.ndarray],
                 epoch: int, bar: ProgressBar
                 ) -> tuple[TrainState, dict[str, float], float, Divergence | None]:
  """One pass over the training split: the new state, the epoch's mean step metrics, seconds,
  and where the run diverged if it did (the pass then ends early)."""
  config = trainer.config
  step_metrics = []
  started = time.perf_counter()
  batches = pipeline.batches(arrays, config.batch_size, seed=config.seed, epoch=epoch,
                             mesh=trainer.mesh, batch_axis=BATCH_AXIS)
  in_flight = InFlight()  # the host stays a few steps ahead (see samx.train.in_flight)
  for batch in pipeline.prefetch(batches, config.data.prefetch):
    state, metrics = step_fn(state, batch)
    step_metrics.append(metrics)
    in_flight.add(metrics)
    bar.update(metrics)
    if len(step_metrics) % CHECK_EVERY == 0 and float(step_metrics[-LAG]["nonfinite"]) > 0:
      break
  step_metrics = jax.device_get(step_metrics)
  seconds = time.perf_counter() - started
  divergence = _first_divergence(step_metrics, epoch * trainer.steps_per_epoch)
  return state, _epoch_means(step_metrics), seconds, divergence


def _divergence_message(config: Config, divergence: Divergence, epoch: int) -> str:
  o = config.optimizer
  last = ("no finite loss before it in this epoch" if divergence.last_finite_loss is None else
          f"the last finite loss was {divergence.last_finite_loss:.4g} at step "
          f"{divergence.last_finite_step}")
  tries = [f"a lower optimizer.learning_rate (now {o.learning_rate:g})"]
  if o.name != "sgd":
    tries.append(f"a lower optimizer.rho (now {o.rho:g})")
  tries += [f"a learning-rate warmup (schedule.warmup_epochs, now "
            f"{config.schedule.warmup_epochs:g})",
            "optimizer.skip_nonfinite=N to skip up to N non-finite steps in a row"]
  return (f"training diverged at step {divergence.step} (epoch {epoch}): the loss became "
          f"{divergence.loss}, or the parameters stopped being finite; {last}. Try "
          f"{', '.join(tries[:-1])}, or {tries[-1]}.")


def _summary(trainer: Trainer, state: TrainState, history: list[dict[str, Any]], best: BestEpoch,
             train_seconds: float, compile_seconds: float) -> dict[str, Any]:
  config, data = trainer.config, trainer.data
  final = history[-1] if history else {}
  return {
      "status": "finished",
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
    overwrite: bool = False,
    progress: bool = False,
    tensorboard: bool = False,
    log: Callable[[str], None] | None = print,
    data: TrainingData | None = None,
    epoch_metrics: EpochMetrics | None = None,
) -> RunResult:
  """Trains ``config`` and returns its metrics; writes them into ``run_dir`` if given.

  ``run_dir`` receives ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one
  JSON object per evaluated epoch), ``summary.json`` at the end, ``checkpoints/`` (orbax, with
  checksums) and, with ``tensorboard=True``, ``tensorboard/``. With ``resume=True`` the run
  continues from the newest intact checkpoint in ``run_dir`` with the configuration stored
  there (``config`` is then ignored and may be ``None``), and ends with the same metrics as an
  uninterrupted run; a finished run is returned as it is (``state`` ``None``), nothing
  rewritten. A directory that already holds a run is never overwritten unless
  ``overwrite=True``, which replaces it (with ``resume``, only a run that has no checkpoint to
  continue from), and only once the new run is ready to start: the configuration checked, the
  data loaded and the step compiled. Nothing is written before that point, so a bad value, a
  missing data file or Ctrl-C during start-up leaves the directory as it was.

  The process that writes ``run_dir`` holds its lock (:mod:`samx.train.run_lock`) from start
  to end; a second writer is refused at once. Every file is written atomically
  (:mod:`samx.train.files`), so a kill at any moment loses at most the epoch in progress.

  Raises :class:`samx.train.errors.RunDirectoryError` for a directory it must not touch or
  that another process writes, :class:`samx.train.files.RunFileError` (an ``OSError``) naming
  a file that cannot be written (a full disk) or read as samx wrote it,
  :class:`TrainingDivergedError` when the loss or the parameters stop being finite (the
  directory keeps the metrics and the checkpoint of the last good epoch, and its
  ``summary.json`` records where the run diverged) and :class:`TrainingInterrupted` on Ctrl-C
  (saying how to resume).
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

  ``epoch_metrics(trainer, state)``, if given, is called at every evaluated epoch after the
  evaluation; the numbers it returns join that epoch's record (and ``metrics.jsonl``), e.g.
  linear-probe accuracies of the features over training. Its time is not training time.
  """
  say = log if log is not None and is_writer() else (lambda _: None)
  if run_dir is None:
    if resume:
      raise ValueError("resume=True needs the run_dir of the run to continue.")
    return _run(config, None, RunStatus("new", None, None), False, progress, say, data,
                epoch_metrics)
  if not resume:
    validate(config)  # a bad value is refused before the directory is touched
  directory = RunDirectory(run_dir, tensorboard=tensorboard)
  if resume and not directory.path.is_dir():
    load_run_config(directory.path)  # raises: not a run directory (or a file)
  with run_lock.locked(directory.path, enabled=is_writer()):
    status = inspect_run(directory.path)
    for done in directory.tidy():
      say(f"{directory.path}: {done}")
    if resume:  # what the directory holds is checked before any data is loaded
      if status.kind == "new":
        load_run_config(directory.path)  # raises: not a run directory
      if status.kind == "finished":
        say(f"{directory.path} is finished (summary.json); nothing to resume.")
        return finished_run(directory.path)
      if status.kind == "diverged":
        raise TrainingDivergedError(diverged_message(directory.path))
      if status.kind == "unfinished" and not overwrite:
        raise RunDirectoryError(
            f"{directory.path} holds an unfinished run with no checkpoint to continue from "
            f"(checkpoint_every={status.config.checkpoint_every}); start it again from the "
            f"first epoch with --overwrite, or choose another run directory.")
      config = status.config
    elif status.kind != "new" and not overwrite:
      refuse_to_overwrite(directory.path, status)
    replace = overwrite and status.kind != "new" and (not resume or status.kind == "unfinished")
    return _run(config, directory, status, replace, progress, say, data, epoch_metrics)


def diverged_message(run_dir: pathlib.Path) -> str:
  """What the ``summary.json`` of a diverged run says, and the ways on."""
  summary = read_summary(run_dir)
  return (f"{run_dir} diverged at step {summary.get('diverged_at_step')} (epoch "
          f"{summary.get('diverged_in_epoch')}); resuming it would diverge again. Train it again "
          f"with other settings in another directory, or replace it with --overwrite.")


def _run(config: Config, directory: RunDirectory | None, status: RunStatus, replace: bool,
         progress: bool, say: Callable[[str], None], data: TrainingData | None,
         epoch_metrics: EpochMetrics | None) -> RunResult:
  """Builds the run, then (only then) changes the directory, and trains."""
  try:
    trainer = make_trainer(config, data)
    state = trainer.init()
  except KeyboardInterrupt:
    raise TrainingInterrupted("interrupted while starting; nothing was written.") from None
  start_epoch, history, store = 0, [], None
  if directory is not None:
    if replace:
      remove_run(directory.path)
      status = RunStatus("new", None, None)
    if status.kind == "resumable" and config.checkpoint_every:
      store = checkpoints.Checkpoints(directory.path, keep=config.keep_checkpoints,
                                      writer=is_writer())
      start_epoch, state = store.restore_latest(state, say)
      history = directory.continue_after(start_epoch, warn=say)
      say(f"resuming {directory.path} after epoch {start_epoch}")

  data = trainer.data
  say(f"{data.name}: {len(data.train['label'])} training examples ({data.noise_rate:.0%} noisy "
      f"labels), {len(data.test['label'])} test; {config.model.name} with "
      f"{parameter_count(state):,} parameters; {method_label(config)}; {trainer.mesh.size} "
      f"device(s), {jax.process_count()} process(es)")
  step_arrays = {"input": data.train["input"], "label": data.train["label"]}
  try:
    evaluator = trainer.evaluator()
    first = next(pipeline.batches(step_arrays, config.batch_size, seed=config.seed, epoch=0,
                                  mesh=trainer.mesh, batch_axis=BATCH_AXIS))
    started = time.perf_counter()
    step_fn = trainer.train_step.lower(state, first).compile()
    compile_seconds = time.perf_counter() - started
  except KeyboardInterrupt:
    if store is not None:
      store.close()
    where = ("nothing was written" if directory is None or status.kind == "new" else
             f"{directory.path} is as it was; continue it with samx train --resume "
             f"{directory.path}")
    raise TrainingInterrupted(f"interrupted while starting; {where}.") from None
  if directory is not None:
    if status.kind == "new":
      directory.start(config)  # from here on the directory holds a run
    if store is None and config.checkpoint_every:
      store = checkpoints.Checkpoints(directory.path, keep=config.keep_checkpoints,
                                      writer=is_writer())
  bar = ProgressBar(config.epochs, trainer.steps_per_epoch, enabled=progress and is_writer())
  best = BestEpoch(history)
  train_seconds = sum(r.get("epoch_seconds", 0.0) for r in history)

  epoch = start_epoch
  try:
    for epoch in range(start_epoch, config.epochs):
      state, train_seconds = _epoch(trainer, step_fn, state, step_arrays, epoch, bar, evaluator,
                                    best, history, directory, store, train_seconds, say,
                                    epoch_metrics)
  except KeyboardInterrupt as interrupt:
    bar.end_epoch()
    latest = _close(store)
    if directory is not None:
      directory.close()
    where = "" if directory is None else (
        f"; continue it with: samx train --resume {directory.path}" if latest else
        f"; {directory.path} has no checkpoint to continue from")
    saved = (f"the latest checkpoint is that of epoch {latest}" if latest else
             "no checkpoint was saved")
    raise TrainingInterrupted(f"interrupted in epoch {epoch + 1} of {config.epochs}; {saved}"
                              f"{where}.") from interrupt
  except TrainingDivergedError as diverged:
    latest = _close(store)
    message = str(diverged)
    if directory is not None:
      summary = _summary(trainer, state, history, best, train_seconds, compile_seconds)
      summary.update(status="diverged", diverged_at_step=diverged.step,
                     diverged_in_epoch=diverged.epoch, error=message)
      directory.finish(summary)
      message += (f" {directory.path} keeps the metrics of epochs 1-{len(history)}"
                  if history else f" {directory.path} keeps no epoch")
      message += (f" and the checkpoint of epoch {latest}." if latest else " and no checkpoint.")
    raise TrainingDivergedError(message, step=diverged.step, epoch=diverged.epoch) from None
  except BaseException:
    _close(store, wait=False)
    if directory is not None:
      directory.close()
    raise
  _close(store)

  summary = _summary(trainer, state, history, best, train_seconds, compile_seconds)
  if directory is not None:
    directory.finish(summary)
  return RunResult(history, summary, state, config, None if directory is None else directory.path)


def _checked_extra_metrics(extra: Mapping[str, Any] | None, record: dict[str, Any]
                           ) -> dict[str, float]:
  """``epoch_metrics``'s numbers as floats; refuses names the engine already records."""
  extra = dict(extra or {})
  clashes = sorted(set(extra) & set(record))
  if clashes:
    raise ValueError(f"epoch_metrics returned {clashes}, which the engine already records; "
                     f"give them other names.")
  return {str(name): float(value) for name, value in extra.items()}


def _close(store: checkpoints.Checkpoints | None, *, wait: bool = True) -> int | None:
  """Waits for the checkpoint saves, closes the store, and returns its latest epoch (without
  ``wait``, after an error: a failed save is not reported again)."""
  if store is None:
    return None
  if not wait:
    try:
      return store.close()
    except OSError:
      return checkpoints.latest_epoch(store.run_dir)
  return store.close()


def _epoch(trainer: Trainer, step_fn, state: TrainState, step_arrays: dict[str, np.ndarray],
           epoch: int, bar: ProgressBar, evaluator, best: BestEpoch,
           history: list[dict[str, Any]], directory: RunDirectory | None,
           store: checkpoints.Checkpoints | None,
           train_seconds: float, say: Callable[[str], None],
           epoch_metrics: EpochMetrics | None = None) -> tuple[TrainState, float]:
  """Trains and records one epoch; raises :class:`TrainingDivergedError` (recording nothing of the
  epoch) if the run stops being finite."""
  config = trainer.config
  bar.start_epoch(epoch + 1)
  state, step_means, epoch_seconds, divergence = _train_epoch(
      trainer, step_fn, state, step_arrays, epoch, bar)
  bar.end_epoch()
  if divergence is not None:
    raise TrainingDivergedError(_divergence_message(config, divergence, epoch + 1),
                                step=divergence.step, epoch=epoch + 1)
  train_seconds += epoch_seconds
  steps = (epoch + 1) * trainer.steps_per_epoch
  record: dict[str, Any] = {"epoch": epoch + 1, "step": steps,
                            "learning_rate": float(trainer.learning_rate(steps - 1)),
                            **step_means}
  if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
    record.update(evaluator.metrics(state))
    best.update(record)
    if epoch_metrics is not None:
      record.update(_checked_extra_metrics(epoch_metrics(trainer, state), record))
  record.update(best_test_accuracy=best.accuracy, best_epoch=best.epoch,
                epoch_seconds=epoch_seconds,
                images_per_second=trainer.steps_per_epoch * config.batch_size / epoch_seconds,
                steps_per_second=trainer.steps_per_epoch / epoch_seconds)
  history.append(record)
  if directory is not None:
    directory.append(record)
  if store is not None:
    store.check()  # a background save that failed stops the run here
    if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
      store.save(epoch + 1, state)
  say(epoch_line(record, config.epochs))
  return state, train_seconds

