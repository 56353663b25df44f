"""The run directory: the resolved config, per-epoch metrics, the summary, TensorBoard scalars.

Only process 0 of a multi-host run writes; every process reads. Layout::

    RUN_DIR/config.json      the resolved configuration (what --resume reads back)
    RUN_DIR/metrics.jsonl    one JSON object per epoch
    RUN_DIR/summary.json     written at the end (``status``: ``finished`` or ``diverged``)
    RUN_DIR/checkpoints/     orbax checkpoints with checksums (samx.train.checkpoints)
    RUN_DIR/tensorboard/     with tensorboard=True
    RUN_DIR/.samx-lock       held by the process that writes the run (samx.train.run_lock)

Every file is written atomically or appended a whole line at a time (samx.train.files), so a
kill or a full disk at any moment leaves each file either as it was or complete.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from samx.train import checkpoints, run_lock
from samx.train.config import Config, from_dict, to_dict
from samx.train.errors import ConfigError, RunDirectoryError
from samx.train.files import (
    append_line,
    read_json,
    read_json_lines,
    remove_temporaries,
    write_atomic,
)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


def is_writer() -> bool:
  """Whether this process writes files (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def strict_json(value: Any, **kwargs: Any) -> str:
  """``json.dumps`` of ``value`` with every NaN or infinite float written as ``null``, so that
  strict JSON parsers read every file samx writes."""

  def finite(item: Any) -> Any:
    if isinstance(item, float) and not math.isfinite(item):
      return None
    if isinstance(item, dict):
      return {key: finite(v) for key, v in item.items()}
    if isinstance(item, list | tuple):
      return [finite(v) for v in item]
    return item

  return json.dumps(finite(value), allow_nan=False, **kwargs)


class RunStatus(NamedTuple):
  """What a run directory holds.

  Attributes:
    kind: ``new`` (no run), ``finished`` (``summary.json`` written), ``diverged`` (stopped
      because it diverged; ``summary.json`` says where), ``resumable`` (unfinished, with a
      checkpoint) or ``unfinished`` (no checkpoint to continue from).
    config: the stored configuration (``None`` for ``new``).
    latest_checkpoint: the step of the latest checkpoint, if any (the epoch, for a checkpoint
      of an earlier version; ``samx.train.checkpoints.describe`` says which).
  """

  kind: str
  config: Config | None
  latest_checkpoint: int | None


def _check_is_directory(path: pathlib.Path) -> None:
  if path.exists() and not path.is_dir():
    raise RunDirectoryError(f"{path} is a file, not a run directory; choose another path.")


def inspect_run(run_dir: str | pathlib.Path) -> RunStatus:
  """Reads what ``run_dir`` holds, without changing it.

  Raises :class:`RunDirectoryError` if ``run_dir`` is a file, and ``RunFileError`` naming
  the file if ``config.json`` or ``summary.json`` cannot be read as samx wrote it.
  """
  path = pathlib.Path(run_dir)
  _check_is_directory(path)
  if not (path / CONFIG_FILE).exists() and not (path / METRICS_FILE).exists():
    return RunStatus("new", None, None)
  config = load_run_config(path)
  latest = checkpoints.latest_step(path)
  if (path / SUMMARY_FILE).exists():
    summary = read_summary(path)
    return RunStatus("diverged" if summary.get("status") == "diverged" else "finished", config,
                     latest)
  return RunStatus("resumable" if latest else "unfinished", config, latest)


def stored_config(run_dir: str | pathlib.Path, status: RunStatus) -> Config:
  """The configuration of the run in ``run_dir`` that ``status`` (not ``new``) describes: the
  one ``inspect_run`` read, else read again (which raises, naming the file, if there is
  none)."""
  return status.config if status.config is not None else load_run_config(run_dir)


def _held(run_dir: pathlib.Path, status: RunStatus) -> str:
  """What ``run_dir`` holds (not ``new``), in words, with the ways on for a resumable run."""
  if status.kind == "resumable" and status.latest_checkpoint is not None:
    return (f"an unfinished run (checkpoint of "
            f"{checkpoints.describe(run_dir, status.latest_checkpoint)}; continue it with samx "
            f"train --resume {run_dir}, or run this command again with --resume-if-exists)")
  return {"finished": "a finished run",
          "diverged": "a run that diverged",
          "unfinished": "an unfinished run with no checkpoint to continue from"}[status.kind]


def refuse_to_overwrite(run_dir: pathlib.Path, status: RunStatus) -> None:
  """Raises a :class:`RunDirectoryError` saying what ``run_dir`` holds and the ways on."""
  held = _held(run_dir, status)
  raise RunDirectoryError(f"{run_dir} already holds {held}; choose another run directory, or "
                          f"replace it with --overwrite (overwrite=True).")


# What to do with a run directory, given the configuration asked for (see :func:`decide`).
ACTIONS = ("train", "reuse", "diverged", "resume", "retrain", "overwrite", "refuse")


class Decision(NamedTuple):
  """What :func:`decide` found: the ``action`` (one of ``ACTIONS``), the directory's
  :class:`RunStatus`, and for ``refuse`` (or ``overwrite``) the keys that differ."""

  action: str
  status: RunStatus
  differences: list[str]


# The section that says where arrays live, not what is computed: a run may resume with other
# values (a checkpoint is restored onto the new layout).
LAYOUT_PREFIX = "sharding."


def config_differences(stored: Config, wanted: Config) -> list[str]:
  """``key: stored -> wanted`` for each configuration key that differs (the ``sharding``
  section aside: it may change between a run and its resumption)."""

  def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
      if isinstance(value, dict) and key != "options":
        out.update(flat(value, f"{prefix}{key}."))
      else:
        out[f"{prefix}{key}"] = value
    return out

  a, b = flat(to_dict(stored)), flat(to_dict(wanted))
  return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in b
          if a.get(key) != b.get(key) and not key.startswith(LAYOUT_PREFIX)]


