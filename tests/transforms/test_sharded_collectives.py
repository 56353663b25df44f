"""Under sharded parameters (tensor parallel, FSDP, both) every transform, whole-batch and
grouped, gives the unsharded update and adds no all-gather of a weight to the compiled step
beyond what gradient descent with two gradient evaluations has on the same layout.

The checks need XLA_FLAGS set before JAX starts, so they run in a subprocess.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from samx.train import virtual_cpu_devices_flags

CHECKS = pathlib.Path(__file__).with_name("sharded_collectives_checks.py")
REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a subprocess that compiles 17 transforms on three 8-device layouts
def test_no_gather_beyond_gradient_descent():
  path = os.pathsep.join([str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])])
  env = {**os.environ, "XLA_FLAGS": virtual_cpu_devices_flags(8),
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
  result = subprocess.run([sys.executable, str(CHECKS)], env=env, capture_output=True,
                          text=True, timeout=1800, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  # 17 transforms x 3 layouts, each reported.
  assert result.stdout.count("ok ") == 51, result.stdout
