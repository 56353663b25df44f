"""The training engine: metrics against a direct computation, determinism, every optimizer,
BatchNorm models with augmentation, the science check on the quick start, and real MNIST."""

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from samx import train
from samx.train.optimizer import learning_rate_schedule, radius_schedule
from samx.train.training_data import TrainingData, split_arrays

TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")


def small(*assignments, epochs=2):
  """The quick start at a few seconds' size."""
  base = ["data.options.train_size=1024", "data.options.test_size=512", f"epochs={epochs}",
          "eval_batch_size=512"]
  return train.override(train.preset("quickstart"), [*base, *assignments])


def without_timings(history):
  return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


def test_metrics_equal_a_direct_computation_on_the_final_parameters():
  result = train.run(small("optimizer.name=sam"), log=None)
  record = result.history[-1]
  data = train.load_data(result.config)
  trainer = train.make_trainer(result.config, data)
  model = nnx.merge(trainer.eval_graphdef, result.state.params, result.state.model_state)
  predictions = np.asarray(jnp.argmax(model(jnp.asarray(data.train["input"])), -1))
  noisy = data.train["noisy"]
  assert 0.3 < noisy.mean() < 0.5
  np.testing.assert_allclose(record["noisy_memorization"],
                             np.mean(predictions[noisy] == data.train["label"][noisy]), atol=1e-6)
  np.testing.assert_allclose(record["noisy_true_label_accuracy"],
                             np.mean(predictions[noisy] == data.train["clean_label"][noisy]),
                             atol=1e-6)
  np.testing.assert_allclose(record["train_clean_accuracy"],
                             np.mean(predictions[~noisy] == data.train["label"][~noisy]),
                             atol=1e-6)
  test_predictions = np.asarray(jnp.argmax(model(jnp.asarray(data.test["input"])), -1))
  np.testing.assert_allclose(record["test_accuracy"],
                             np.mean(test_predictions == data.test["label"]), atol=1e-6)
  assert record["best_test_accuracy"] == max(r["test_accuracy"] for r in result.history)
  assert result.summary["steps"] == 2 * (1024 // 128) == int(result.state.step)


def test_same_seed_same_metrics_and_a_different_seed_differs():
  first = train.run(small("optimizer.name=saner"), log=None).history
  second = train.run(small("optimizer.name=saner"), log=None).history
  other = train.run(small("optimizer.name=saner", "seed=1"), log=None).history
  assert without_timings(first) == without_timings(second)
  assert without_timings(first) != without_timings(other)
  assert 0 < first[-1]["saner_group_b"] < 1
  assert first[-1]["saner_group_a"] + first[-1]["saner_group_b"] + first[-1]["saner_group_c"] \
      == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("optimizer", [
    "sgd", "sam", "asam", "gsam", "lsam", "jsam", "penalty", "sam+group_size=16",
    "saner+adaptive=true"])
def test_every_optimizer_trains(optimizer):
  name, *settings = optimizer.split("+")
  assignments = [f"optimizer.name={name}", "gsam.alpha=0.3"] + [
      f"optimizer.{s}" for s in settings]
  result = train.run(small(*assignments, epochs=1), log=None)
  record = result.history[-1]
  assert np.isfinite(record["step_loss"]) and record["test_accuracy"] > 0.3  # chance is 0.1


def test_sam_memorizes_fewer_noisy_labels_than_sgd_on_the_quick_start():
  # Baek et al. / Foret et al.: with 40% noisy labels SGD fits them, SAM much less.
  results = {name: train.run(train.override(train.preset("quickstart"), [
      f"optimizer.name={name}", "epochs=10"]), log=None).summary for name in ("sgd", "sam")}
  assert results["sgd"]["final_noisy_memorization"] > 0.25
  assert results["sam"]["final_noisy_memorization"] < 0.5 * results["sgd"][
      "final_noisy_memorization"]
  assert results["sam"]["final_test_accuracy"] > results["sgd"]["final_test_accuracy"]


def image_data(n=256, size=8, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n).astype(np.int32)
  images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
  images[np.arange(n), 0, 0, :] = (labels[:, None] * 60).astype(np.uint8)  # a learnable cue
  noisy = rng.uniform(size=n) < 0.25
  given = np.where(noisy, (labels + 1) % classes, labels).astype(np.int32)
  train_arrays = split_arrays(images, given, labels, noisy)
  test = split_arrays(images[:64], labels[:64])
  return TrainingData(train_arrays, test, classes, "random images", np.full(3, 0.5),
                      np.full(3, 0.25))


@pytest.mark.slow
def test_batchnorm_model_with_augmentation_updates_statistics_from_the_clean_pass():
  config = train.override(train.Config(), [
      "data.name=cifar10", "data.augment=true", "model.name=wide_resnet", "model.depth=10",
      "model.widen_factor=1",
      "optimizer.name=saner", "saner.warmup_epochs=1", "epochs=1", "batch_size=32",
      "eval_batch_size=64", "checkpoint_every=0"])
  data = image_data()
  result = train.run(config, log=None, data=data)
  stats = jax.tree.leaves(result.state.model_state)
  assert stats and any(float(jnp.abs(leaf).max()) > 0 for leaf in stats)
  initial = train.make_trainer(config, data).init()
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(initial.model_state), stats,
                                                   strict=True)]
  assert all(changed)  # every BatchNorm mean/var moved
  assert np.isfinite(result.history[-1]["test_loss"])


