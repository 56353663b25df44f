"""The training loop: epochs of compiled steps, evaluation, the best epoch, checkpoints and
exact resume."""

from __future__ import annotations

import errno
import json
import pathlib
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from samx.data import pipeline
from samx.train import agreement, checkpoints, run_lock, stopping
from samx.train.config import Config, validate
from samx.train.errors import (
    ConfigError,
    RunDirectoryError,
    TrainingDivergedError,
    TrainingInterrupted,
    TrainingPreempted,
)
from samx.train.files import RunFileError
from samx.train.in_flight import InFlight
from samx.train.progress import ProgressBar, epoch_line
from samx.train.run_dir import (
    ACTIONS,
    Decision,
    RunDirectory,
    decide,
    describe_differences,
    inspect_run,
    is_writer,
    load_run_config,
    read_history,
    read_summary,
    refuse_to_overwrite,
    remove_run,
    stored_config,
    strict_json,
)
from samx.train.sharding import describe as describe_mesh
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


def _divergence_message(config: Config, divergence: Divergence, epoch: int) -> str:
  o = config.optimizer
  last = ("no finite loss before it in this epoch" if divergence.last_finite_loss is None else
          f"the last finite loss was {divergence.last_finite_loss:.4g} at step "
          f"{divergence.last_finite_step}")
  tries = [f"a lower optimizer.learning_rate (now {o.learning_rate:g})"]
  if o.name != "sgd":
    tries.append(f"a lower optimizer.rho (now {o.rho:g})")
  tries.append(f"a learning-rate warmup (schedule.warmup_epochs, now "
               f"{config.schedule.warmup_epochs:g})")
  if o.skip_nonfinite:
    tries.append(f"a larger optimizer.skip_nonfinite (now {o.skip_nonfinite}: more non-finite "
                 f"steps than that came in a row)")
  else:
    tries.append("optimizer.skip_nonfinite=N to skip up to N non-finite steps in a row")
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
      "dtype": config.model.dtype,
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


class EpochSteps(NamedTuple):
  """The training steps of one epoch so far: the epoch (counted from 0), each step's metrics
  (on the host) and the seconds they took. A checkpoint saved mid-epoch (or before the epoch
  was evaluated) stores them, so that the resumed run records the same epoch."""

  epoch: int
  metrics: list[dict[str, Any]]
  seconds: float

  def last_step(self, steps_per_epoch: int) -> int:
    """The run's step count after these steps."""
    return self.epoch * steps_per_epoch + len(self.metrics)

  def progress(self, steps_per_epoch: int) -> dict[str, Any]:
    """The ``samx-progress.json`` of a checkpoint at the last of these steps (strict JSON:
    a non-finite metric is written as ``null``)."""
    names = list(self.metrics[0]) if self.metrics else []
    values = {name: [float(m[name]) for m in self.metrics] for name in names}
    return json.loads(strict_json({
        "format": 1, "step": self.last_step(steps_per_epoch),
        "steps_per_epoch": steps_per_epoch, "epoch": self.epoch, "seconds": self.seconds,
        "step_metrics": values}))

  @classmethod
  def from_progress(cls, progress: dict[str, Any]) -> EpochSteps:
    values = progress["step_metrics"]
    count = len(next(iter(values.values()))) if values else 0
    metrics = [{name: np.float64(np.nan if v[i] is None else v[i]) for name, v in values.items()}
               for i in range(count)]
    return cls(progress["epoch"], metrics, progress["seconds"])


def _resume_point(run_dir: pathlib.Path, step: int, progress: dict[str, Any] | None,
                  history: list[dict[str, Any]], steps_per_epoch: int) -> EpochSteps:
  """Where a run restored at ``step`` goes on: the epoch to train or record next, with the
  steps of it already taken (all of them: the epoch was trained and not yet recorded)."""
  epoch, done = divmod(step, steps_per_epoch)
  recorded = any(record["epoch"] == epoch for record in history)
  if done == 0 and (epoch == 0 or recorded):
    return EpochSteps(epoch, [], 0.0)
  where = checkpoints.describe(run_dir, step)
  if progress is None:
    raise RunFileError(errno.EIO, f"the checkpoint of {where} in {run_dir} is not at the end of "
                       f"a recorded epoch and has no {checkpoints.PROGRESS_FILE}; start the run "
                       f"again with --overwrite.")
  if progress.get("steps_per_epoch") != steps_per_epoch:
    raise RunFileError(errno.EIO, f"the checkpoint of {where} in {run_dir} was saved with "
                       f"{progress.get('steps_per_epoch')} steps per epoch, and the run now has "
                       f"{steps_per_epoch}: its training data changed. Put back the data it was "
                       f"started with, or start it again with --overwrite.")
  steps = EpochSteps.from_progress(progress)
  expected = (epoch - 1, steps_per_epoch) if done == 0 else (epoch, done)
  if (steps.epoch, len(steps.metrics)) != expected:
    raise RunFileError(errno.EIO, f"the {checkpoints.PROGRESS_FILE} of the checkpoint of {where} "
                       f"in {run_dir} does not match its step; start the run again with "
                       f"--overwrite.")
  return steps


