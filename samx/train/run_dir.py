"""The run directory: the resolved config, per-epoch metrics, the summary, TensorBoard scalars.

Only process 0 of a multi-host run writes; every process reads. Layout::

    RUN_DIR/config.json      the resolved configuration (what --resume reads back)
    RUN_DIR/metrics.jsonl    one JSON object per epoch
    RUN_DIR/summary.json     written at the end
    RUN_DIR/checkpoints/     orbax checkpoints (samx.train.checkpoints)
    RUN_DIR/tensorboard/     with tensorboard=True
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import shutil
from typing import Any, NamedTuple

import jax

from samx.train import checkpoints
from samx.train.config import Config, from_dict, to_dict
from samx.train.errors import RunDirectoryError

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
    kind: ``new`` (no run), ``finished`` (``summary.json`` written), ``resumable`` (unfinished,
      with a checkpoint) or ``unfinished`` (no checkpoint to continue from).
    config: the stored configuration (``None`` for ``new``).
    latest_checkpoint: the epoch of the latest checkpoint, if any.
  """

  kind: str
  config: Config | None
  latest_checkpoint: int | None


def inspect_run(run_dir: str | pathlib.Path) -> RunStatus:
  """Reads what ``run_dir`` holds, without changing it."""
  path = pathlib.Path(run_dir)
  if not (path / CONFIG_FILE).exists() and not (path / METRICS_FILE).exists():
    return RunStatus("new", None, None)
  config = load_run_config(path)
  if (path / SUMMARY_FILE).exists():
    return RunStatus("finished", config, checkpoints.latest_epoch(path))
  latest = checkpoints.latest_epoch(path)
  return RunStatus("resumable" if latest else "unfinished", config, latest)


def refuse_to_overwrite(run_dir: pathlib.Path, status: RunStatus) -> None:
  """Raises a :class:`RunDirectoryError` saying what ``run_dir`` holds and the ways on."""
  held = {"finished": "a finished run",
          "resumable": f"an unfinished run (checkpoint of epoch {status.latest_checkpoint}; "
                       f"continue it with samx train --resume {run_dir})",
          "unfinished": "an unfinished run with no checkpoint to continue from"}[status.kind]
  raise RunDirectoryError(f"{run_dir} already holds {held}; choose another run directory, or "
                          f"replace it with --overwrite (overwrite=True).")


def remove_run(run_dir: pathlib.Path) -> None:
  """Deletes a run directory (process 0), on an explicit request to overwrite it."""
  if is_writer() and run_dir.exists():
    shutil.rmtree(run_dir)


def read_history(run_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The per-epoch records of ``run_dir/metrics.jsonl``."""
  path = pathlib.Path(run_dir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: str | pathlib.Path) -> dict[str, Any]:
  """The ``summary.json`` of a finished run."""
  return json.loads((pathlib.Path(run_dir) / SUMMARY_FILE).read_text())


def load_run_config(run_dir: str | pathlib.Path) -> Config:
  """The resolved configuration a run directory was started with."""
  path = pathlib.Path(run_dir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a samx run directory.")
  return from_dict(json.loads(path.read_text()))


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
  """Where a run keeps its record: starts it, continues it, appends epochs, ends it."""

  def __init__(self, path: str | pathlib.Path, *, tensorboard: bool = False):
    if tensorboard and importlib.util.find_spec("tensorboardX") is None:
      raise ImportError("TensorBoard logging needs tensorboardX: pip install "
                        "'samx[tensorboard]'.")
    self.path = pathlib.Path(path)
    self._tensorboard = tensorboard
    self._writer: TensorBoardWriter | None = None

  def start(self, config: Config) -> None:
    """Writes ``config.json`` (the caller has checked what the directory holds)."""
    if is_writer():
      self.path.mkdir(parents=True, exist_ok=True)
      (self.path / CONFIG_FILE).write_text(strict_json(to_dict(config), indent=2) + "\n")
      if self._tensorboard:
        self._writer = TensorBoardWriter(self.path / TENSORBOARD_DIR)

  def continue_after(self, epoch: int) -> list[dict[str, Any]]:
    """The records of epochs up to ``epoch`` (the checkpoint a resumed run starts from); the
    metrics file is cut back to them, dropping epochs logged after that checkpoint."""
    path = self.path / METRICS_FILE
    history = [record for record in read_history(self.path) if record["epoch"] <= epoch]
    if is_writer():
      path.write_text("".join(strict_json(r) + "\n" for r in history))
    return history

  def append(self, record: dict[str, Any]) -> None:
    """Logs one epoch's record (metrics file and, if on, TensorBoard)."""
    if not is_writer():
      return
    with open(self.path / METRICS_FILE, "a") as f:
      f.write(strict_json(record) + "\n")
    if self._writer is not None:
      self._writer.write(record)

  def close(self) -> None:
    """Closes the TensorBoard writer (a run that stops early keeps what it wrote)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def finish(self, summary: dict[str, Any]) -> None:
    """Writes ``summary.json``, which marks the run finished, and closes the writer."""
    self.close()
    if is_writer():
      (self.path / SUMMARY_FILE).write_text(strict_json(summary, indent=2) + "\n")
