"""Runs that go wrong fail loudly and lose nothing: divergence, interruption, re-runs of a
comparison, resumes of finished or uncheckpointed runs."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samx import cli, train
from samx.data import pipeline
from samx.train import loop, stopping
from samx.train.methods import Method
from samx.train.run_dir import strict_json

TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")


def small(*assignments, epochs=2):
  """The quick start at a few seconds' size: 8 steps per epoch."""
  return train.override(train.preset("quickstart"), [
      "data.options.train_size=1024", "data.options.test_size=512", f"epochs={epochs}",
      "eval_batch_size=512", *assignments])


def without_timings(history):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def nan_updates_at(steps):
  """A method whose updates are NaN at the given (0-based) steps: SGD otherwise."""

  def build(shared, section, steps_per_epoch):
    def init(params):
      return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra):
      bad = jnp.isin(state.count, jnp.asarray(steps))
      scale = jnp.where(bad, jnp.nan, 1.0)
      return (optax.tree.scale(scale, updates),
              optax.ScaleByScheduleState(count=state.count + 1))

    return optax.GradientTransformationExtraArgs(init, update)

  return Method(build=build, summary="NaN on purpose")


def test_divergence_stops_the_run_and_keeps_the_last_good_epoch(tmp_path, monkeypatch):
  monkeypatch.setitem(train.METHODS, "nan_at_12", nan_updates_at([12]))
  run_dir = tmp_path / "run"
  with pytest.raises(train.TrainingDivergedError) as error:
    train.run(small("optimizer.name=nan_at_12", "checkpoint_every=1", epochs=3), run_dir,
              log=None)
  message = str(error.value)
  assert "step 13 (epoch 2)" in message and "the last finite loss was" in message
  assert "optimizer.learning_rate" in message and "schedule.warmup_epochs" in message
  assert "keeps the metrics of epochs 1-1 and the checkpoint of step 8 (the end of epoch 1)" in (
      message)
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1]
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["status"] == "diverged"
  assert (summary["diverged_at_step"], summary["diverged_in_epoch"]) == (13, 2)
  assert error.value.step == 13 and error.value.epoch == 2
  # resuming a diverged run says so (exit 3) rather than diverging again
  assert cli.main(["train", "--no-progress", "--resume", str(run_dir)]) == 3
  # and a new request into it is refused without --overwrite
  with pytest.raises(train.RunDirectoryError, match="a run that diverged"):
    train.run(small(epochs=1), run_dir, log=None)
  assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["8"]


def test_divergence_in_the_first_epoch_and_the_cli_exit_code(tmp_path, capsys):
  with pytest.raises(train.TrainingDivergedError, match="epoch 1"):
    train.run(small("optimizer.learning_rate=1e4", epochs=1), log=None)
  code = cli.main(["train", "--no-progress", "--run-dir", str(tmp_path / "r"), "--set",
                   "optimizer.name=sam", "--set", "optimizer.rho=1e9", "--set",
                   "optimizer.learning_rate=10", "--set", "epochs=2"])
  assert code == 3
  err = capsys.readouterr().err
  assert "training diverged" in err and "optimizer.rho (now 1e+09)" in err


def nan_updates_when_first_label_is(label):
  """A method whose updates are NaN on batches whose first example has ``label``."""

  def build(shared, section, steps_per_epoch):
    def update(updates, state, params=None, *, objective, **extra):
      scale = jnp.where(objective.targets[0] == label, jnp.nan, 1.0)
      return optax.tree.scale(scale, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)

  return Method(build=build, summary="NaN on some batches")


def test_skipping_nonfinite_steps_trains_on(monkeypatch):
  monkeypatch.setitem(train.METHODS, "nan_sometimes", nan_updates_when_first_label_is(3))
  config = small("optimizer.name=nan_sometimes", "optimizer.skip_nonfinite=2")
  result = train.run(config, log=None)
  labels = train.load_data(config).train["label"]
  expected = [np.mean([int(batch["label"][0]) == 3 for batch in pipeline.batches(
      {"label": labels}, 128, seed=0, epoch=epoch)]) for epoch in (0, 1)]
  assert sum(expected) > 0 and [r["skipped_step_fraction"] for r in result.history] == expected
  assert np.isfinite(result.history[-1]["step_loss"]) and result.history[-1]["test_accuracy"]
  monkeypatch.setitem(train.METHODS, "nan_always", nan_updates_at(list(range(100))))
  with pytest.raises(train.TrainingDivergedError):  # 2 skipped, the third is applied
    train.run(small("optimizer.name=nan_always", "optimizer.skip_nonfinite=2"), log=None)