class _Stop(Exception):  # noqa: N818 (a control-flow signal, not an error)
  """Unwinds the epoch to where the run saves and ends: the state after the last step, and
  the steps of the epoch so far."""

  def __init__(self, state: TrainState, steps: EpochSteps):
    super().__init__()
    self.state, self.steps = state, steps


class _Training:
  """One run's epochs: the compiled step, evaluation, the record, checkpoints and stops."""

  def __init__(self, trainer: Trainer, step_fn, arrays: dict[str, np.ndarray], evaluator,
               directory: RunDirectory | None,
               store: checkpoints.Checkpoints | None, stops: stopping.StopSignals,
               bar: ProgressBar, history: list[dict[str, Any]], say: Callable[[str], None],
               epoch_metrics: EpochMetrics | None):
    config = trainer.config
    self.trainer, self.config, self.step_fn, self.evaluator = trainer, config, step_fn, evaluator
    self.arrays = arrays  # the training inputs and (given) labels the steps take
    self.directory, self.store, self.stops, self.bar = directory, store, stops, bar
    self.history, self.best, self.say = history, BestEpoch(history), say
    self.epoch_metrics = epoch_metrics
    # The host stays a few steps, about a second, ahead (see samx.train.in_flight); the
    # window is the run's, so it keeps its timing from one epoch to the next.
    self.in_flight = InFlight()
    self.schedule = checkpoints.CheckpointSchedule(
        config.checkpoint_every_steps, config.checkpoint_every_minutes) if directory else None

  @property
  def steps_per_epoch(self) -> int:
    return self.trainer.steps_per_epoch

  def save(self, state: TrainState, steps: EpochSteps) -> None:
    """Saves a checkpoint of the step after ``steps`` (in the background)."""
    if self.directory is None or self.schedule is None:  # the schedule comes with a directory
      return
    if self.store is None:
      self.store = checkpoints.Checkpoints(self.directory.path,
                                           keep=self.config.keep_checkpoints, writer=is_writer())
    self.store.check()  # a background save that failed stops the run here
    step = steps.last_step(self.steps_per_epoch)
    self.store.save(step, state, steps.progress(self.steps_per_epoch))
    self.schedule.saved()

  def train_pass(self, state: TrainState, done: EpochSteps) -> tuple[TrainState, EpochSteps]:
    """The rest of the epoch's training steps after ``done``; the pass ends early if the run
    diverges, and raises :class:`_Stop` when asked to stop."""
    config = self.config
    first_step = done.epoch * self.steps_per_epoch + len(done.metrics)
    started, metrics, fetched = time.perf_counter(), [], list(done.metrics)

    def so_far() -> EpochSteps:  # each step's metrics are fetched from the device once
      fetched.extend(jax.device_get(metrics[len(fetched) - len(done.metrics):]))
      return EpochSteps(done.epoch, list(fetched), done.seconds + time.perf_counter() - started)

    batches = pipeline.batches(self.arrays, config.batch_size, seed=config.seed,
                               epoch=done.epoch, mesh=self.trainer.mesh, batch_axis=BATCH_AXIS,
                               start=len(done.metrics))
    for batch in pipeline.prefetch(batches, config.data.prefetch):
      # Room first, then the stop request: a stop then waits for the steps in flight only
      # (one, when steps are long), not for one more dispatched while waiting.
      self.in_flight.make_room()
      if metrics and self.stops.reached(first_step + len(metrics)):
        raise _Stop(state, so_far())
      state, step_metrics = self.step_fn(state, batch)
      metrics.append(step_metrics)
      self.in_flight.add(step_metrics)
      self.bar.update(step_metrics)
      stopping.inject("step")
      step = first_step + len(metrics)
      if len(metrics) % CHECK_EVERY == 0 and float(metrics[-LAG]["nonfinite"]) > 0:
        break
      if self.schedule is not None and self.schedule.due(step):
        steps = so_far()
        if _first_divergence(steps.metrics, 0) is not None:
          break  # diverged: reported at the end of the pass, nothing saved
        self.save(state, steps)
    if metrics and self.stops.reached(first_step + len(metrics)):  # the epoch's last step
      raise _Stop(state, so_far())
    return state, so_far()

  def epoch(self, state: TrainState, done: EpochSteps) -> TrainState:
    """Trains (the rest of) one epoch and records it; raises :class:`TrainingDivergedError`
    (recording nothing of the epoch) if the run stops being finite."""
    config, epoch = self.config, done.epoch
    if len(done.metrics) < self.steps_per_epoch:
      self.bar.start_epoch(epoch + 1)
      try:
        state, done = self.train_pass(state, done)
      finally:
        self.bar.end_epoch()
    divergence = _first_divergence(done.metrics, epoch * self.steps_per_epoch)
    if divergence is not None:
      raise TrainingDivergedError(_divergence_message(config, divergence, epoch + 1),
                                  step=divergence.step, epoch=epoch + 1)
    steps = (epoch + 1) * self.steps_per_epoch
    learning_rate = np.asarray(self.trainer.learning_rate(steps - 1))  # a number or a 0-d array
    record: dict[str, Any] = {"epoch": epoch + 1, "step": steps,
                              "learning_rate": float(learning_rate),
                              **_epoch_means(done.metrics)}
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
      try:
        record.update(self.evaluator.metrics(state, self.stops.requested_here))
      except stopping.StopRequested:
        raise _Stop(state, done) from None
      self.best.update(record)
      if self.epoch_metrics is not None:
        record.update(_checked_extra_metrics(self.epoch_metrics(self.trainer, state), record))
    record.update(best_test_accuracy=self.best.accuracy, best_epoch=self.best.epoch,
                  epoch_seconds=done.seconds,
                  images_per_second=self.steps_per_epoch * config.batch_size / done.seconds,
                  steps_per_second=self.steps_per_epoch / done.seconds)
    self.history.append(record)
    if self.directory is not None:
      self.directory.append(record)
    if self.store is not None:
      self.store.check()
    if config.checkpoint_every and ((epoch + 1) % config.checkpoint_every == 0
                                    or epoch + 1 == config.epochs):
      self.save(state, done)
    self.say(epoch_line(record, config.epochs))
    return state

  def close_store(self, *, wait: bool = True) -> int | None:
    """Waits for the checkpoint saves, closes the store, and returns its latest step (without
    ``wait``, after an error: a failed save is not reported again)."""
    if self.store is None:
      return None if self.directory is None else checkpoints.latest_step(self.directory.path)
    if not wait:
      try:
        return self.store.close()
      except OSError:
        return checkpoints.latest_step(self.store.run_dir)
    return self.store.close()


