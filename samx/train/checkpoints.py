"""Checkpoints of the training state with orbax-checkpoint, one per saved step, each with the
checksums of its files so that a damaged one is found before it is trained on.

Layout under ``RUN_DIR/checkpoints/``: one orbax step directory per save, named by the training
step it holds (``1300/``...; runs of earlier versions named them by epoch, and still resume),
each holding ``samx-progress.json`` (where in the run the step is: the epoch, and the metrics
of that epoch's steps so far, so that a run stopped mid-epoch ends with the same epoch record)
and ``samx-checksums.json`` (the size and SHA-256 of every file of the checkpoint). Saves are
asynchronous (training goes on while the arrays are written) and atomic: orbax writes into a
temporary directory and renames it when complete, and the progress and checksums are written
into that directory just before the rename, so a committed checkpoint always carries them. A
save interrupted by a kill leaves no checkpoint, only a temporary directory, which the next
writer removes. A save that fails (a full disk) stops the run at the next save or epoch
boundary.

On restore (:meth:`Checkpoints.restore_latest`) the newest checkpoint whose files match their
checksums is used; a damaged one (a flipped bit, a truncated file, a missing file) is moved to
``RUN_DIR/damaged-checkpoints/`` with a message, and the next older one is tried. If none is
intact, ``RunFileError`` says so and nothing is moved. A step directory without orbax's
metadata (an empty directory left by hand or by a crashed tool) is not a checkpoint and is set
aside the same way. With several processes, process 0 chooses and every process restores the
same checkpoint (``samx.train.agreement``).

When to save, besides the end of every ``checkpoint_every``-th epoch:
:class:`CheckpointSchedule` (every ``checkpoint_every_steps`` steps, every
``checkpoint_every_minutes`` minutes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from samx.train import agreement, stopping
from samx.train.files import RunFileError, read_json, write_atomic

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged-checkpoints"
CHECKSUM_FILE = "samx-checksums.json"
PROGRESS_FILE = "samx-progress.json"
ORBAX_METADATA = "_CHECKPOINT_METADATA"
ORBAX_TEMPORARY = ".orbax-checkpoint-tmp"
# Files orbax may still write or rewrite after the checksums (its commit markers).
_UNCHECKED = {CHECKSUM_FILE, ORBAX_METADATA, "commit_success.txt"}


def _file_digest(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _checked_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in step_dir.rglob("*")
                if p.is_file() and not (p.parent == step_dir and p.name in _UNCHECKED))


def write_checksums(step_dir: str | pathlib.Path) -> None:
  """Writes ``samx-checksums.json`` into a checkpoint's step directory."""
  step_dir = pathlib.Path(step_dir)
  files = {str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _file_digest(p)}
           for p in _checked_files(step_dir)}
  write_atomic(step_dir / CHECKSUM_FILE, json.dumps({"format": 1, "files": files}, indent=1))


def verify(step_dir: str | pathlib.Path) -> str | None:
  """What is wrong with the checkpoint in ``step_dir`` (``None``: its files match their
  checksums)."""
  step_dir = pathlib.Path(step_dir)
  if not (step_dir / ORBAX_METADATA).is_file():
    return "it is not a complete orbax checkpoint (no _CHECKPOINT_METADATA)"
  if not (step_dir / CHECKSUM_FILE).is_file():
    return f"it has no {CHECKSUM_FILE}"
  try:
    manifest = read_json(step_dir / CHECKSUM_FILE, what="the checkpoint's checksums",
                         advice="the checkpoint cannot be verified")
    files = manifest["files"]
  except (RunFileError, KeyError, TypeError):
    return f"its {CHECKSUM_FILE} is damaged"
  for name, expected in files.items():
    path = step_dir / name
    if not path.is_file():
      return f"{name} is missing"
    if path.stat().st_size != expected["bytes"]:
      return f"{name} has {path.stat().st_size} bytes, not {expected['bytes']}"
    if _file_digest(path) != expected["sha256"]:
      return f"{name} does not match its checksum"
  return None