def test_metrics_files_are_strict_json():
  text = strict_json({"loss": float("nan"), "list": [1.0, float("inf")], "ok": 0.5})
  assert json.loads(text) == {"loss": None, "list": [1.0, None], "ok": 0.5}


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv(stopping.SIGNAL_VARIABLE, "INT:step:11")  # Ctrl-C after step 11
  monkeypatch.setattr(stopping, "_passes", {})
  run_dir = tmp_path / "run"
  code = cli.main(["train", "--no-progress", "--run-dir", str(run_dir), "--set",
                   "checkpoint_every=1", "--set", "data.options.train_size=1024", "--set",
                   "epochs=2"])
  assert code == 130
  err = capsys.readouterr().err
  assert "stopped after step 11 (epoch 2 of 2)" in err
  assert "saved the checkpoint of step 11 (3 of the 8 steps of epoch 2)" in err
  assert f"samx train --resume {run_dir}" in err
  monkeypatch.undo()
  assert cli.main(["train", "--no-progress", "--resume", str(run_dir)]) == 0
  assert (run_dir / "summary.json").exists()


def test_run_directory_and_tensorboard_are_checked_before_the_data_loads(tmp_path,
                                                                         monkeypatch):
  run_dir = tmp_path / "run"
  train.run(small(epochs=1), run_dir, log=None)

  def no_loading(*args, **kwargs):
    raise AssertionError("the data was loaded")

  monkeypatch.setattr(loop, "make_trainer", no_loading)
  with pytest.raises(train.RunDirectoryError, match="finished run"):
    train.run(small(epochs=1), run_dir, log=None)
  monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
  with pytest.raises(ImportError, match="tensorboardX"):
    train.run(small(epochs=1), tmp_path / "tb", tensorboard=True, log=None)
  assert not (tmp_path / "tb").exists()


def test_resume_never_rewrites_a_finished_run_nor_restarts_without_a_request(tmp_path):
  run_dir = tmp_path / "run"
  first = train.run(small(epochs=1, ), run_dir, log=None)  # quick start: no checkpoints
  stamp = (run_dir / "metrics.jsonl").stat().st_mtime_ns
  again = train.run(None, run_dir, resume=True, log=None)
  assert again.state is None and again.summary == json.loads(strict_json(first.summary))
  assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == stamp
  (run_dir / "summary.json").unlink()  # as if killed before the end
  with pytest.raises(train.RunDirectoryError, match="no checkpoint to continue from.*--overwrite"):
    train.run(None, run_dir, resume=True, log=None)
  redone = train.run(None, run_dir, resume=True, overwrite=True, log=None)
  assert without_timings(redone.history) == without_timings(first.history)


def test_a_comparison_run_twice_reuses_continues_and_refuses(tmp_path, capsys):
  out = tmp_path / "cmp"
  config = small("checkpoint_every=1")
  first = train.compare(config, ["sgd", "sam"], out, log=None)
  stamps = {name: (out / name / "metrics.jsonl").stat().st_mtime_ns for name in ("sgd", "sam")}
  (out / "compare.md").unlink()
  # sam was killed after epoch 1: its summary, last epoch and last checkpoint are gone.
  (out / "sam" / "summary.json").unlink()
  lines = (out / "sam" / "metrics.jsonl").read_text().splitlines()
  (out / "sam" / "metrics.jsonl").write_text(lines[0] + "\n")
  shutil.rmtree(out / "sam" / "checkpoints" / "16")  # the checkpoint of step 16, epoch 2
  second = train.compare(config, ["sgd", "sam"], out, log=print)
  logged = capsys.readouterr().out
  assert "== sgd == (reuse)" in logged and "== sam == (resume)" in logged
  assert (out / "sgd" / "metrics.jsonl").stat().st_mtime_ns == stamps["sgd"]
  assert without_timings(second["sam"].history) == without_timings(first["sam"].history)
  assert (out / "compare.md").exists()
  # Another configuration in the same place: refused before anything trains.
  with pytest.raises(train.RunDirectoryError, match="sgd .*epochs: 2 -> 3.*--overwrite"):
    train.compare(small("checkpoint_every=1", epochs=3), ["gsam", "sgd"], out, log=None)
  assert not (out / "gsam").exists()
  replaced = train.compare(small(epochs=1), ["sgd"], out, overwrite=True, log=None)
  assert replaced["sgd"].summary["epochs"] == 1


def test_optimizer_entries_need_key_and_value():
  with pytest.raises(train.ConfigError, match=r"NAME\+key=value .*got 'sam\+rho'"):
    train.compare(small(), ["sam+rho"], None, log=None)
