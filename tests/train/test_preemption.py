"""Preemptible machines: SIGTERM (or Ctrl-C) stops a run at a step boundary and saves that step;
the same command (``--resume-if-exists``, ``resume="auto"``) starts, continues or reports the
run; every resumed history equals the uninterrupted run's, bit for bit.

Signals are sent at chosen points with ``SAMX_SIGNAL_INJECTION`` (see samx.train.stopping) in
this process, and from outside at random moments to training subprocesses (the slow tests,
among them two processes through jax.distributed, stopped together by JAX's preemption
service)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from samx import cli, train
from samx.train import checkpoints, files, stopping

TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")
# 8 steps per epoch, 3 epochs: the checkpoints of the epochs are those of steps 8, 16 and 24.
SETTINGS = ["data.options.train_size=1024", "data.options.test_size=512", "epochs=3",
            "eval_batch_size=512", "checkpoint_every=1", "keep_checkpoints=3",
            "optimizer.name=saner", "saner.warmup_epochs=1"]


def config(*extra):
  return train.override(train.preset("quickstart"), [*SETTINGS, *extra])


def history(run_dir):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in files.read_json_lines(run_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: its history and final parameters."""
  run_dir = tmp_path_factory.mktemp("reference") / "run"
  result = train.run(config(), run_dir, log=None)
  return history(run_dir), [np.asarray(x) for x in jax.tree.leaves(result.state.params)]