def _step_dirs(directory: pathlib.Path) -> dict[int, pathlib.Path]:
  if not directory.is_dir():
    return {}
  return {int(p.name): p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()}


def saved_steps(run_dir: str | pathlib.Path) -> list[int]:
  """The steps (epochs, for runs of earlier versions) with a committed checkpoint in
  ``run_dir``, oldest first (not verified)."""
  directory = pathlib.Path(run_dir) / CHECKPOINT_DIR
  return sorted(step for step, path in _step_dirs(directory).items()
                if (path / ORBAX_METADATA).is_file())


def latest_step(run_dir: str | pathlib.Path) -> int | None:
  """The step of the latest committed checkpoint in ``run_dir`` (``None``: there is none)."""
  steps = saved_steps(run_dir)
  return steps[-1] if steps else None


def read_progress(run_dir: str | pathlib.Path, step: int) -> dict[str, Any] | None:
  """The ``samx-progress.json`` of the checkpoint of ``step`` (``None`` for a checkpoint of an
  earlier version, named by its epoch and saved at its end)."""
  path = pathlib.Path(run_dir) / CHECKPOINT_DIR / str(step) / PROGRESS_FILE
  if not path.is_file():
    return None
  return read_json(path, what="where in the run the checkpoint is",
                   advice="the checkpoint cannot be placed in its run")


def describe(run_dir: str | pathlib.Path, step: int) -> str:
  """Where the checkpoint of ``step`` is in its run, e.g. ``step 1300 (the end of epoch 13)``
  or ``step 1350 (50 of the 100 steps of epoch 14)``."""
  try:
    progress = read_progress(run_dir, step)
  except RunFileError:
    progress = None
  if progress is None:
    return f"epoch {step}"
  epoch, done = divmod(step, progress["steps_per_epoch"])
  if done == 0:
    return f"step {step} (the end of epoch {epoch})"
  return f"step {step} ({done} of the {progress['steps_per_epoch']} steps of epoch {epoch + 1})"


def _set_aside(run_dir: pathlib.Path, step_dir: pathlib.Path) -> pathlib.Path:
  """Moves a damaged step directory to ``run_dir/damaged-checkpoints/``; returns where."""
  target_dir = run_dir / DAMAGED_DIR
  target_dir.mkdir(exist_ok=True)
  target = target_dir / step_dir.name
  suffix = 1
  while target.exists():
    suffix += 1
    target = target_dir / f"{step_dir.name}-{suffix}"
  shutil.move(str(step_dir), target)
  return target


def tidy(run_dir: str | pathlib.Path) -> list[str]:
  """Removes what interrupted saves left under ``run_dir/checkpoints`` (orbax's temporary
  directories) and sets aside step directories that are not checkpoints; returns what it did,
  a sentence each. Only the process that holds the run directory's lock may call it."""
  run_dir = pathlib.Path(run_dir)
  directory = run_dir / CHECKPOINT_DIR
  if directory.exists() and not directory.is_dir():
    raise RunFileError(errno.ENOTDIR, f"{directory} is not a directory; samx keeps the run's "
                       f"checkpoints there: move it away, or choose another run directory.")
  done = []
  if not directory.is_dir():
    return done
  for path in directory.iterdir():
    if ORBAX_TEMPORARY in path.name and path.is_dir():
      shutil.rmtree(path)
      done.append(f"removed {path.name}, left by a checkpoint save that did not finish")
  for step, path in sorted(_step_dirs(directory).items()):
    if (path / ORBAX_METADATA).is_file():
      continue
    if not any(path.iterdir()):
      path.rmdir()
      done.append(f"removed the empty directory checkpoints/{step}")
    else:
      done.append(f"checkpoints/{step} is not a complete checkpoint; moved it to "
                  f"{_set_aside(run_dir, path).relative_to(run_dir)}")
  return done


