"""Checkpoints of the training state with orbax-checkpoint, one per saved epoch, each with the
checksums of its files so that a damaged one is found before it is trained on.

Layout under ``RUN_DIR/checkpoints/``: one orbax step directory per saved epoch (``3/``...),
each holding ``samx-checksums.json`` (the size and SHA-256 of every file of the checkpoint).
Saves are asynchronous (training goes on while the arrays are written) and atomic: orbax writes
into a temporary directory and renames it when complete, and the checksums are written into
that directory just before the rename, so a committed checkpoint always carries them. A save
interrupted by a kill leaves no checkpoint, only a temporary directory, which the next writer
removes. A save that fails (a full disk) stops the run at the next epoch boundary.

On restore (:meth:`Checkpoints.restore_latest`) the newest checkpoint whose files match their
checksums is used; a damaged one (a flipped bit, a truncated file, a missing file) is moved to
``RUN_DIR/damaged-checkpoints/`` with a message, and the next older one is tried. If none is
intact, :class:`RunFileError` says so and nothing is moved. A step directory without orbax's
metadata (an empty directory left by hand or by a crashed tool) is not a checkpoint and is set
aside the same way.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from samx.train.files import RunFileError, read_json, write_atomic

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged-checkpoints"
CHECKSUM_FILE = "samx-checksums.json"
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


def saved_epochs(run_dir: str | pathlib.Path) -> list[int]:
  """The epochs with a committed checkpoint in ``run_dir``, oldest first (not verified)."""
  directory = pathlib.Path(run_dir) / CHECKPOINT_DIR
  return sorted(step for step, path in _step_dirs(directory).items()
                if (path / ORBAX_METADATA).is_file())


def latest_epoch(run_dir: str | pathlib.Path) -> int | None:
  """The epoch of the latest committed checkpoint in ``run_dir`` (``None``: there is none)."""
  epochs = saved_epochs(run_dir)
  return epochs[-1] if epochs else None


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
  itself (a :class:`RunFileError` naming the file), so the user reads one message, not three
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
    writer: whether this process writes the checksums (process 0 of a multi-host run).
  """

  def __init__(self, run_dir: str | pathlib.Path, *, keep: int, writer: bool = True):
    self.run_dir = pathlib.Path(run_dir).absolute()
    self.directory = self.run_dir / CHECKPOINT_DIR
    self._writer = writer
    self._saving: int | None = None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._seal))
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    if _log_filter not in logging.getLogger("absl").filters:
      logging.getLogger("absl").addFilter(_log_filter)

  def _seal(self) -> None:
    """Runs in orbax's background thread when the files of a save are complete and not yet
    committed: writes their checksums into the temporary directory, which orbax then renames."""
    if not self._writer or self._saving is None:
      return
    step = self._saving
    pending = [p for p in self.directory.iterdir()
               if p.name.startswith(f"{step}{ORBAX_TEMPORARY}") and p.is_dir()]
    target = pending[0] if len(pending) == 1 else self.directory / str(step)
    write_checksums(target)

  def _failed_save(self, error: Exception) -> RunFileError:
    if isinstance(error, RunFileError):
      cause = f"writing {error.filename}: {error.reason}"
    elif isinstance(error, OSError) and error.strerror:
      cause = f"{error.filename or 'a file'}: {error.strerror}"
    else:
      cause = f"{type(error).__name__}: {error}"
    return RunFileError(getattr(error, "errno", None) or errno.EIO,
                        f"could not save the checkpoint of epoch {self._saving} in "
                        f"{self.directory} ({cause}); training stopped. Free space (or fix the "
                        f"cause) and continue with: samx train --resume {self.run_dir}",
                        filename=str(self.directory), reason=cause)

  def wait(self) -> None:
    """Waits for the save in progress; raises :class:`RunFileError` if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # orbax re-raises what its background thread met
      raise self._failed_save(error) from error

  def check(self) -> None:
    """Raises :class:`RunFileError` if a save has failed (without waiting for one in
    progress)."""
    if not self._manager.is_saving_in_progress():
      self.wait()

  def save(self, epoch: int, state: Any) -> None:
    """Saves ``state`` (any pytree of arrays) as the checkpoint of ``epoch``, in the
    background, after the previous save has finished."""
    self.wait()
    self._saving = epoch
    try:
      self._manager.save(epoch, args=ocp.args.StandardSave(state))
    except Exception as error:
      raise self._failed_save(error) from error

  def restore(self, epoch: int, like: Any) -> Any:
    """The checkpoint of ``epoch``, with the structure, dtypes and shardings of ``like``."""
    return self._manager.restore(epoch, args=ocp.args.StandardRestore(_abstract(like)))

  def restore_latest(self, like: Any, say: Callable[[str], None]) -> tuple[int, Any]:
    """The newest intact checkpoint: ``(epoch, state)``. Damaged newer ones are set aside,
    each with a message through ``say``; if none is intact, :class:`RunFileError`."""
    problems = []
    for epoch in reversed(saved_epochs(self.run_dir)):
      step_dir = self.directory / str(epoch)
      problem = verify(step_dir)
      unverified = problem == f"it has no {CHECKSUM_FILE}"
      if problem is None or unverified:
        try:
          state = self.restore(epoch, like)
        except Exception as error:  # the checkpoint library's own error: a damaged file
          problem = f"orbax could not read it ({type(error).__name__}: {error})"
        else:
          for damaged_epoch, damaged_problem in problems:
            where = _set_aside(self.run_dir, self.directory / str(damaged_epoch)) if (
                self._writer) else self.directory / str(damaged_epoch)
            say(f"the checkpoint of epoch {damaged_epoch} is damaged ({damaged_problem}); "
                f"moved it to {where}")
          if problems:
            say(f"falling back to the checkpoint of epoch {epoch}, the newest intact one")
          if unverified:
            say(f"the checkpoint of epoch {epoch} has no checksums (written by an earlier "
                f"samx); restored without verifying it")
          if problems:  # every process reads the directory anew
            self._manager.reload()
          return epoch, state
      problems.append((epoch, problem))
    listed = "; ".join(f"epoch {e}: {p}" for e, p in problems) or "there is none"
    raise RunFileError(errno.EIO, f"no intact checkpoint in {self.directory} ({listed}). Nothing "
                       f"was changed; start the run again with --overwrite, or restore the "
                       f"directory from a backup.")

  def close(self) -> int | None:
    """Waits for the saves, closes the manager, and returns the latest saved epoch; raises
    :class:`RunFileError` if the last save failed."""
    try:
      self.wait()
    finally:
      self._manager.close()
    return latest_epoch(self.run_dir)
