"""One decision on every process: what process 0 decided, or whether all of them agree.

With one process these return their argument and cost nothing; with several (after
``jax.distributed.initialize``) each is a small collective that every process must call at the
same point, in the same order.
"""

from __future__ import annotations

import jax
import numpy as np


def from_process_zero(value: int) -> int:
  """Process 0's ``value`` (an integer), on every process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def on_every_process(flag: bool) -> bool:
  """Whether ``flag`` is true on every process."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
