"""One writer per run directory: an OS file lock held while a process writes it.

The lock is ``flock`` on ``RUN_DIR/.samx-lock``: the kernel releases it when the process ends,
however it ends (a kill, a crash, a preemption), so a stopped run never leaves a stale lock
behind. The lock file records who holds it (process id, host, command line), so that a second
writer is refused at once with a message that names the holder. Locks are re-entrant within a
process: ``samx compare`` locks its output directory and every run directory of its plan, and
:func:`samx.train.run` takes the lock it already holds.

Only process 0 of a multi-host run writes, and so only it locks. ``flock`` works on local file
systems and on NFS v4; on a file system without it (some FUSE mounts) the lock is skipped with a
warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import socket
import sys
import warnings
from collections.abc import Iterator

from samx.train.errors import RunDirectoryError

LOCK_FILE = ".samx-lock"

_held: dict[pathlib.Path, tuple[int, int]] = {}  # directory -> (file descriptor, depth)


def _holder(lock_path: pathlib.Path) -> str:
  """Who holds the lock at ``lock_path``, as its file records it."""
  try:
    text = lock_path.read_text().strip()
  except OSError:
    text = ""
  return text or "another process (which did not record its id)"


def _record_holder(descriptor: int) -> None:
  command = " ".join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
  text = f"process {os.getpid()} on {socket.gethostname()} ({command})\n"
  os.ftruncate(descriptor, 0)
  os.pwrite(descriptor, text.encode(), 0)


def acquire(directory: str | pathlib.Path) -> pathlib.Path:
  """Locks ``directory`` (creating it) for this process; returns its resolved path.

  Raises :class:`RunDirectoryError` naming the directory and the process that holds it when
  another process does.
  """
  directory = pathlib.Path(directory)
  if directory.exists() and not directory.is_dir():
    raise RunDirectoryError(f"{directory} is a file, not a directory; a run directory must be a "
                            f"directory: choose another path.")
  directory.mkdir(parents=True, exist_ok=True)
  key = directory.resolve()
  if key in _held:
    descriptor, depth = _held[key]
    _held[key] = (descriptor, depth + 1)
    return key
  lock_path = key / LOCK_FILE
  descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as error:
    os.close(descriptor)
    if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise RunDirectoryError(
          f"{directory} is being written by {_holder(lock_path)}; two runs must not write one "
          f"directory. Wait for that one to end (or stop it), or choose another directory."
      ) from None
    warnings.warn(f"{directory}: could not lock it ({error.strerror}); make sure that no other "
                  f"run writes it.", stacklevel=2)
    _held[key] = (-1, 1)
    return key
  _record_holder(descriptor)
  _held[key] = (descriptor, 1)
  return key


def release(directory: str | pathlib.Path) -> None:
  """Undoes one :func:`acquire` of ``directory``; the last one unlocks it."""
  key = pathlib.Path(directory).resolve()
  if key not in _held:
    return
  descriptor, depth = _held[key]
  if depth > 1:
    _held[key] = (descriptor, depth - 1)
    return
  del _held[key]
  if descriptor >= 0:
    with contextlib.suppress(OSError):
      os.ftruncate(descriptor, 0)
    os.close(descriptor)  # closing the last descriptor releases the flock


def holds(directory: str | pathlib.Path) -> bool:
  """Whether this process holds the lock of ``directory``."""
  return pathlib.Path(directory).resolve() in _held


@contextlib.contextmanager
def locked(directory: str | pathlib.Path, *, enabled: bool = True) -> Iterator[None]:
  """Holds the lock of ``directory`` for the ``with`` block (nothing when not ``enabled``).

  A directory that the block found missing and left with nothing but the lock file (a request
  refused before anything was written) is removed again.
  """
  if not enabled:
    yield
    return
  directory = pathlib.Path(directory).absolute()
  created = [d for d in (directory, *directory.parents) if not d.exists()]  # innermost first
  acquire(directory)
  try:
    yield
  finally:
    outermost = _held.get(directory.resolve(), (None, 0))[1] == 1
    release(directory)
    if created and outermost:
      with contextlib.suppress(OSError):
        if [p.name for p in directory.iterdir()] == [LOCK_FILE]:
          (directory / LOCK_FILE).unlink()
          for made in created:  # the directory, then the parents made for it, while empty
            made.rmdir()
