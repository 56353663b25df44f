"""FSDP in the engine (``sharding.fsdp``): the rule that lays the state out, data-parallel
metrics on 8 virtual CPU devices with the state split 2 and 8 ways, every method, BatchNorm,
the state still sharded when ``run`` returns, and checkpoints restored onto another mesh (a run
stopped with the state split 8 ways resumes split 2 ways)."""

import json
import pathlib

import pytest
from conftest import run_on_eight_cpu_devices
from jax.sharding import PartitionSpec as P
from test_distributed import assert_same_metrics, make_image_folder

from samx import train
from samx.train import ConfigError
from samx.train.run_dir import config_differences
from samx.train.sharding import fsdp_spec

HERE = pathlib.Path(__file__).parent
SMALL = ["data.options.train_size=2048", "data.options.test_size=1024", "epochs=2",
         "eval_batch_size=1024", "sharding.min_elements=256"]


@pytest.mark.parametrize(("shape", "fsdp", "spec"), [
    ((64, 256), 4, P(None, "fsdp")),         # the largest dimension that divides
    ((256, 64), 4, P("fsdp")),
    ((3, 3, 64, 64), 8, P(None, None, None, "fsdp")),  # a tie: the last
    ((130, 66), 4, P()),                     # nothing divides: replicated
    ((10,), 4, P()),                         # too small: replicated
    ((64, 256), 1, P()),                     # data parallel
])
def test_the_fsdp_rule(shape, fsdp, spec):
  assert fsdp_spec(shape, fsdp, min_elements=100) == spec


def test_sharding_options_are_checked_and_may_change_on_resume():
  config = train.preset("quickstart")
  with pytest.raises(ConfigError, match="sharding.fsdp"):
    train.validate(train.override(config, ["sharding.fsdp=0"]))
  with pytest.raises(ConfigError, match=r"sharding.fsdp.*a divisor of the 1 devices"):
    train.validate(train.override(config, ["sharding.fsdp=2"]), device_count=1)
  resharded = train.override(config, ["sharding.fsdp=4", "sharding.min_elements=10"])
  assert config_differences(config, resharded) == []
  assert config_differences(config, train.override(config, ["epochs=3"])) == [
      f"epochs: {config.epochs} -> 3"]


def run_check(*assignments):
  result = run_on_eight_cpu_devices(HERE / "fsdp_check.py", *assignments, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def assert_fsdp_is_data_parallel(out, atol):
  for fsdp in ("2", "8"):
    assert_same_metrics(out["1"]["history"], out[fsdp]["history"], atol=atol)
    assert out[fsdp]["by_the_rule"] and out[fsdp]["sharded_parameters"] > 0
  assert out["1"]["sharded_parameters"] == 0 and out["restored_by_the_rule"]
  # Stopped at step 5 with fsdp=8, resumed with fsdp=2: the uninterrupted run's metrics.
  assert_same_metrics(out["1"]["history"], out["resumed"], atol=atol)
  # The state per device falls about as 1/N (small leaves stay replicated).
  assert out["2"]["bytes_per_device"] < 0.6 * out["1"]["bytes_per_device"]
  assert out["8"]["bytes_per_device"] < 0.2 * out["1"]["bytes_per_device"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [
    "sgd", "sam", "asam", "saner", "gsam", "jsam", "looksam", "ae_sam",
    "sam+optimizer.group_size=16",
    "lsam+optimizer.group_size=1"])
def test_fsdp_gives_the_data_parallel_metrics(optimizer):
  name, *extra = optimizer.split("+")
  out = run_check("quickstart", *SMALL, f"optimizer.name={name}", *extra)
  assert_fsdp_is_data_parallel(out, atol=2e-3)


@pytest.mark.slow
def test_fsdp_with_batchnorm_and_1sam(tmp_path):
  folder = make_image_folder(tmp_path / "images")
  out = run_check(
      "quickstart", f"data.name=folder:{folder}", "model.name=wide_resnet", "model.depth=10",
      "model.widen_factor=1", "epochs=2", "batch_size=64", "eval_batch_size=64",
      "optimizer.name=sam", "optimizer.group_size=1", "noise.rate=0.25",
      "sharding.min_elements=256")
  assert_fsdp_is_data_parallel(out, atol=2e-2)