def test_learning_rate_schedules():
  o = train.OptimizerConfig(learning_rate=0.1)
  step = learning_rate_schedule(o, train.ScheduleConfig(kind="step", boundaries=(0.5, 0.75)),
                                200, 1)
  assert [float(step(s)) for s in (0, 99, 100, 149, 150, 199)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  cosine = learning_rate_schedule(o, train.ScheduleConfig(kind="cosine"), 100, 10)
  assert float(cosine(0)) == pytest.approx(0.1) and float(cosine(50)) == pytest.approx(0.05)
  assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)
  warm = learning_rate_schedule(o, train.ScheduleConfig(kind="cosine", warmup_epochs=1), 100, 10)
  assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.05)
  assert float(warm(10)) == pytest.approx(0.1)


def test_the_radius_follows_the_learning_rate_between_its_extremes():
  # GSAM's rule written out: rho_t = rho_min + (rho - rho_min)(lr_t - lr_min)/(lr_max - lr_min).
  o = train.OptimizerConfig(rho=0.3, rho_min=0.1, learning_rate=0.1)
  lr = learning_rate_schedule(o, train.ScheduleConfig(kind="step", boundaries=(0.5, 0.75)),
                              200, 1)
  rho = radius_schedule(o, lr, 200)
  expected = [0.1 + 0.2 * (rate - 0.001) / (0.1 - 0.001) for rate in (0.1, 0.01, 0.001)]
  assert [float(rho(s)) for s in (0, 120, 199)] == pytest.approx(expected)
  constant = learning_rate_schedule(o, train.ScheduleConfig(kind="constant"), 200, 1)
  assert radius_schedule(o, constant, 200) == 0.3  # nothing to follow
  assert radius_schedule(dataclasses.replace(o, rho_min=None), lr, 200) == 0.3


def test_a_radius_that_follows_the_learning_rate_reaches_the_transform():
  cosine = ("optimizer.name=gsam", "schedule.kind=cosine")
  constant = train.run(small(*cosine), log=None).history
  same = train.run(small(*cosine, "optimizer.rho_min=0.3"), log=None).history  # rho_min = rho
  following = train.run(small(*cosine, "optimizer.rho_min=0.0"), log=None).history
  assert without_timings(same) == without_timings(constant)
  assert following[-1]["train_loss"] != constant[-1]["train_loss"]


def test_run_directory_holds_config_metrics_and_summary(tmp_path):
  run_dir = tmp_path / "run"
  result = train.run(small("optimizer.name=jsam", "checkpoint_every=1"), run_dir, log=None)
  assert train.load_run_config(run_dir) == result.config
  lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert without_timings(lines) == without_timings(result.history)
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["final_test_accuracy"] == result.history[-1]["test_accuracy"]
  steps = [r["step"] for r in result.history]  # one checkpoint per epoch, named by its step
  assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()
                if p.name.isdigit()) == steps
  with pytest.raises(train.RunDirectoryError, match="finished run.*--overwrite"):
    train.run(result.config, run_dir, log=None)