class _ReportedBySamx(logging.Filter):
  """Drops orbax's log records of a background save that failed with an error samx reports
  itself (a ``RunFileError`` naming the file), so the user reads one message, not three
  tracebacks."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
      if isinstance(error, RunFileError):
        return False
      error = error.__cause__ or error.__context__
    return True


_log_filter = _ReportedBySamx()


def _abstract(like: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)


class Checkpoints:
  """The checkpoints of one run directory: saves, checks and restores.

  Args:
    run_dir: the run directory (checkpoints go to ``run_dir/checkpoints``).
    keep: how many of the latest checkpoints to keep.
    writer: whether this process writes the progress and checksums (process 0 of a multi-host
      run).
  """

  def __init__(self, run_dir: str | pathlib.Path, *, keep: int, writer: bool = True):
    self.run_dir = pathlib.Path(run_dir).absolute()
    self.directory = self.run_dir / CHECKPOINT_DIR
    self._writer = writer
    self._saving: int | None = None
    self._progress: dict[str, Any] | None = None
    self._closed = False
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._seal))
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self.last_saved: int | None = self._manager.latest_step()
    if _log_filter not in logging.getLogger("absl").filters:
      logging.getLogger("absl").addFilter(_log_filter)

  def _seal(self) -> None:
    """Runs in orbax's background thread when the files of a save are complete and not yet
    committed: writes the progress and the checksums into the temporary directory, which orbax
    then renames."""
    if not self._writer or self._saving is None:
      return
    step = self._saving
    pending = [p for p in self.directory.iterdir()
               if p.name.startswith(f"{step}{ORBAX_TEMPORARY}") and p.is_dir()]
    target = pending[0] if len(pending) == 1 else self.directory / str(step)
    if self._progress is not None:
      write_atomic(target / PROGRESS_FILE, json.dumps(self._progress, indent=1) + "\n")
    write_checksums(target)

  def _failed_save(self, error: Exception) -> RunFileError:
    if isinstance(error, RunFileError):
      cause = f"writing {error.filename}: {error.reason}"
    elif isinstance(error, OSError) and error.strerror:
      cause = f"{error.filename or 'a file'}: {error.strerror}"
    else:
      cause = f"{type(error).__name__}: {error}"
    return RunFileError(getattr(error, "errno", None) or errno.EIO,
                        f"could not save the checkpoint of step {self._saving} in "
                        f"{self.directory} ({cause}); training stopped. Free space (or fix the "
                        f"cause) and continue with: samx train --resume {self.run_dir}",
                        filename=str(self.directory), reason=cause)

  def wait(self) -> None:
    """Waits for the save in progress; raises ``RunFileError`` if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # orbax re-raises what its background thread met
      raise self._failed_save(error) from error

  def check(self) -> None:
    """Raises ``RunFileError`` if a save has failed (without waiting for one in
    progress)."""
    if not self._manager.is_saving_in_progress():
      self.wait()

  def save(self, step: int, state: Any, progress: dict[str, Any] | None = None) -> None:
    """Saves ``state`` (any pytree of arrays) as the checkpoint of training step ``step``, in
    the background, after the previous save has finished; ``progress`` (a JSON-ready dict) is
    stored beside it as ``samx-progress.json``. A step already saved is not saved again."""
    if step == self.last_saved:
      return
    self.wait()
    self._saving, self._progress = step, progress
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state))
    except Exception as error:
      raise self._failed_save(error) from error
    self.last_saved = step
    stopping.inject("save")

  def restore(self, step: int, like: Any) -> Any:
    """The checkpoint of ``step``, with the structure, dtypes and shardings of ``like``."""
    return self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(like)))

  def _newest_verified(self, excluded: set[int], problems: list[tuple[int, str]]) -> int:
    """The newest checkpoint (-1: none) not in ``excluded`` whose files match their checksums
    (or that has none, from an earlier version); adds the damaged ones it passes to
    ``excluded``, and their problems to ``problems``."""
    for step in reversed(saved_steps(self.run_dir)):
      if step in excluded:
        continue
      problem = verify(self.directory / str(step))
      if problem is None or problem == f"it has no {CHECKSUM_FILE}":
        return step
      excluded.add(step)
      problems.append((step, problem))
    return -1

  def restore_latest(self, like: Any, say: Callable[[str], None]
                     ) -> tuple[int, Any, dict[str, Any] | None]:
    """The newest intact checkpoint: ``(step, state, progress)``. Damaged newer ones are set
    aside, each with a message through ``say``; if none is intact, ``RunFileError``.
    Process 0 chooses, and every process restores the same one."""
    problems: list[tuple[int, str]] = []
    tried: set[int] = set()
    while True:
      step = agreement.from_process_zero(
          self._newest_verified(tried, problems) if self._writer else -1)
      if step < 0:
        break
      try:
        state, failure = self.restore(step, like), None
      except Exception as error:  # the checkpoint library's own error: a damaged file
        state, failure = None, f"orbax could not read it ({type(error).__name__}: {error})"
      if agreement.on_every_process(failure is None):
        self._report(step, problems, say)
        return step, state, read_progress(self.run_dir, step)
      tried.add(step)
      problems.append((step, failure or "another process could not read it"))
    listed = "; ".join(f"{describe(self.run_dir, s)}: {p}" for s, p in problems)
    raise RunFileError(errno.EIO, f"no intact checkpoint in {self.directory} "
                       f"({listed or 'there is none'}). Nothing was changed; start the run "
                       f"again with --overwrite, or restore the directory from a backup.")

  def _report(self, step: int, problems: list[tuple[int, str]],
              say: Callable[[str], None]) -> None:
    """Sets the damaged checkpoints aside (process 0) and says what was done."""
    for damaged, problem in problems:
      what = describe(self.run_dir, damaged)
      where = (_set_aside(self.run_dir, self.directory / str(damaged)) if self._writer else
               self.directory / str(damaged))
      say(f"the checkpoint of {what} is damaged ({problem}); moved it to {where}")
    if problems:
      say(f"falling back to the checkpoint of {describe(self.run_dir, step)}, the newest "
          f"intact one")
      self._manager.reload()  # every process reads the directory anew
    if not (self.directory / str(step) / CHECKSUM_FILE).is_file():
      say(f"the checkpoint of {describe(self.run_dir, step)} has no checksums (written by an "
          f"earlier samx); restored without verifying it")

  def close(self) -> int | None:
    """Waits for the saves, closes the manager, and returns the latest saved step; raises
    ``RunFileError`` if the last save failed."""
    if not self._closed:
      try:
        self.wait()
      finally:
        self._closed = True
        self._manager.close()
    return latest_step(self.run_dir)


class CheckpointSchedule:
  """When to save within an epoch: every ``every_steps`` training steps and/or every
  ``every_minutes`` minutes (0: never), counted from the last save.

  With several processes the clock of process 0 decides, checked every ``SYNC_EVERY`` steps
  (one small collective each time), so that every process saves at the same step.
  """

  SYNC_EVERY = 20

  def __init__(self, every_steps: int = 0, every_minutes: float = 0.0, *,
               clock: Callable[[], float] = time.monotonic):
    self.every_steps, self.every_seconds = every_steps, every_minutes * 60.0
    self._clock = clock
    self._last = clock()

  def saved(self) -> None:
    """Restarts the clock (a checkpoint was just saved)."""
    self._last = self._clock()

  def due(self, step: int) -> bool:
    """Whether to save after training step ``step`` (called on every process)."""
    if self.every_steps and step % self.every_steps == 0:
      return True
    if not self.every_seconds:
      return False
    late = self._clock() - self._last >= self.every_seconds
    if jax.process_count() == 1:
      return late
    if step % self.SYNC_EVERY:
      return False
    return bool(agreement.from_process_zero(int(late)))
