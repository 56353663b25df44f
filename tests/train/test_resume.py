"""A run killed (SIGKILL) mid-training and resumed from its checkpoint ends exactly like an
uninterrupted run: the same metrics, bit for bit, and the same final parameters."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

SETTINGS = ["--set", "epochs=5", "--set", "checkpoint_every=1", "--set", "optimizer.name=saner",
            "--set", "data.options.train_size=24576", "--set", "model.hidden=384,384",
            "--set", "keep_checkpoints=10"]
TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")
STEPS_PER_EPOCH = 24576 // 128  # checkpoints are named by their step


def samx_train(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return [sys.executable, "-m", "samx", "train", "--no-progress", *args], env


def metrics(run_dir):
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def final_arrays(run_dir):
  with ocp.CheckpointManager((run_dir / "checkpoints").absolute()) as manager:
    restored = manager.restore(manager.latest_step())
  return jax.tree.leaves(restored)


@pytest.mark.slow  # three training subprocesses
def test_resume_after_kill_is_exact(tmp_path):
  killed, full = tmp_path / "killed", tmp_path / "full"
  command, env = samx_train("--run-dir", str(killed), *SETTINGS)
  process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while not (killed / "checkpoints" / str(2 * STEPS_PER_EPOCH)).exists():  # epoch 2's
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.monotonic() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  done = {p.name for p in (killed / "checkpoints").iterdir() if p.name.isdigit()}
  assert str(5 * STEPS_PER_EPOCH) not in done  # it was killed before the end

  command, env = samx_train("--resume", str(killed))
  subprocess.run(command, env=env, check=True, capture_output=True)
  command, env = samx_train("--run-dir", str(full), *SETTINGS)
  subprocess.run(command, env=env, check=True, capture_output=True)

  assert metrics(killed) == metrics(full)
  assert [r["epoch"] for r in metrics(killed)] == [1, 2, 3, 4, 5]
  for a, b in zip(final_arrays(killed), final_arrays(full), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_refuses_overrides_and_unknown_directories(tmp_path):
  command, env = samx_train("--resume", str(tmp_path / "nothing"))
  result = subprocess.run(command, env=env, capture_output=True, text=True)
  assert result.returncode == 2 and "is not a samx run directory" in result.stderr
  command, env = samx_train("--resume", str(tmp_path), "--set", "epochs=3")
  result = subprocess.run(command, env=env, capture_output=True, text=True)
  assert result.returncode == 2 and "drop --preset, --set" in result.stderr
