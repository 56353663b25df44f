"""Under sharded parameters (tensor parallel, FSDP, both) every transform, whole-batch and
grouped, gives the unsharded update and adds no all-gather of a weight to the compiled step
beyond what gradient descent with two gradient evaluations has on the same layout.

The checks need XLA_FLAGS set before JAX starts, so they run in a subprocess.
"""

import pathlib

import pytest
from conftest import run_on_eight_cpu_devices

CHECKS = pathlib.Path(__file__).with_name("sharded_collectives_checks.py")


@pytest.mark.slow  # a subprocess that compiles 18 transforms on three 8-device layouts
def test_no_gather_beyond_gradient_descent():
  result = run_on_eight_cpu_devices(CHECKS, timeout=1800)
  assert result.returncode == 0, result.stdout + result.stderr
  # 18 transforms x 3 layouts, each reported.
  assert result.stdout.count("ok ") == 54, result.stdout
