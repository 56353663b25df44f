"""Virtual CPU devices: many-device code run and tested on one machine.

XLA splits the host CPU into ``count`` devices when ``XLA_FLAGS`` holds
``--xla_force_host_platform_device_count=count`` before JAX starts its backends (importing
JAX does not start them; the first computation or ``jax.devices()`` does). Their collectives
(the all-reduce of a sharded batch's gradient, ``psum`` under ``pmap``) are a rendezvous of one
thread per device, and XLA aborts the whole process when a thread has not arrived after
``--xla_cpu_collective_call_terminate_timeout_seconds`` (40 s by default). On a machine shared
with other work, eight device threads on two cores may be starved that long, and a correct
program would die. :func:`virtual_cpu_devices_flags` sets both flags, the timeout generously.
A collective that never completes is another matter: a host loop that dispatches many steps
ahead of the devices can hang XLA's CPU client (see :mod:`samx.train.in_flight`), and a longer
timeout only makes it hang longer; bound the loop with :class:`samx.train.InFlight`.

Example (the environment of a subprocess; set ``os.environ`` itself before JAX starts):
  >>> import os
  >>> from samx.train import virtual_cpu_devices_flags
  >>> env = {**os.environ, "XLA_FLAGS": virtual_cpu_devices_flags(8, existing="")}
  >>> env["XLA_FLAGS"].split()[0]
  '--xla_force_host_platform_device_count=8'
"""

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
COLLECTIVE_TERMINATE_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
COLLECTIVE_WARN_FLAG = "--xla_cpu_collective_call_warn_stuck_timeout_seconds"
OWN_FLAGS = (DEVICE_COUNT_FLAG, COLLECTIVE_TERMINATE_FLAG, COLLECTIVE_WARN_FLAG)


def virtual_cpu_devices_flags(count: int, *, collective_timeout_seconds: int = 900,
                              existing: str | None = None) -> str:
  """The ``XLA_FLAGS`` value that makes ``count`` CPU devices with patient collectives.

  Args:
    count: how many devices to split the host CPU into (a positive integer).
    collective_timeout_seconds: how long a collective waits for a starved device thread before
      XLA aborts the process; a warning is logged at a third of it.
    existing: the flags to keep (default: the current ``XLA_FLAGS``); earlier values of the
      flags set here are replaced.

  Returns:
    The flags, to assign to ``os.environ["XLA_FLAGS"]`` (or a subprocess's environment) before
    JAX starts its backends.
  """
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(f"count must be a positive integer number of devices; got {count!r}.")
  if (isinstance(collective_timeout_seconds, bool)
      or not isinstance(collective_timeout_seconds, int) or collective_timeout_seconds < 3):
    raise ValueError("collective_timeout_seconds must be an integer number of seconds, at "
                     f"least 3; got {collective_timeout_seconds!r}.")
  existing = os.environ.get("XLA_FLAGS", "") if existing is None else existing
  kept = [flag for flag in existing.split() if flag.split("=", 1)[0] not in OWN_FLAGS]
  return " ".join([f"{DEVICE_COUNT_FLAG}={count}",
                   f"{COLLECTIVE_TERMINATE_FLAG}={collective_timeout_seconds}",
                   f"{COLLECTIVE_WARN_FLAG}={collective_timeout_seconds // 3}", *kept])
