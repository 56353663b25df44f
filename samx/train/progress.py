"""Live progress on the terminal, and optional TensorBoard scalars."""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any


class ProgressBar:
  """One line on stderr per epoch, redrawn in place with the step count, images/s and the
  running loss; the epoch's metrics replace it when the epoch ends.

  The device is asked for the running loss at most every ``refresh_seconds`` (each read
  waits for the step), so the bar does not slow training down.
  """

  def __init__(self, epochs: int, steps_per_epoch: int, *, enabled: bool = True,
               refresh_seconds: float = 0.5, stream=None, width: int = 24):
    self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
    self.enabled, self.refresh_seconds, self.width = enabled, refresh_seconds, width
    self.stream = sys.stderr if stream is None else stream
    self._epoch, self._step, self._started, self._drawn = 0, 0, 0.0, 0.0

  def start_epoch(self, epoch: int) -> None:
    self._epoch, self._step, self._started = epoch, 0, time.perf_counter()
    self._drawn = self._started

  def update(self, metrics: dict[str, Any]) -> None:
    self._step += 1
    if not self.enabled:
      return
    now = time.perf_counter()
    if now - self._drawn < self.refresh_seconds and self._step < self.steps_per_epoch:
      return
    self._drawn = now
    done = self._step / self.steps_per_epoch
    filled = int(done * self.width)
    rate = self._step / max(now - self._started, 1e-9)
    self.stream.write(f"\repoch {self._epoch}/{self.epochs} [{'#' * filled}"
                      f"{'.' * (self.width - filled)}] {self._step}/{self.steps_per_epoch} "
                      f"{rate:.1f} steps/s loss {float(metrics['loss']):.3f}   ")
    self.stream.flush()

  def end_epoch(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    from samx.train.engine import _epoch_line

    self.stream.write("\r" + _epoch_line(record, self.epochs) + " " * 8 + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self.stream.flush()


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
