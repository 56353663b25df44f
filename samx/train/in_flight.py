"""How far the host may run ahead of the devices.

JAX dispatches asynchronously: a Python loop of jitted steps queues them and moves on, so
without a bound the host can be a whole epoch ahead of the devices. Accelerators need only a
step or two queued to stay busy. On XLA's CPU backend with several devices (virtual ones, as
tests and notebooks use, or real sockets) running far ahead also deadlocks: a multi-device
computation is launched device by device on the client's worker threads, and a launch waits,
holding its thread, while its device already has the maximum number of computations in
flight (32 in jaxlib 0.10); the step those computations wait for needs one worker thread per
device for its collectives, and there are only as many threads as devices. All but one device
then wait in the all-reduce for a device whose computation can never get a thread (seen as
``Expected 8 threads to join the rendezvous, but not all of them arrived`` and a hang).
:class:`InFlight` keeps the host at most a few computations ahead.

And no more than about a second ahead: a stop request (SIGTERM, Ctrl-C; see
``samx.train.stopping``) can only save the state after the computations already
dispatched, so with steps of several seconds (a large model on a CPU) four of them in flight
would take much of a scheduler's 30-second grace period. :class:`InFlight` times the
computations it waits for and keeps ``lead_seconds`` of them pending at most (one at least),
which keeps a device busy all the same: a computation that long hides the host's dispatch.
Until it has timed two of them it keeps one pending (the first steps of a run).

Example:
  >>> import jax.numpy as jnp
  >>> in_flight = InFlight(limit=2)
  >>> for step in range(5):
  ...   in_flight.add(jnp.asarray(step) * 2)  # waits for the step from two steps ago
  >>> in_flight.pending
  2
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import jax

# Steps (or evaluation batches) the host may have dispatched and not yet seen finish: enough
# to keep an accelerator's queue full, far below the CPU client's per-device limit.
MAX_IN_FLIGHT = 4
# ... and about this many seconds of them.
MAX_LEAD_SECONDS = 1.0


class InFlight:
  """A window of dispatched outputs: :meth:`InFlight.add` waits for the oldest while more than
  ``limit`` are pending, or more than one and more than ``lead_seconds`` of computation (the
  time between the completions it has waited for, averaged), so the host runs at most
  ``limit`` computations and about ``lead_seconds`` ahead of the devices."""

  def __init__(self, limit: int = MAX_IN_FLIGHT, lead_seconds: float = MAX_LEAD_SECONDS, *,
               clock: Callable[[], float] = time.perf_counter):
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
      raise ValueError(f"InFlight: limit must be an integer >= 1; got {limit!r}.")
    if not lead_seconds > 0:
      raise ValueError(f"InFlight: lead_seconds must be > 0; got {lead_seconds!r}.")
    self.limit, self.lead_seconds = limit, lead_seconds
    self.seconds_each: float | None = None  # the computations' duration, as measured
    self._clock = clock
    self._last_done: float | None = None
    self._outputs: collections.deque[Any] = collections.deque()

  @property
  def pending(self) -> int:
    """How many added outputs have not been waited for."""
    return len(self._outputs)

  @property
  def allowed(self) -> int:
    """The number of computations that may be pending now (one until two completions have
    been timed, as a computation may take minutes; then as many as take about
    ``lead_seconds``)."""
    if self.seconds_each is None:
      return 1
    if self.seconds_each == 0:
      return self.limit
    return max(1, min(self.limit, int(self.lead_seconds / self.seconds_each)))

  def add(self, outputs: Any) -> None:
    """Records a dispatched computation's outputs (any pytree of arrays); blocks until the
    oldest recorded one is computed while more are pending than :attr:`allowed`."""
    self._outputs.append(outputs)
    while len(self._outputs) > self.allowed:
      self._wait_for_oldest()

  def make_room(self) -> None:
    """Blocks until fewer than :attr:`allowed` are pending, so that the next computation can
    be dispatched without waiting. Called before dispatching, it lets the caller look at a
    stop request with nothing more in flight than needed (one long step, not two)."""
    while self._outputs and len(self._outputs) >= self.allowed:
      self._wait_for_oldest()

  def _wait_for_oldest(self) -> None:
    jax.block_until_ready(self._outputs.popleft())
    done = self._clock()
    if self._last_done is not None:  # completions waited for back to back: one's duration
      interval = done - self._last_done
      self.seconds_each = interval if self.seconds_each is None else (
          0.5 * self.seconds_each + 0.5 * interval)
    self._last_done = done
