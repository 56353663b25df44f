"""The run directory: the resolved config, per-epoch metrics, the summary, TensorBoard scalars.

Only process 0 of a multi-host run writes; every process reads. Layout::

    RUN_DIR/config.json      the resolved configuration (what --resume reads back)
    RUN_DIR/metrics.jsonl    one JSON object per epoch
    RUN_DIR/summary.json     written at the end
    RUN_DIR/checkpoints/     orbax checkpoints (samx.train.checkpoints)
    RUN_DIR/tensorboard/     with tensorboard=True
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from samx.train.config import Config, from_dict, to_dict

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


def is_writer() -> bool:
  """Whether this process writes files (process 0 of a multi-host run)."""
  return jax.process_index() == 0


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
    self.path = pathlib.Path(path)
    self._tensorboard = tensorboard
    self._writer: TensorBoardWriter | None = None

  def start(self, config: Config, *, resume: bool) -> None:
    """Writes ``config.json``; a new run refuses a directory that already holds one."""
    if not resume and (self.path / METRICS_FILE).exists():
      raise FileExistsError(f"{self.path} already holds a run; continue it with resume (samx "
                            f"train --resume {self.path}) or choose another run directory.")
    if is_writer():
      self.path.mkdir(parents=True, exist_ok=True)
      (self.path / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2) + "\n")
      if self._tensorboard:
        self._writer = TensorBoardWriter(self.path / TENSORBOARD_DIR)

  def continue_after(self, epoch: int) -> list[dict[str, Any]]:
    """The records of epochs up to ``epoch`` (the checkpoint a resumed run starts from); the
    metrics file is cut back to them, dropping epochs logged after that checkpoint."""
    path = self.path / METRICS_FILE
    history = []
    if path.exists():
      for line in path.read_text().splitlines():
        if line.strip():
          record = json.loads(line)
          if record["epoch"] <= epoch:
            history.append(record)
    if is_writer():
      path.write_text("".join(json.dumps(r) + "\n" for r in history))
    return history

  def append(self, record: dict[str, Any]) -> None:
    """Logs one epoch's record (metrics file and, if on, TensorBoard)."""
    if not is_writer():
      return
    with open(self.path / METRICS_FILE, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._writer is not None:
      self._writer.write(record)

  def finish(self, summary: dict[str, Any]) -> None:
    """Writes ``summary.json`` and closes the TensorBoard writer."""
    if self._writer is not None:
      self._writer.close()
    if is_writer():
      (self.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
