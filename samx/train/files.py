"""Writes that a kill, a full disk or a crash cannot leave half done, and reads that say what
they found.

Every file of a run directory is written by :func:`write_atomic`: the text goes to a temporary
file in the same directory, is flushed and fsynced, and is renamed over the target (an atomic
step on POSIX file systems), and then the directory itself is fsynced so that the rename
survives a power cut. A reader sees the old file or the new one, never a part of either.
``metrics.jsonl`` grows by :func:`append_line`, one ``write`` of a whole line, flushed and
fsynced; a line cut short (a full disk, a kill between two blocks of a long line) has no
newline at its end, and :func:`read_json_lines` drops it with a warning instead of trusting it.

A write that fails (``ENOSPC``, a read-only directory) raises ``RunFileError``, which names
the file; a failed atomic write leaves the previous file as it was.

Fault injection, for the tests: ``SAMX_FAULT_INJECTION=ACTION:FILE:POINT[:N]`` makes the ``N``-th
(default first) write of the file named ``FILE`` (its base name, e.g. ``metrics.jsonl``) stop at
``POINT``: ``partial`` (half of the bytes written), ``before_rename`` (the temporary file
complete and fsynced) or ``after_rename`` (renamed, the directory not yet fsynced; atomic writes
only). ``ACTION`` is ``kill`` (the process sends itself SIGKILL, as a preempted machine or the
OOM killer would) or ``enospc`` (the write raises ``ENOSPC``, as on a full disk). The variable is
read at each write and costs nothing when unset.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

FAULT_VARIABLE = "SAMX_FAULT_INJECTION"
FAULT_ACTIONS = ("kill", "enospc")
FAULT_POINTS = ("partial", "before_rename", "after_rename")
# A temporary file of write_atomic: ".NAME.<random>.tmp" beside NAME.
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".", ".samx-tmp"

_write_counts: dict[str, int] = {}


def _read_umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


# New files get the permissions that open() would give them (mkstemp's are 0600).
_NEW_FILE_MODE = 0o666 & ~_read_umask()


class RunFileError(OSError):
  """A file of a run directory could not be written or read as it must be; the message names
  the file and what to do.

  Attributes:
    errno: the OS error number (``errno.ENOSPC`` for a full disk).
    filename: the file.
    reason: what went wrong, without the advice (e.g. ``No space left on device``).
  """

  def __init__(self, error_number: int, message: str, *, filename: str | None = None,
               reason: str | None = None):
    super().__init__(error_number, message)
    self.filename, self.reason = filename, reason or message

  def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]"
    return self.strerror if self.strerror is not None else super().__str__()


def _fault(path: pathlib.Path, point: str) -> None:
  """Carries out ``$SAMX_FAULT_INJECTION`` if it names this write of ``path`` at ``point``."""
  spec = os.environ.get(FAULT_VARIABLE)
  if not spec:
    return
  parts = spec.split(":")
  if len(parts) not in (3, 4) or parts[0] not in FAULT_ACTIONS or parts[2] not in FAULT_POINTS:
    raise ValueError(f"{FAULT_VARIABLE} must look like ACTION:FILE:POINT[:N] with ACTION in "
                     f"{FAULT_ACTIONS} and POINT in {FAULT_POINTS}; got {spec!r}.")
  action, name, wanted_point = parts[:3]
  if name != path.name or wanted_point != point:
    return
  count = _write_counts.get(name, 0) + 1
  _write_counts[name] = count
  if count != (int(parts[3]) if len(parts) == 4 else 1):
    return
  if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fsync_directory(directory: pathlib.Path) -> None:
  try:
    descriptor = os.open(directory, os.O_RDONLY)
  except OSError:  # a platform or file system without directory handles
    return
  try:
    os.fsync(descriptor)
  except OSError:
    pass
  finally:
    os.close(descriptor)


# What to do about an error, by its errno, added to the message of a failed read or write.
_ADVICE = {errno.ENOSPC: "; free some space and run the same command again (what was written "
                         "before is intact)",
           errno.EACCES: "; make it writable or choose another directory",
           errno.EROFS: "; choose a directory on a writable file system"}


def _failed(path: pathlib.Path, error: OSError, action: str = "write") -> RunFileError:
  reason = error.strerror or str(error)
  advice = "" if error.errno is None else _ADVICE.get(error.errno, "")
  return RunFileError(error.errno or errno.EIO, f"could not {action} {path}: {reason}{advice}.",
                      filename=str(path), reason=reason)


def _write_through(handle, data: bytes, path: pathlib.Path) -> None:
  """Writes ``data`` to ``handle`` (its first half and fault point ``partial`` between), then
  flushes and fsyncs it."""
  half = len(data) // 2
  handle.write(data[:half])
  handle.flush()
  _fault(path, "partial")
  handle.write(data[half:])
  handle.flush()
  os.fsync(handle.fileno())


def write_atomic(path: str | pathlib.Path, text: str | bytes) -> None:
  """Replaces ``path`` by a file holding ``text`` (or bytes), all at once (see the module
  docstring).

  Raises ``RunFileError`` naming ``path`` if it cannot be written; ``path`` is then left
  as it was.
  """
  path = pathlib.Path(path)
  temporary = None
  try:
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX + path.name + ".",
                                        suffix=TEMPORARY_SUFFIX)
    temporary = pathlib.Path(name)
    os.fchmod(descriptor, path.stat().st_mode & 0o7777 if path.exists() else _NEW_FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
      _write_through(handle, text.encode() if isinstance(text, str) else text, path)
    _fault(path, "before_rename")
    os.replace(temporary, path)
    temporary = None
    _fault(path, "after_rename")
    _fsync_directory(path.parent)
  except OSError as error:
    if temporary is not None:
      temporary.unlink(missing_ok=True)
    raise _failed(path, error) from error


def append_line(path: str | pathlib.Path, line: str) -> None:
  """Appends ``line`` and a newline to ``path`` in one write, flushed and fsynced.

  Raises ``RunFileError`` naming ``path`` if it cannot be written.
  """
  path = pathlib.Path(path)
  if "\n" in line:
    raise ValueError("append_line writes one line; the text holds a newline.")
  try:
    with open(path, "ab") as handle:
      _write_through(handle, (line + "\n").encode(), path)
  except OSError as error:
    raise _failed(path, error) from error


def remove_temporaries(directory: str | pathlib.Path) -> list[pathlib.Path]:
  """Deletes the temporary files that interrupted atomic writes left in ``directory`` (only
  samx's own, by their names); returns them."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  removed = []
  for path in directory.iterdir():
    if (path.name.startswith(TEMPORARY_PREFIX) and path.name.endswith(TEMPORARY_SUFFIX)
        and path.is_file()):
      path.unlink(missing_ok=True)
      removed.append(path)
  return removed


def read_json(path: str | pathlib.Path, *, what: str, advice: str,
              kind: type | None = dict) -> Any:
  """The JSON value in ``path``, which must be a ``kind``.

  A file that cannot be read, is empty, is not JSON or holds another kind of value raises
  ``RunFileError`` naming it, saying ``what`` it should hold and ``advice`` (what to do).
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text()
  except UnicodeDecodeError:
    problem = "is not text"
  except OSError as error:
    raise _failed(path, error, "read") from error
  else:
    if not text.strip():
      problem = "is empty"
    else:
      try:
        value = json.loads(text)
      except json.JSONDecodeError as error:
        problem = f"is not valid JSON ({error.msg} at line {error.lineno})"
      else:
        if kind is None or isinstance(value, kind):
          return value
        problem = (f"holds a JSON {type(value).__name__}, not the "
                   f"{'object' if kind is dict else kind.__name__} it should")
  raise RunFileError(errno.EINVAL, f"{path} {problem}: it should hold {what}; {advice}.",
                     filename=str(path), reason=problem)


def read_json_lines(path: str | pathlib.Path, *,
                    warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """The JSON objects of a file written by :func:`append_line`, one per line.

  A last line without its newline (a write cut short) is dropped, with a warning through
  ``warn`` (default :func:`warnings.warn`); any other line that is not a JSON object raises
  ``RunFileError`` naming the file and the line.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return []
  try:
    data = path.read_bytes()
  except OSError as error:
    raise _failed(path, error, "read") from error
  lines = data.split(b"\n")
  tail = lines.pop()  # after the last newline: empty unless the last write was cut short
  if tail.strip():
    message = (f"{path}: dropped its last line, which was cut short ({len(tail)} bytes without "
               f"a newline: a write that did not finish)")
    (warn or (lambda text: warnings.warn(text, stacklevel=3)))(message)
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise RunFileError(errno.EINVAL, f"{path} line {number} is not valid JSON ({error}); the "
                         f"file was changed by something other than samx. Remove that line, or "
                         f"train the run again with --overwrite.") from error
    if not isinstance(record, dict):
      raise RunFileError(errno.EINVAL, f"{path} line {number} is not a JSON object.")
    records.append(record)
  return records
