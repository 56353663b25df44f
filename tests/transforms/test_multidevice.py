"""The SAM family (SAM, ASAM, m-SAM, 1-SAM and its J-SAM and L-SAM by the layers' structure and
by vmap, SANER, GSAM, LookSAM, AE-SAM, masks, per-group rules) on 8
CPU devices (pmap, shard_map, jit over a Mesh) equals one device.

The checks need XLA_FLAGS set before JAX starts, so they run in a subprocess.
"""

import pathlib

import pytest
from conftest import run_on_eight_cpu_devices

CHECKS = pathlib.Path(__file__).with_name("multidevice_checks.py")


@pytest.mark.slow  # a subprocess that compiles every transform three ways on 8 devices
def test_eight_devices_match_one_device():
  result = run_on_eight_cpu_devices(CHECKS, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  # 14 transforms x (pmap, shard_map, mesh), each reported.
  assert result.stdout.count("ok ") == 42, result.stdout