def decide(run_dir: str | pathlib.Path, config: Config, *, overwrite: bool = False,
           retry_diverged: bool = False) -> Decision:
  """What a request to train ``config`` into ``run_dir`` does with what is there, the rule of
  ``samx compare`` and of ``samx train --resume-if-exists``: ``train`` (nothing there),
  ``reuse`` (finished with the same configuration: reported, not trained again), ``diverged``
  (ended by divergence with the same configuration: reported, unless ``retry_diverged``),
  ``resume`` (unfinished, with a checkpoint), ``retrain`` (unfinished with no checkpoint, or
  diverged and ``retry_diverged``: the same configuration, from the start), ``overwrite``
  (another configuration, replaced because ``overwrite``) or ``refuse`` (another
  configuration; ``differences`` names the keys).
  """
  status = inspect_run(run_dir)
  if status.kind == "new":
    return Decision("train", status, [])
  differences = config_differences(stored_config(run_dir, status), config)
  if differences:
    return Decision("overwrite" if overwrite else "refuse", status, differences)
  if status.kind == "diverged":
    return Decision("retrain" if retry_diverged else "diverged", status, [])
  return Decision({"finished": "reuse", "resumable": "resume", "unfinished": "retrain"}[
      status.kind], status, [])


def describe_differences(run_dir: pathlib.Path, differences: list[str]) -> str:
  """``RUN_DIR (key: a -> b; ...)``, at most three keys."""
  return (f"{run_dir} ({'; '.join(differences[:3])}"
          f"{'; ...' if len(differences) > 3 else ''})")


def remove_run(run_dir: pathlib.Path) -> None:
  """Deletes what a run directory holds (process 0), on an explicit request to overwrite it; the
  directory and its lock stay, held by this process."""
  if not is_writer() or not run_dir.exists():
    return
  for path in run_dir.iterdir():
    if path.name == run_lock.LOCK_FILE:
      continue
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    else:
      path.unlink()