def assert_same_as_reference(run_dir, result, reference):
  assert history(run_dir) == reference[0]
  for a, b in zip(jax.tree.leaves(result.state.params), reference[1], strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.fixture
def send(monkeypatch):
  """``send("TERM:step:5")``: this process signals itself there (the pass counts from 0)."""

  def at(spec):
    monkeypatch.setenv(stopping.SIGNAL_VARIABLE, spec)
    monkeypatch.setattr(stopping, "_passes", {})

  yield at
  monkeypatch.delenv(stopping.SIGNAL_VARIABLE, raising=False)


# (signal, point, pass, the step the run stops after, where its checkpoint is)
STOPS = [
    ("TERM", "step", 5, 5, "5 of the 8 steps of epoch 1"),  # mid-epoch
    ("TERM", "save", 1, 9, "1 of the 8 steps of epoch 2"),  # while epoch 1's save is written
    ("INT", "eval", 1, 8, "the end of epoch 1"),  # during epoch 1's evaluation: not recorded
    pytest.param("TERM", "step", 16, 16, "the end of epoch 2",  # an epoch's last step
                 marks=pytest.mark.slow),
    pytest.param("TERM", "eval", 8, 24, "the end of epoch 3",  # the last evaluation
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "point", "count", "step", "where"), STOPS)
def test_a_stop_saves_the_step_and_the_same_call_continues_exactly(
    tmp_path, reference, send, name, point, count, step, where):
  run_dir = tmp_path / "run"
  handler = signal.getsignal(signal.SIGTERM)
  send(f"{name}:{point}:{count}")
  error = train.TrainingPreempted if name == "TERM" else train.TrainingInterrupted
  with pytest.raises(error) as stopped:
    train.run(config(), run_dir, resume="auto", log=None)
  assert isinstance(stopped.value, train.TrainingInterrupted)  # both are
  assert stopped.value.step == step
  message = str(stopped.value)
  assert f"stopped after step {step}" in message
  assert f"saved the checkpoint of step {step} ({where})" in message
  assert "--resume-if-exists" in message and f"samx train --resume {run_dir}" in message
  assert checkpoints.latest_step(run_dir) == step
  assert signal.getsignal(signal.SIGTERM) is handler  # the handlers are put back
  send("TERM:step:0")  # no more signals
  messages = []
  result = train.run(config(), run_dir, resume="auto", log=messages.append)
  assert f"resuming {run_dir} from the checkpoint of step {step} ({where})" in messages
  assert_same_as_reference(run_dir, result, reference)


def test_checkpoints_every_n_steps_restore_mid_epoch(tmp_path, reference, send):
  run_dir = tmp_path / "run"
  settings = ("checkpoint_every=0", "checkpoint_every_steps=5", "keep_checkpoints=10")
  send("TERM:step:13")
  with pytest.raises(train.TrainingPreempted):
    train.run(config(*settings), run_dir, resume="auto", log=None)
  assert checkpoints.saved_steps(run_dir) == [5, 10, 13]
  progress = checkpoints.read_progress(run_dir, 10)
  assert (progress["step"], progress["epoch"], progress["steps_per_epoch"]) == (10, 1, 8)
  assert len(progress["step_metrics"]["loss"]) == 2  # steps 9 and 10 of epoch 2
  # as if the process had been killed before its last save: step 10 is the newest
  (run_dir / "checkpoints" / "13" / checkpoints.ORBAX_METADATA).unlink()
  send("TERM:step:0")
  messages = []
  result = train.run(config(*settings), run_dir, resume="auto", log=messages.append)
  assert any("from the checkpoint of step 10 (2 of the 8 steps of epoch 2)" in m
             for m in messages), messages
  assert checkpoints.saved_steps(run_dir) == [5, 10, 15, 20]
  assert_same_as_reference(run_dir, result, reference)


def test_checkpoints_by_time(tmp_path):
  clock = [0.0]
  schedule = checkpoints.CheckpointSchedule(every_minutes=2, clock=lambda: clock[0])
  assert not schedule.due(1)
  clock[0] = 119.0
  assert not schedule.due(2)
  clock[0] = 120.0
  assert schedule.due(3)
  schedule.saved()
  clock[0] = 200.0
  assert not schedule.due(4)
  both = checkpoints.CheckpointSchedule(every_steps=4, every_minutes=0)
  assert [step for step in range(1, 13) if both.due(step)] == [4, 8, 12]
  # in a run: a tiny interval saves at every step (the latest kept)
  run_dir = tmp_path / "run"
  train.run(config("epochs=1", "checkpoint_every=0", "checkpoint_every_minutes=1e-9",
                   "keep_checkpoints=20"), run_dir, log=None)
  assert checkpoints.saved_steps(run_dir) == list(range(1, 9))


def test_resume_if_exists_starts_continues_reports_and_refuses(tmp_path, capsys):
  run_dir = tmp_path / "run"
  args = ["train", "--no-progress", "--run-dir", str(run_dir), "--resume-if-exists",
          *[item for setting in (*SETTINGS, "epochs=1") for item in ("--set", setting)]]
  assert cli.main(args) == 0  # new: started
  stamp = (run_dir / "metrics.jsonl").stat().st_mtime_ns
  assert cli.main(args) == 0  # finished: reported, nothing rewritten
  assert "is finished (summary.json); nothing to do" in capsys.readouterr().out
  assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == stamp
  # another configuration: refused, naming the keys
  assert cli.main([*args, "--set", "optimizer.rho=0.2", "--set", "seed=3"]) == 2
  err = capsys.readouterr().err
  assert "optimizer.rho: 0.3 -> 0.2" in err and "seed: 0 -> 3" in err and "--overwrite" in err
  assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == stamp
  # ... and replaced with --overwrite
  assert cli.main([*args, "--set", "seed=3", "--overwrite"]) == 0
  assert train.load_run_config(run_dir).seed == 3
  # --resume (the stored configuration) and --resume-if-exists do not mix
  assert cli.main(["train", "--resume", str(run_dir), "--resume-if-exists"]) == 2


def test_resume_if_exists_retrains_a_run_without_checkpoint_and_reports_divergence(tmp_path):
  run_dir = tmp_path / "run"
  quick = config("epochs=1", "checkpoint_every=0")
  first = train.run(quick, run_dir, resume="auto", log=None)
  (run_dir / "summary.json").unlink()  # killed before its end, with no checkpoint
  assert train.inspect_run(run_dir).kind == "unfinished"
  again = train.run(quick, run_dir, resume="auto", log=None)
  assert history(run_dir) == [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                              for r in first.history]
  assert again.state is not None
  diverging = config("epochs=1", "optimizer.learning_rate=1e6", "optimizer.rho=1e6")
  with pytest.raises(train.TrainingDivergedError):
    train.run(diverging, tmp_path / "diverged", resume="auto", log=None)
  with pytest.raises(train.TrainingDivergedError, match="diverged at step .*other settings"):
    train.run(diverging, tmp_path / "diverged", resume="auto", log=None)
  with pytest.raises(ValueError, match="resume must be False, True or 'auto'"):
    train.run(quick, run_dir, resume="yes", log=None)


def test_a_stop_without_a_run_directory_and_a_second_signal(tmp_path, send, monkeypatch):
  send("INT:step:3")
  with pytest.raises(train.TrainingInterrupted, match="after step 3 .*nothing saved"):
    train.run(config("epochs=1"), log=None)
  # a second signal while the stop's checkpoint is written stops at once
  send("TERM:step:4")
  original = stopping.inject

  def again_while_saving(point):
    if point == "save":
      os.kill(os.getpid(), signal.SIGTERM)
    original(point)

  monkeypatch.setattr(stopping, "inject", again_while_saving)
  with pytest.raises(train.TrainingPreempted, match="stopped at once by a second signal"):
    train.run(config("checkpoint_every=0"), tmp_path / "run", log=None)


def test_a_stopped_comparison_says_to_run_it_again_and_then_finishes(tmp_path, send, capsys):
  out = tmp_path / "cmp"
  send("TERM:step:11")  # in the second entry (8 steps per epoch, 1 epoch each)
  args = ["compare", "--no-progress", "--optimizers", "sgd,sam", "--out", str(out),
          *[item for setting in (*SETTINGS, "epochs=1") for item in ("--set", setting)]]
  assert cli.main(args) == 75
  err = capsys.readouterr().err
  assert "sam: stopped after step 3 (epoch 1 of 1)" in err
  assert "run the same samx compare command again" in err and "samx train" not in err
  send("TERM:step:0")
  assert cli.main(args) == 0
  logged = capsys.readouterr().out
  assert "== sgd == (reuse)" in logged and "== sam == (resume)" in logged
  assert (out / "compare.md").exists()


@pytest.mark.slow  # a training subprocess (the in-process tests cover the same path)
def test_the_signal_is_honoured_in_the_cli_with_status_75(tmp_path):
  """A real SIGTERM from outside, at a random moment of training."""
  run_dir = tmp_path / "run"
  command = [sys.executable, "-m", "samx", "train", "--no-progress", "--run-dir", str(run_dir),
             "--resume-if-exists",
             *[item for setting in (*SETTINGS, "epochs=40") for item in ("--set", setting)]]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop(stopping.SIGNAL_VARIABLE, None)
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  wait_for_training(process, run_dir)
  time.sleep(random.uniform(0.0, 0.5))
  sent = time.monotonic()
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  seconds = time.monotonic() - sent
  assert process.returncode == 75, err[-2000:]
  assert "stopped after step" in err and "saved the checkpoint of step" in err
  print(f"SIGTERM to exit: {seconds:.2f} s")


def wait_for_training(process, run_dir, epochs=1, timeout=240):
  """Waits until ``run_dir`` has recorded ``epochs`` epochs."""
  deadline = time.monotonic() + timeout
  path = run_dir / "metrics.jsonl"
  while not path.exists() or len(path.read_text().splitlines()) < epochs:
    assert process.poll() is None, process.communicate()[1][-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)


@pytest.mark.slow  # training subprocesses, stopped at random moments
def test_sigterm_at_random_moments_then_the_same_command_ends_like_an_uninterrupted_run(
    tmp_path):
  longer = [*SETTINGS, "epochs=60"]
  expected = train.run(train.override(train.preset("quickstart"), longer), tmp_path / "full",
                       log=None)
  run_dir = tmp_path / "run"
  command = [sys.executable, "-m", "samx", "train", "--no-progress", "--run-dir", str(run_dir),
             "--resume-if-exists", *[item for setting in longer for item in ("--set", setting)]]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop(stopping.SIGNAL_VARIABLE, None)
  rng, steps, codes = random.Random(0), [], []
  for _ in range(30):
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_training(process, run_dir, epochs=len(history(run_dir)) + 1)
    time.sleep(rng.uniform(0.0, 0.4))  # a random step, evaluation or checkpoint save
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    codes.append(process.returncode)
    if process.returncode == 0:
      break
    assert process.returncode == 75, err[-2000:]
    if "stopped after step" in err:
      steps.append(int(err.split("stopped after step ")[1].split()[0]))
  else:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
  assert len(steps) >= 3, (codes, steps)  # stopped at least three times
  assert any(step % 8 for step in steps), steps  # mid-epoch at least once
  assert history(run_dir) == history(tmp_path / "full")
  store = checkpoints.Checkpoints(run_dir, keep=3)
  step, state, _ = store.restore_latest(expected.state, lambda _: None)
  store.close()
  assert step == 60 * 8
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.state.params),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # two processes through jax.distributed, three times
def test_two_processes_stop_at_the_same_step_and_continue(tmp_path):
  settings = [item for setting in [*SETTINGS, "epochs=30"] for item in ("--set", setting)]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  env.pop(stopping.SIGNAL_VARIABLE, None)

  def start(run_dir):
    port = free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "samx", "train", "--no-progress", "--run-dir", str(run_dir),
         "--resume-if-exists", "--coordinator-address", f"localhost:{port}",
         "--num-processes", "2", "--process-id", str(i), *settings], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]

  run_dir = tmp_path / "two"
  processes = start(run_dir)
  wait_for_training(processes[0], run_dir)
  processes[1].send_signal(signal.SIGTERM)  # the notice reaches one process only
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (_, err) in zip(processes, outputs, strict=True):
    assert p.returncode == 75, err[-3000:]
  stopped = [err.split("stopped after step ")[1].split()[0] for _, err in outputs]
  assert stopped[0] == stopped[1]  # both at the same step
  assert checkpoints.latest_step(run_dir) == int(stopped[0])
  processes = start(run_dir)
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, err) in zip(processes, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  uninterrupted = start(tmp_path / "uninterrupted")
  outputs = [p.communicate(timeout=600) for p in uninterrupted]
  for p, (_, err) in zip(uninterrupted, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert [r["epoch"] for r in history(run_dir)] == list(range(1, 31))
  assert history(run_dir) == history(tmp_path / "uninterrupted")
  assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
