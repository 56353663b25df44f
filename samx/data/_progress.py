"""Progress of a long load on stderr: a tqdm bar on a terminal, else one line at most."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def _is_terminal(stream: TextIO | None) -> bool:
  try:
    return stream is not None and stream.isatty()
  except (AttributeError, ValueError):  # no isatty, or closed
    return False


class Progress:
  """Reports a load once it has run for ``delay`` seconds, and stays silent before.

  The load goes through stages (e.g. reading an archive, then decoding its images), each
  opened with :meth:`stage` and advanced with :meth:`update`. On a terminal each stage shows a
  tqdm bar; on anything else (a log file, CI) one line says what is being done, once.
  """

  def __init__(self, what: str, *, delay: float = 3.0, stream: TextIO | None = None):
    self.what = what
    self._delay = delay
    self._stream = sys.stderr if stream is None else stream
    self._terminal = _is_terminal(self._stream)
    self._start = time.monotonic()
    self._bar: tqdm | None = None
    self._said = False

  def stage(self, description: str, total: int, unit: str) -> None:
    """Starts a stage of ``total`` units (a bar on a terminal, appearing after the delay)."""
    self.close()
    if self._terminal:
      waited = time.monotonic() - self._start
      self._bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "B",
                       file=self._stream, delay=max(0.0, self._delay - waited), dynamic_ncols=True)

  def update(self, done: int) -> None:
    """Moves the current stage to ``done`` units."""
    if self._bar is not None:
      self._bar.update(done - self._bar.n)
    elif not (self._said or self._terminal) and time.monotonic() - self._start >= self._delay:
      if self._stream is not None:  # sys.stderr is None under pythonw
        print(f"samx: {self.what} ...", file=self._stream, flush=True)
      self._said = True

  def close(self) -> None:
    """Ends the current stage's bar."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