def read_history(run_dir: str | pathlib.Path,
                 warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """The per-epoch records of ``run_dir/metrics.jsonl`` (a last line cut short by a full disk
  or a kill is dropped, with a warning through ``warn``)."""
  return read_json_lines(pathlib.Path(run_dir) / METRICS_FILE, warn=warn)


def read_summary(run_dir: str | pathlib.Path) -> dict[str, Any]:
  """The ``summary.json`` of a finished (or diverged) run."""
  return read_json(pathlib.Path(run_dir) / SUMMARY_FILE, what="the summary of the ended run",
                   advice=f"delete it, and continue the run with samx train --resume {run_dir} "
                          f"to write it again from the last checkpoint")


def load_run_config(run_dir: str | pathlib.Path) -> Config:
  """The resolved configuration a run directory was started with."""
  run_dir = pathlib.Path(run_dir)
  _check_is_directory(run_dir)
  path = run_dir / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a samx run directory.")
  advice = ("the run cannot be continued without it: put back the config.json it was started "
            "with, or start it again with --overwrite")
  values = read_json(path, what="the run's configuration (a JSON object)", advice=advice)
  try:
    return from_dict(values)
  except ConfigError as error:
    raise ConfigError(f"{path}: {error} ({advice}).") from None


class TensorBoardWriter:
  """Writes each numeric metric of an epoch record as a TensorBoard scalar at its step.

  Needs ``tensorboardX`` (``pip install "samx[tensorboard]"``).
  """

  def __init__(self, log_dir: pathlib.Path):
    try:
      from tensorboardX import SummaryWriter
    except ImportError as error:
      raise ImportError("TensorBoard logging needs tensorboardX: pip install "
                        "'samx[tensorboard]'.") from error
    self._writer = SummaryWriter(str(log_dir))

  def write(self, record: dict[str, Any]) -> None:
    for name, value in record.items():
      if name not in ("epoch", "step") and isinstance(value, int | float):
        self._writer.add_scalar(name, value, record["step"])
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class RunDirectory:
  """Where a run keeps its record: starts it, continues it, appends epochs, ends it.

  Every write is atomic or a whole-line append (``samx.train.files``); only process 0
  writes.
  """

  def __init__(self, path: str | pathlib.Path, *, tensorboard: bool = False):
    if tensorboard and importlib.util.find_spec("tensorboardX") is None:
      raise ImportError("TensorBoard logging needs tensorboardX: pip install "
                        "'samx[tensorboard]'.")
    self.path = pathlib.Path(path)
    self._tensorboard = tensorboard
    self._writer: TensorBoardWriter | None = None

  def tidy(self) -> list[str]:
    """Removes what interrupted writes left (temporary files and checkpoint directories);
    returns what it did. The caller holds the directory's lock."""
    if not is_writer():
      return []
    removed = [f"removed {p.name}, left by a write that did not finish"
               for p in remove_temporaries(self.path)]
    return removed + checkpoints.tidy(self.path)

  def start(self, config: Config) -> None:
    """Writes ``config.json``, which makes the directory a run (the caller has checked what
    the directory holds)."""
    if is_writer():
      self.path.mkdir(parents=True, exist_ok=True)
      write_atomic(self.path / CONFIG_FILE, strict_json(to_dict(config), indent=2) + "\n")
    self.open_tensorboard()

  def open_tensorboard(self) -> None:
    if is_writer() and self._tensorboard and self._writer is None:
      self._writer = TensorBoardWriter(self.path / TENSORBOARD_DIR)

  def continue_after(self, epoch: int, warn: Callable[[str], None] | None = None
                     ) -> list[dict[str, Any]]:
    """The records of epochs up to ``epoch`` (the checkpoint a resumed run starts from); the
    metrics file is cut back to them (atomically), dropping epochs logged after that
    checkpoint and a last line that a full disk or a kill cut short."""
    history = [record for record in read_history(self.path, warn) if record["epoch"] <= epoch]
    if is_writer():
      write_atomic(self.path / METRICS_FILE, "".join(strict_json(r) + "\n" for r in history))
    self.open_tensorboard()
    return history

  def append(self, record: dict[str, Any]) -> None:
    """Logs one epoch's record (metrics file and, if on, TensorBoard)."""
    if not is_writer():
      return
    append_line(self.path / METRICS_FILE, strict_json(record))
    if self._writer is not None:
      self._writer.write(record)

  def close(self) -> None:
    """Closes the TensorBoard writer (a run that stops early keeps what it wrote)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def finish(self, summary: dict[str, Any]) -> None:
    """Writes ``summary.json``, which marks the run ended (finished or diverged), and closes
    the writer."""
    self.close()
    if is_writer():
      write_atomic(self.path / SUMMARY_FILE, strict_json(summary, indent=2) + "\n")
