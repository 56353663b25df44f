"""The ``samx`` command line."""

import io
import json

import pytest

from samx import cli
from samx.train.progress import ProgressBar

QUICK = ["--set", "data.options.train_size=1024", "--set", "data.options.test_size=512",
         "--set", "epochs=2", "--set", "eval_batch_size=512"]


def test_methods_lists_every_method_with_its_section(capsys):
  assert cli.main(["methods"]) == 0
  out = capsys.readouterr().out
  for name in ("sgd", "sam", "asam", "saner", "gsam", "lsam", "jsam", "penalty"):
    assert any(line.startswith(name + " ") for line in out.splitlines()), name
  assert "the saner section" in out


def test_presets_lists_every_preset(capsys):
  assert cli.main(["presets"]) == 0
  out = capsys.readouterr().out
  for name in ("quickstart", "saner-cifar10", "saner-cifar10-cpu", "mnist-cpu"):
    assert name in out


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--set", "optimizer.name=sam", "--set", "optimizer.rho=-1"],
     "optimizer.rho must be a finite number >= 0"),
    (["train", "--set", "optimizer.rhoo=1"], "unknown key 'optimizer.rhoo'"),
    (["train", "--preset", "imagenet"], "preset must be one of"),
    (["train", "--set", "data.name=cifar1000"], "data.name must be one of"),
    (["compare", "--optimizers", "sgd,sam,adamw"], "optimizer.name must be one of"),
    (["train", "--set", "optimizer.name=sam", "--set", "optimizer.group_size=100"],
     "optimizer.group_size must be a divisor of batch_size=128"),
])
def test_bad_configurations_fail_before_training_naming_the_key(argv, message, capsys, tmp_path,
                                                                 monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(argv) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "runs").exists()  # nothing was trained or written


def test_train_then_compare(tmp_path, capsys):
  run_dir = tmp_path / "run"
  assert cli.main(["train", "--no-progress", "--run-dir", str(run_dir), *QUICK,
                   "--set", "optimizer.name=sam", "--set", "checkpoint_every=1"]) == 0
  assert json.loads((run_dir / "config.json").read_text())["optimizer"]["name"] == "sam"
  assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
  assert cli.main(["train", "--no-progress", "--run-dir", str(run_dir), *QUICK]) == 2
  assert "already holds a finished run" in capsys.readouterr().err
  before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
  assert cli.main(["train", "--resume", str(run_dir), "--no-progress"]) == 0  # already done
  out = capsys.readouterr().out
  assert "is finished" in out and f"run directory: {run_dir}" in out
  assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == before  # nothing rewritten
  out_dir = tmp_path / "cmp"
  assert cli.main(["compare", "--optimizers", "sgd,sam", "--out", str(out_dir), *QUICK]) == 0
  table = capsys.readouterr().out
  assert "noisy memorized" in table and "sgd" in table
  assert (out_dir / "compare.png").exists() and (out_dir / "compare.json").exists()


def test_logs_get_one_line_per_epoch_and_no_bar(tmp_path, capsys):
  # Captured output is not a terminal (CI logs, notebooks): one line per epoch, no redrawing.
  assert cli.main(["train", "--run-dir", str(tmp_path / "r"), *QUICK]) == 0
  captured = capsys.readouterr()
  assert "\r" not in captured.err and "\r" not in captured.out
  assert [line.split()[1] for line in captured.out.splitlines()
          if line.startswith("epoch")] == ["1/2", "2/2"]


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_draws_on_a_terminal():
  stream = Terminal()
  bar = ProgressBar(2, 4, stream=stream, refresh_seconds=0.0)
  bar.start_epoch(1)
  for _ in range(4):
    bar.update({"loss": 1.5})
  bar.end_epoch()
  text = stream.getvalue()
  assert "epoch 1/2" in text and "4/4" in text and "loss=1.500" in text
  silent = io.StringIO()
  quiet = ProgressBar(2, 4, stream=silent)
  quiet.start_epoch(1)
  quiet.update({"loss": 1.5})
  quiet.end_epoch()
  assert silent.getvalue() == ""