def test_tensorboard_scalars(tmp_path):
  pytest.importorskip("tensorboardX")
  train.run(small(epochs=1), tmp_path / "run", tensorboard=True, log=None)
  assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_compare_writes_the_table_and_the_plot(tmp_path):
  results = train.compare(small(epochs=2), ["sgd", "sam+rho=0.1"], tmp_path, log=None)
  assert list(results) == ["sgd", "sam+rho=0.1"]
  assert results["sam+rho=0.1"].config.optimizer.rho == 0.1
  table = (tmp_path / "compare.md").read_text()
  assert "| sgd |" in table and "| sam+rho=0.1 |" in table
  assert (tmp_path / "compare.png").stat().st_size > 10_000
  assert (tmp_path / "sam+rho-0.1" / "metrics.jsonl").exists()
  with pytest.raises(train.ConfigError, match="optimizer.name must be one of"):
    train.compare(small(), ["sgd", "adamw"], tmp_path / "bad", log=None)
  assert not (tmp_path / "bad" / "sgd").exists()  # checked before any training


DATA_DIR = os.environ.get("SAMX_DATA_DIR")


# The slow suite also trains this preset through the command line, against the README's figure
# (tests/test_readme_figures.py).
@pytest.mark.slow
@pytest.mark.skipif(not DATA_DIR or not (pathlib.Path(DATA_DIR) / "mnist").is_dir(),
                    reason="needs SAMX_DATA_DIR with mnist/")
def test_mnist_preset_learns():
  result = train.run(train.preset("mnist-cpu"), log=None)
  assert result.summary["final_test_accuracy"] > 0.95
  assert result.summary["dataset"] == "MNIST"


def test_run_accepts_a_config_after_dataclass_replace():
  config = dataclasses.replace(small(epochs=1), eval_every=2)
  history = train.run(config, log=None).history
  assert "test_accuracy" in history[-1]  # the last epoch is always evaluated


def test_this_process_runs_on_one_device():
  # The in-process tests train on a one-device mesh; multi-device runs are subprocesses
  # (test_distributed.py), so a helper that sets XLA_FLAGS must never be imported here.
  assert jax.device_count() == 1


def test_plot_comparison_leaves_the_matplotlib_backend_alone(tmp_path):
  # Notebooks show figures inline; a library call must not switch the backend under them.
  matplotlib = pytest.importorskip("matplotlib")
  previous = matplotlib.get_backend()
  matplotlib.use("svg")
  try:
    history = [{"epoch": 1, "test_accuracy": 0.5, "noisy_memorization": 0.2}]
    path = train.plot_comparison({"sgd": history}, tmp_path / "plot.png", title="t")
    assert path.stat().st_size > 1000 and matplotlib.get_backend() == "svg"
  finally:
    matplotlib.use(previous)


def test_epoch_metrics_join_each_evaluated_epochs_record(tmp_path):
  seen = []

  def weight_norm(trainer, state):
    seen.append(int(state.step))
    return {"weight_norm": float(optax_global_norm(state.params)), "calls": len(seen)}

  result = train.run(small("eval_every=2", epochs=3), tmp_path / "run", log=None,
                     epoch_metrics=weight_norm)
  assert seen == [2 * 8, 3 * 8]  # epochs 2 and 3 (the last is always evaluated)
  assert [r.get("calls") for r in result.history] == [None, 1, 2]
  assert result.history[-1]["weight_norm"] == pytest.approx(
      float(optax_global_norm(result.state.params)))
  stored = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
  assert stored[-1]["weight_norm"] == result.history[-1]["weight_norm"]
  with pytest.raises(ValueError, match="test_accuracy"):
    train.run(small(epochs=1), log=None, epoch_metrics=lambda t, s: {"test_accuracy": 1.0})


def optax_global_norm(tree):
  import optax

  return optax.tree.norm(tree)
