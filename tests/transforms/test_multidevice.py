"""The SAM family (SAM, ASAM, m-SAM, 1-SAM and its J-SAM and L-SAM by the layers' structure and
by vmap, SANER, GSAM, LookSAM, AE-SAM, masks, per-group rules) on 8
CPU devices (pmap, shard_map, jit over a Mesh) equals one device.

The checks need XLA_FLAGS set before JAX starts, so they run in a subprocess.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from samx.train import virtual_cpu_devices_flags

CHECKS = pathlib.Path(__file__).with_name("multidevice_checks.py")
# The checkout under test, first on the subprocess's path: pytest puts it on this process's
# path, but an installed samx (or none) is what a bare subprocess would import.
REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a subprocess that compiles every transform three ways on 8 devices
def test_eight_devices_match_one_device():
  path = os.pathsep.join([str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])])
  env = {**os.environ, "XLA_FLAGS": virtual_cpu_devices_flags(8),
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
  result = subprocess.run([sys.executable, str(CHECKS)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  # 14 transforms x (pmap, shard_map, mesh), each reported.
  assert result.stdout.count("ok ") == 42, result.stdout
