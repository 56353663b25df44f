"""Stopping a run cleanly: SIGTERM and SIGINT become a request that the loop honours at the next
step boundary, where it saves a checkpoint of that step and ends.

Schedulers (SLURM, Kubernetes) and preemptible or spot machines send SIGTERM and wait a grace
period (often 30 s) before they kill; Ctrl-C sends SIGINT. While a run trains (inside
:meth:`StopSignals.deferred`), either signal only records the request: the loop sees it after
the step in flight (:meth:`StopSignals.reached`) or between two evaluation batches
(:meth:`StopSignals.requested_here`), saves, and raises
:class:`samx.train.errors.TrainingPreempted` (SIGTERM) or
:class:`samx.train.errors.TrainingInterrupted` (SIGINT). Outside it (starting up, before
anything is written) and for a second signal, :class:`Signalled` is raised at once.

Several processes (``jax.distributed``) must stop at the same step, or the next collective
would wait forever. JAX's preemption service does that: its own SIGTERM handler (installed by
``jax.distributed.initialize``) tells every process, and
:func:`jax.experimental.multihost_utils.reached_preemption_sync_point` becomes true on all of
them at the same step. There samx leaves SIGTERM to JAX and turns Ctrl-C into a SIGTERM of its
own process, so both take that route; a stop during evaluation then happens after the next
step.

Signal injection, for the tests: ``SAMX_SIGNAL_INJECTION=SIGNAL:POINT:N`` makes the process send
itself ``SIGNAL`` (``TERM`` or ``INT``) at the ``N``-th time it passes ``POINT``: ``step`` (a
training step dispatched), ``save`` (a checkpoint save started, its files still being written in
the background) or ``eval`` (an evaluation batch dispatched).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import jax
from jax.experimental import multihost_utils

SIGNAL_VARIABLE = "SAMX_SIGNAL_INJECTION"
INJECTION_POINTS = ("step", "save", "eval")
_passes: dict[str, int] = {}


class Signalled(KeyboardInterrupt):
  """A stop signal that could not wait for a step boundary (during start-up, or a second
  signal); ``signal_number`` says which."""

  def __init__(self, signal_number: int):
    super().__init__(signal.Signals(signal_number).name)
    self.signal_number = signal_number


class StopRequested(Exception):  # noqa: N818 (a request, not an error)
  """Raised inside the loop (between evaluation batches) to unwind to where it saves."""


def _preemption_service() -> Any | None:
  from jax._src import distributed  # the sync manager has no public accessor

  return distributed.global_state.preemption_sync_manager


class StopSignals:
  """SIGTERM and SIGINT as stop requests, for the duration of a ``with`` block.

  Handlers are installed only in the main thread (Python delivers signals there), and the
  previous ones are put back on exit.
  """

  def __init__(self) -> None:
    self.requested: int | None = None  # the signal that asked to stop
    self._deferring = False
    self._previous: dict[int, Any] = {}
    self._processes = jax.process_count()
    self._service = self._processes > 1 and _preemption_service() is not None

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is not threading.main_thread():
      return self
    handled = [signal.SIGINT]
    if self._processes == 1:
      handled.append(signal.SIGTERM)
    for number in handled:
      self._previous[number] = signal.signal(number, self._handle)
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous.clear()

  def _handle(self, number: int, frame: FrameType | None) -> None:
    if not self._deferring or self.requested is not None:
      self.__exit__()  # a third signal acts as the default does
      raise Signalled(number)
    self.requested = number
    if self._processes > 1:
      if not self._service:
        raise Signalled(number)  # no way to agree on a step: stop now, as before
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler: every process stops at one step

  @contextlib.contextmanager
  def deferred(self) -> Iterator[None]:
    """Within this block a first signal waits for the next step boundary."""
    self._deferring = True
    try:
      yield
    finally:
      self._deferring = False

  @property
  def preempted(self) -> bool:
    """Whether the stop was asked for by SIGTERM (or JAX's preemption service)."""
    return self.requested != signal.SIGINT

  def reached(self, step: int) -> bool:
    """Whether to stop after training step ``step`` (called after every step, on every
    process)."""
    if self._service:
      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = self.requested or signal.SIGTERM
        return True
      return False
    return self.requested is not None

  def requested_here(self) -> bool:
    """Whether to stop now, between two evaluation batches (never with several processes,
    which must stop at a training step)."""
    return self._processes == 1 and self.requested is not None


def inject(point: str) -> None:
  """Carries out ``$SAMX_SIGNAL_INJECTION`` if it names this pass through ``point``."""
  spec = os.environ.get(SIGNAL_VARIABLE)
  if not spec:
    return
  parts = spec.split(":")
  if (len(parts) != 3 or parts[0] not in ("TERM", "INT") or parts[1] not in INJECTION_POINTS
      or not parts[2].isdigit()):
    raise ValueError(f"{SIGNAL_VARIABLE} must look like TERM|INT:{'|'.join(INJECTION_POINTS)}:N; "
                     f"got {spec!r}.")
  if parts[1] != point:
    return
  _passes[point] = _passes.get(point, 0) + 1
  if _passes[point] == int(parts[2]):
    os.kill(os.getpid(), getattr(signal, f"SIG{parts[0]}"))
