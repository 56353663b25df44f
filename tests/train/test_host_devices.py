"""The XLA flags for virtual CPU devices: what they hold, what they keep, that XLA takes them."""

import os
import subprocess
import sys
import textwrap

import pytest

from samx.train import virtual_cpu_devices_flags


def as_dict(flags: str) -> dict[str, str]:
  return dict(flag.split("=", 1) for flag in flags.split())


def test_sets_the_device_count_and_a_patient_collective_timeout():
  flags = as_dict(virtual_cpu_devices_flags(8, collective_timeout_seconds=600, existing=""))
  assert flags == {"--xla_force_host_platform_device_count": "8",
                   "--xla_cpu_collective_call_terminate_timeout_seconds": "600",
                   "--xla_cpu_collective_call_warn_stuck_timeout_seconds": "200"}


def test_keeps_other_flags_and_replaces_its_own():
  existing = ("--xla_force_host_platform_device_count=2 --xla_cpu_enable_fast_math=false "
              "--xla_cpu_collective_call_terminate_timeout_seconds=40")
  flags = virtual_cpu_devices_flags(4, existing=existing)
  assert as_dict(flags)["--xla_force_host_platform_device_count"] == "4"
  assert as_dict(flags)["--xla_cpu_collective_call_terminate_timeout_seconds"] == "900"
  assert "--xla_cpu_enable_fast_math=false" in flags.split()
  assert len(flags.split()) == 4


def test_reads_the_current_flags_by_default(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/somewhere")
  assert "--xla_dump_to=/tmp/somewhere" in virtual_cpu_devices_flags(2).split()


@pytest.mark.parametrize("count", [0, -1, 2.0, True, "8"])
def test_refuses_a_count_that_is_not_a_positive_integer(count):
  with pytest.raises(ValueError, match="count must be a positive integer"):
    virtual_cpu_devices_flags(count, existing="")


@pytest.mark.parametrize("seconds", [0, 2, 30.5, None])
def test_refuses_a_timeout_that_is_not_whole_seconds(seconds):
  with pytest.raises(ValueError, match="collective_timeout_seconds must be an integer"):
    virtual_cpu_devices_flags(8, collective_timeout_seconds=seconds, existing="")


@pytest.mark.slow  # a subprocess that starts JAX on 8 devices
def test_xla_accepts_the_flags_and_makes_the_devices():
  # XLA aborts on a flag it does not know, so a psum over 8 devices proves all three are known.
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp
      total = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")(jnp.arange(8.0))
      print(jax.device_count(), float(total[0]))
      """)
  env = {**os.environ, "XLA_FLAGS": virtual_cpu_devices_flags(8, existing=""),
         "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["8", "28.0"]
