"""The engine's errors: a configuration it cannot train with, and runs that stop early."""


class ConfigError(ValueError):
  """A configuration value that samx cannot train with; the message names the key."""


class RunDirectoryError(FileExistsError):
  """A run directory holds a run that the request would overwrite or cannot continue; the
  message names it and the ways on."""


class TrainingDivergedError(RuntimeError):
  """The loss or the parameters became NaN or infinite; the message names the step, the epoch,
  the last finite loss and what to try. The run directory keeps the metrics of the last good
  epoch and the checkpoints saved before it diverged, and its ``summary.json`` records where
  the run diverged.

  Attributes:
    step: the first step (counted from 1) whose loss or parameters were not finite.
    epoch: the epoch (counted from 1) it was in.
  """

  def __init__(self, message: str, *, step: int | None = None, epoch: int | None = None):
    super().__init__(message)
    self.step, self.epoch = step, epoch


class TrainingInterrupted(KeyboardInterrupt):
  """The run was stopped by Ctrl-C (SIGINT) at a step boundary, after saving a checkpoint of
  that step if it has a run directory; the message says where it stopped and how to continue.

  Attributes:
    step: the training step it stopped after (``None``: it stopped while starting).
    detail: where it stopped and what was saved, without the advice on how to continue.
  """

  def __init__(self, message: str, *, step: int | None = None, detail: str | None = None):
    super().__init__(message)
    self.step, self.detail = step, detail or message


class TrainingPreempted(TrainingInterrupted):
  """The run was stopped by SIGTERM (a preemption, a scheduler's notice; with several
  processes, JAX's preemption service) at a step boundary, after saving a checkpoint of that
  step; running the same command again continues it. ``samx`` exits with status 75."""