def run(
    config: Config | None,
    run_dir: str | pathlib.Path | None = None,
    *,
    resume: bool | str = False,
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
  checksums) and, with ``tensorboard=True``, ``tensorboard/``.

  What is already in ``run_dir`` decides what happens:

  - ``resume=False`` (the default): the directory must hold no run, unless ``overwrite=True``,
    which replaces it.
  - ``resume=True``: the run there continues from its newest intact checkpoint with the
    configuration stored there (``config`` is ignored and may be ``None``); a finished run is
    returned as it is (``state`` ``None``), nothing rewritten; one with no checkpoint to
    continue from is started again only with ``overwrite=True``.
  - ``resume="auto"``: one call for the first start and every restart, as a scheduler re-runs
    a job after a preemption (``samx train --resume-if-exists``), by the rule of ``samx
    compare`` (``samx.train.run_dir.decide``): a new directory is started, an unfinished
    run with the same configuration is continued (or started again if it has no checkpoint), a
    finished one is returned as it is, a diverged one is reported
    (:class:`TrainingDivergedError`), and one with another configuration is refused naming the
    keys that differ, unless ``overwrite=True``, which replaces it.

  A resumed run ends with the same metrics and parameters as an uninterrupted one (bit for
  bit on CPU), wherever it stopped. A run is replaced only once the new one is ready to start:
  the configuration checked, the data loaded and the step compiled. Nothing is written before
  that point, so a bad value, a missing data file or a stop during start-up leaves the
  directory as it was. With several processes, process 0 decides and every process follows
  (``samx.train.agreement``).

  **Stopping.** SIGTERM (a preemption, a scheduler) and Ctrl-C (SIGINT) stop the run at the
  next step boundary, or between two evaluation batches: it saves a checkpoint of that step
  (with the epoch's step metrics so far), waits for it to be written, and raises
  :class:`TrainingPreempted` (SIGTERM; ``samx`` exits with status 75) or
  :class:`TrainingInterrupted` (Ctrl-C; 130), saying where it stopped and how to continue. A
  second signal stops at once. See ``samx.train.stopping`` (several processes stop at the
  same step through JAX's preemption service). Checkpoints are also saved every
  ``checkpoint_every`` epochs, ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes``
  minutes, as configured.

  The process that writes ``run_dir`` holds its lock (``samx.train.run_lock``) from start
  to end; a second writer is refused at once. Every file is written atomically
  (``samx.train.files``), so a kill at any moment loses at most the steps since the last
  checkpoint.

  Raises :class:`samx.train.errors.RunDirectoryError` for a directory it must not touch or
  that another process writes, ``samx.train.files.RunFileError`` (an ``OSError``) naming
  a file that cannot be written (a full disk) or read as samx wrote it,
  :class:`TrainingDivergedError` when the loss or the parameters stop being finite (the
  directory keeps the metrics and the checkpoints of the last good steps, and its
  ``summary.json`` records where the run diverged), and :class:`TrainingInterrupted` or
  :class:`TrainingPreempted` when stopped.
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
  if resume not in (False, True, "auto"):
    raise ValueError(f"resume must be False, True or 'auto'; got {resume!r}.")
  say = log if log is not None and is_writer() else (lambda _: None)
  with stopping.StopSignals() as stops:
    try:
      if run_dir is None:
        if resume:
          raise ValueError("resume needs the run_dir of the run to continue.")
        return _run(_given(config), None, "train", stops, progress, say, data, epoch_metrics)
      if resume is not True:
        validate(_given(config))  # a bad value is refused before the directory is touched
      directory = RunDirectory(run_dir, tensorboard=tensorboard)
      if resume is True and not directory.path.is_dir():
        load_run_config(directory.path)  # raises: not a run directory (or a file)
      with run_lock.locked(directory.path, enabled=is_writer()):
        for done in directory.tidy():
          say(f"{directory.path}: {done}")
        decision = _agreed(directory.path, config, resume, overwrite)
        status = decision.status
        if decision.action == "reuse":
          say(f"{directory.path} is finished (summary.json); nothing to do.")
          return finished_run(directory.path)
        if decision.action == "diverged":
          raise TrainingDivergedError(diverged_message(directory.path))
        if resume is True:
          config = stored_config(directory.path, status)
        return _run(_given(config), directory, decision.action, stops, progress, say, data,
                    epoch_metrics)
    except stopping.Signalled as signalled:  # before the run could be stopped cleanly
      raise _stopped_error(signalled.signal_number,
                           "stopped while starting; nothing was written.") from None


def _given(config: Config | None) -> Config:
  """``config``, which only ``resume=True`` (the configuration stored in the run directory)
  leaves out."""
  if config is None:
    raise ValueError("config is None: only resume=True, which continues with the "
                     "configuration stored in run_dir, goes without one.")
  return config


def _plan(run_dir: pathlib.Path, config: Config | None, resume: bool | str,
          overwrite: bool) -> Decision:
  """What to do with ``run_dir`` (see :func:`run`); raises the refusals."""
  if resume == "auto":
    decision = decide(run_dir, _given(config), overwrite=overwrite)
    if decision.action == "refuse":
      raise RunDirectoryError(
          f"{describe_differences(run_dir, decision.differences)}: the run there has another "
          f"configuration. Continue it with its own (samx train --resume {run_dir}), write to "
          f"another --run-dir, or replace it with --overwrite.")
    return decision
  status = inspect_run(run_dir)
  if not resume:
    if status.kind != "new" and not overwrite:
      refuse_to_overwrite(run_dir, status)
    return Decision("train" if status.kind == "new" else "overwrite", status, [])
  if status.kind == "new":
    load_run_config(run_dir)  # raises: not a run directory
  if status.kind == "unfinished" and not overwrite:
    raise RunDirectoryError(
        f"{run_dir} holds an unfinished run with no checkpoint to continue from "
        f"(checkpoint_every={stored_config(run_dir, status).checkpoint_every}); start it "
        f"again from the first epoch with --overwrite, or choose another run directory.")
  return Decision({"finished": "reuse", "diverged": "diverged", "resumable": "resume",
                   "unfinished": "retrain"}[status.kind], status, [])


def _agreed(run_dir: pathlib.Path, config: Config | None, resume: bool | str,
            overwrite: bool) -> Decision:
  """:func:`_plan` on process 0, followed by every process."""
  try:
    decision, failure = _plan(run_dir, config, resume, overwrite), None
    code = ACTIONS.index(decision.action)
  except (RunDirectoryError, ConfigError, OSError) as error:
    decision, failure, code = None, error, -1
  agreed = agreement.from_process_zero(code)
  if agreed < 0:
    raise failure or RunDirectoryError(f"process 0 refused to train into {run_dir}; its "
                                       f"output says why.")
  if decision is None or agreed != code:  # this process saw it otherwise: process 0 decides
    decision = Decision(ACTIONS[agreed], inspect_run(run_dir), [])
  return decision


def diverged_message(run_dir: pathlib.Path) -> str:
  """What the ``summary.json`` of a diverged run says, and the ways on."""
  summary = read_summary(run_dir)
  return (f"{run_dir} diverged at step {summary.get('diverged_at_step')} (epoch "
          f"{summary.get('diverged_in_epoch')}); resuming it would diverge again. Train it again "
          f"with other settings in another directory, or replace it with --overwrite.")


def _stopped_error(signal_number: int | None, message: str, step: int | None = None,
                   advice: str = "") -> TrainingInterrupted:
  """:class:`TrainingPreempted` for SIGTERM, else :class:`TrainingInterrupted`; ``message``
  (what happened) and ``advice`` (how to continue) make its text."""
  preempted = signal_number is not None and signal_number != signal.SIGINT
  return (TrainingPreempted if preempted else TrainingInterrupted)(
      f"{message} {advice}".strip(), step=step, detail=message)


def _continue_command(run_dir: pathlib.Path) -> str:
  return (f"run the same command again with --resume-if-exists, or samx train --resume "
          f"{run_dir}")


def _run(config: Config, directory: RunDirectory | None, action: str,
         stops: stopping.StopSignals, progress: bool, say: Callable[[str], None],
         data: TrainingData | None, epoch_metrics: EpochMetrics | None) -> RunResult:
  """Builds the run, then (only then) changes the directory, and trains."""
  try:
    trainer = make_trainer(config, data)
    state = trainer.init()
  except stopping.Signalled as signalled:
    raise _stopped_error(signalled.signal_number, "stopped while starting; nothing was "
                         "written.") from None
  except KeyboardInterrupt:
    raise TrainingInterrupted("interrupted while starting; nothing was written.") from None
  done, history, store = EpochSteps(0, [], 0.0), [], None
  if directory is not None:
    if action in ("overwrite", "retrain"):
      remove_run(directory.path)
    if action == "resume":
      store = checkpoints.Checkpoints(directory.path, keep=config.keep_checkpoints,
                                      writer=is_writer())
      step, state, saved_progress = store.restore_latest(state, say)
      done = _resume_point(directory.path, step, saved_progress, read_history(directory.path),
                           trainer.steps_per_epoch)
      history = directory.continue_after(done.epoch, warn=say)
      say(f"resuming {directory.path} from the checkpoint of "
          f"{checkpoints.describe(directory.path, step)}")

  data = trainer.data
  say(f"{data.name}: {len(data.train['label'])} training examples ({data.noise_rate:.0%} noisy "
      f"labels), {len(data.test['label'])} test; {config.model.name} with "
      f"{parameter_count(state):,} parameters, computing in {config.model.dtype}; "
      f"{method_label(config)}; {describe_mesh(trainer.mesh)}, "
      f"{jax.process_count()} process(es)")
  step_arrays = {"input": data.train["input"], "label": data.train["label"]}
  try:
    evaluator = trainer.evaluator()
    first = next(pipeline.batches(step_arrays, config.batch_size, seed=config.seed, epoch=0,
                                  mesh=trainer.mesh, batch_axis=BATCH_AXIS))
    started = time.perf_counter()
    step_fn = trainer.train_step.lower(state, first).compile()
    compile_seconds = time.perf_counter() - started
  except KeyboardInterrupt as interrupt:
    if store is not None:
      store.close()
    where = ("nothing was written" if directory is None or action != "resume" else
             f"{directory.path} is as it was; to continue it, "
             f"{_continue_command(directory.path)}")
    signal_number = getattr(interrupt, "signal_number", None)
    raise _stopped_error(signal_number, f"stopped while starting; {where}.") from None
  if directory is not None and action != "resume":
    directory.start(config)  # from here on the directory holds a run
  bar = ProgressBar(config.epochs, trainer.steps_per_epoch, enabled=progress and is_writer())
  training = _Training(trainer, step_fn, step_arrays, evaluator, directory, store, stops, bar,
                       history, say, epoch_metrics)

  try:
    try:
      with stops.deferred():
        for epoch in range(done.epoch, config.epochs):
          state = training.epoch(state, done)
          done = EpochSteps(epoch + 1, [], 0.0)
        training.close_store()
        train_seconds = sum(r.get("epoch_seconds", 0.0) for r in history)
        summary = _summary(trainer, state, history, training.best, train_seconds, compile_seconds)
        if directory is not None:
          directory.finish(summary)
    except _Stop as stop:
      divergence = _first_divergence(stop.steps.metrics,
                                     stop.steps.epoch * trainer.steps_per_epoch)
      if divergence is None:
        raise _stopped_at(training, stop) from None
      raise _ended_by_divergence(training, stop.state, TrainingDivergedError(
          _divergence_message(config, divergence, stop.steps.epoch + 1), step=divergence.step,
          epoch=stop.steps.epoch + 1), compile_seconds) from None
    except TrainingDivergedError as diverged:
      raise _ended_by_divergence(training, state, diverged, compile_seconds) from None
  except BaseException as error:
    latest = training.close_store(wait=False)
    if directory is not None:
      directory.close()
    if isinstance(error, stopping.Signalled):  # a second signal: stopped where it was
      saved = ("no checkpoint was saved" if latest is None or directory is None else
               f"the latest checkpoint is that of {checkpoints.describe(directory.path, latest)}")
      advice = "" if directory is None else (f"To continue, "
                                             f"{_continue_command(directory.path)}.")
      raise _stopped_error(error.signal_number, f"stopped at once by a second signal; {saved}.",
                           None, advice) from None
    raise
  return RunResult(history, summary, state, config, None if directory is None else directory.path)


def _stopped_at(training: _Training, stop: _Stop) -> TrainingInterrupted:
  """Saves the step a stop request ended at; the error that says so. A second signal while
  it saves stops at once (:class:`stopping.Signalled`)."""
  steps, directory = stop.steps, training.directory
  step = steps.last_step(training.steps_per_epoch)
  where = f"stopped after step {step} (epoch {steps.epoch + 1} of {training.config.epochs})"
  if directory is None:
    return _stopped_error(training.stops.requested, f"{where}; no run directory, nothing "
                          f"saved.", step)
  try:
    with training.stops.deferred():
      training.save(stop.state, steps)
      training.close_store()
  finally:
    directory.close()
  return _stopped_error(training.stops.requested,
                        f"{where}; saved the checkpoint of "
                        f"{checkpoints.describe(directory.path, step)}.", step,
                        f"To continue, {_continue_command(directory.path)}.")


def _ended_by_divergence(training: _Training, state: TrainState, diverged: TrainingDivergedError,
                         compile_seconds: float) -> TrainingDivergedError:
  """Records where the run diverged (``summary.json``); the error that says so."""
  latest = training.close_store(wait=False)
  message, directory, history = str(diverged), training.directory, training.history
  if directory is not None:
    train_seconds = sum(r.get("epoch_seconds", 0.0) for r in history)
    summary = _summary(training.trainer, state, history, training.best, train_seconds,
                       compile_seconds)
    summary.update(status="diverged", diverged_at_step=diverged.step,
                   diverged_in_epoch=diverged.epoch, error=message)
    directory.finish(summary)
    message += (f" {directory.path} keeps the metrics of epochs 1-{len(history)}"
                if history else f" {directory.path} keeps no epoch")
    message += (f" and the checkpoint of {checkpoints.describe(directory.path, latest)}."
                if latest else " and no checkpoint.")
  return TrainingDivergedError(message, step=diverged.step, epoch=diverged.epoch)


def _checked_extra_metrics(extra: Mapping[str, Any] | None, record: dict[str, Any]
                           ) -> dict[str, float]:
  """``epoch_metrics``'s numbers as floats; refuses names the engine already records."""
  extra = dict(extra or {})
  clashes = sorted(set(extra) & set(record))
  if clashes:
    raise ValueError(f"epoch_metrics returned {clashes}, which the engine already records; "
                     f"give them other names.")
  return {str(name): float(value) for name, value in extra.items()}
