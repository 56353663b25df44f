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
from typing import Any

import jax

# Steps (or evaluation batches) the host may have dispatched and not yet seen finish: enough
# to keep an accelerator's queue full, far below the CPU client's per-device limit.
MAX_IN_FLIGHT = 4


class InFlight:
  """A window of dispatched outputs: :meth:`add` waits for the oldest once more than ``limit``
  are pending, so at most ``limit`` computations run ahead of the host."""

  def __init__(self, limit: int = MAX_IN_FLIGHT):
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
      raise ValueError(f"InFlight: limit must be an integer >= 1; got {limit!r}.")
    self.limit = limit
    self._outputs: collections.deque[Any] = collections.deque()

  @property
  def pending(self) -> int:
    """How many added outputs have not been waited for."""
    return len(self._outputs)

  def add(self, outputs: Any) -> None:
    """Records a dispatched computation's outputs (any pytree of arrays); blocks until the
    oldest recorded one is computed while more than ``limit`` are pending."""
    self._outputs.append(outputs)
    while len(self._outputs) > self.limit:
      jax.block_until_ready(self._outputs.popleft())
