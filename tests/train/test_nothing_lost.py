"""Nothing of a run is lost, whatever stops it: a kill (SIGKILL) or a full disk (ENOSPC) at any
write of any file, a second writer, a damaged checkpoint, ``--overwrite`` with a request that
fails. Kills and full disks are injected at chosen writes with ``SAMX_FAULT_INJECTION`` (see
samx.train.files) in a training subprocess; each damaged run is then continued with the same
command as a user would, and must end exactly like an uninterrupted run."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from samx import cli, train
from samx.train import checkpoints, files, run_lock

TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")
SETTINGS = ["data.options.train_size=1024", "data.options.test_size=512", "epochs=3",
            "eval_batch_size=512", "checkpoint_every=1", "keep_checkpoints=3",
            "optimizer.name=sam"]


def config(*extra):
  return train.override(train.preset("quickstart"), [*SETTINGS, *extra])


def cli_args(run_dir, *extra):
  sets = [item for setting in [*SETTINGS, *extra] for item in ("--set", setting)]
  return ["train", "--no-progress", "--run-dir", str(run_dir), *sets]


def samx(args, *, fault=None, timeout=300):
  """Runs ``samx ARGS`` in a subprocess (with a fault injected); returns the CompletedProcess."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop(files.FAULT_VARIABLE, None)
  if fault:
    env[files.FAULT_VARIABLE] = fault
  return subprocess.run([sys.executable, "-m", "samx", *args], env=env, capture_output=True,
                        text=True, timeout=timeout)


def history(run_dir):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in files.read_json_lines(pathlib.Path(run_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: its history and final parameters."""
  run_dir = tmp_path_factory.mktemp("reference") / "run"
  result = train.run(config(), run_dir, log=None)
  return history(run_dir), jax.tree.leaves(result.state.params)


def assert_same_as_reference(run_dir, result, reference):
  assert history(run_dir) == reference[0]
  for a, b in zip(jax.tree.leaves(result.state.params), reference[1], strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def resume(run_dir):
  messages = []
  return train.run(None, run_dir, resume=True, log=messages.append), messages


# --- kills and full disks at each write ------------------------------------------------------

# (file, point, which write of it): every file a run writes, each way a write can be cut.
SLOW = pytest.mark.slow  # each a training subprocess and a resume: the default suite has a few
KILLS = [
    pytest.param("metrics.jsonl", "partial", 3, marks=SLOW),  # epoch 3's append, half written
    pytest.param("config.json", "partial", 1, marks=SLOW),  # the run's first write
    pytest.param("config.json", "before_rename", 1, marks=SLOW),
    pytest.param("summary.json", "partial", 1, marks=SLOW),  # the last write
    pytest.param("summary.json", "after_rename", 1, marks=SLOW),
    ("samx-checksums.json", "partial", 2),  # inside orbax's save of epoch 2
]


@pytest.mark.parametrize(("name", "point", "count"), KILLS)
def test_a_kill_at_any_write_loses_nothing(tmp_path, reference, name, point, count):
  run_dir = tmp_path / "run"
  killed = samx(cli_args(run_dir), fault=f"kill:{name}:{point}:{count}")
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  for path in run_dir.glob("*.json"):  # what is there is whole: never a partial file
    if not path.name.startswith("."):  # not an unfinished write's temporary file
      json.loads(path.read_text())
  status = train.inspect_run(run_dir)
  if status.kind == "new":  # killed before config.json: the same command starts it again
    result = train.run(config(), run_dir, log=None)
  elif status.kind == "unfinished":  # killed before the first checkpoint was committed
    with pytest.raises(train.RunDirectoryError, match="no checkpoint to continue from"):
      resume(run_dir)
    result = train.run(config(), run_dir, overwrite=True, log=None)
  else:
    result, messages = resume(run_dir)
    if name == "metrics.jsonl":
      assert any("cut short" in m for m in messages), messages
  if result.state is None:  # summary.json was complete: the run had ended
    assert point == "after_rename"
    assert history(run_dir) == reference[0]
    return
  assert_same_as_reference(run_dir, result, reference)
  assert not list(run_dir.glob(f".*{files.TEMPORARY_SUFFIX}"))
  assert not [p for p in (run_dir / "checkpoints").iterdir()
              if checkpoints.ORBAX_TEMPORARY in p.name]


@pytest.mark.slow  # the rest of the matrix: each file at each point
@pytest.mark.parametrize(("name", "point"), [
    ("metrics.jsonl", "partial"), ("config.json", "after_rename"),
    ("summary.json", "before_rename"), ("samx-checksums.json", "before_rename"),
    ("samx-checksums.json", "after_rename")])
@pytest.mark.parametrize("count", [1, 3])
def test_every_kill_point(tmp_path, reference, name, point, count):
  if name in ("config.json", "summary.json") and count > 1:
    pytest.skip(f"{name} is written once")
  test_a_kill_at_any_write_loses_nothing(tmp_path, reference, name, point, count)


@SLOW
def test_a_kill_while_resuming_rewrites_nothing_half(killed_after_epoch_three, reference):
  run_dir = killed_after_epoch_three
  # the resume cuts metrics.jsonl back to the checkpoint (an atomic rewrite): killed there too
  killed = samx(["train", "--no-progress", "--resume", str(run_dir)],
                fault="kill:metrics.jsonl:partial")
  assert killed.returncode == -signal.SIGKILL
  assert len(history(run_dir)) == 3  # the old file, whole
  result, _ = resume(run_dir)
  assert_same_as_reference(run_dir, result, reference)


def inject(monkeypatch, fault):
  """``SAMX_FAULT_INJECTION=fault`` for this process, its write counts from zero."""
  monkeypatch.setenv(files.FAULT_VARIABLE, fault)
  monkeypatch.setattr(files, "_write_counts", {})


@pytest.mark.parametrize("name", ["metrics.jsonl", pytest.param("samx-checksums.json", marks=SLOW),
                                  pytest.param("summary.json", marks=SLOW)])
def test_a_full_disk_names_the_file_and_the_run_resumes_once_space_is_freed(
    tmp_path, reference, name, monkeypatch, capsys):
  run_dir = tmp_path / "run"
  inject(monkeypatch, f"enospc:{name}:partial:3" if name == "metrics.jsonl"
         else f"enospc:{name}:partial:2" if name != "summary.json" else f"enospc:{name}:partial")
  assert cli.main(cli_args(run_dir)) == 1
  monkeypatch.delenv(files.FAULT_VARIABLE)
  err = capsys.readouterr().err
  assert "No space left on device" in err and "Traceback" not in err
  shown = "checkpoint" if name == "samx-checksums.json" else str(run_dir / name)
  assert shown in err
  assert "--resume" in err or "run the same command again" in err
  if name == "samx-checksums.json":  # the failed save stopped training at the next epoch end
    assert len(history(run_dir)) <= 3
  result, _ = resume(run_dir)
  assert_same_as_reference(run_dir, result, reference)


@SLOW
def test_a_cut_last_line_is_dropped_with_a_warning_not_a_decode_error(killed_after_epoch_three,
                                                                     reference):
  run_dir = killed_after_epoch_three
  with open(run_dir / "metrics.jsonl", "ab") as handle:
    handle.write(b'{"epoch": 4, "test_acc')  # what a full disk leaves
  with pytest.warns(UserWarning, match="cut short"):
    assert len(train.read_history(run_dir)) == 3
  result, messages = resume(run_dir)
  assert any("cut short" in m for m in messages)
  assert_same_as_reference(run_dir, result, reference)


def test_atomic_writes_keep_permissions_and_leave_no_temporary(tmp_path, monkeypatch):
  target = tmp_path / "a.json"
  files.write_atomic(target, "{}")
  assert target.stat().st_mode & 0o777 == 0o666 & ~files._read_umask()
  target.chmod(0o640)
  files.write_atomic(target, "[1]")
  assert target.read_text() == "[1]" and target.stat().st_mode & 0o777 == 0o640
  monkeypatch.setenv(files.FAULT_VARIABLE, "enospc:a.json:partial")
  monkeypatch.setattr(files, "_write_counts", {})
  with pytest.raises(files.RunFileError, match=r"could not write .*a\.json: No space left"):
    files.write_atomic(target, "[2, 3]")
  assert target.read_text() == "[1]" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


# --- two writers ----------------------------------------------------------------------------

def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path):
  run_dir = tmp_path / "run"
  # another process that holds the lock as samx.train.run_lock does (flock, holder recorded),
  # without importing JAX
  run_dir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, os, socket, sys, time; "
       "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
       "os.write(fd, f'process {os.getpid()} on {socket.gethostname()} (a test)'.encode()); "
       "print('locked', flush=True); time.sleep(60)", str(run_dir / run_lock.LOCK_FILE)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with pytest.raises(train.RunDirectoryError, match=rf"is being written by process "
                       rf"{holder.pid} on "):
      train.run(config(), run_dir, log=None)
    with pytest.raises(train.RunDirectoryError, match="is being written by"):
      train.compare(config("epochs=1"), ["sgd"], run_dir, log=None)
    assert time.monotonic() - started < 30  # refused, not waiting
    assert cli.main(cli_args(run_dir)) == 2
  finally:
    holder.kill()
    holder.wait()
  # the kernel released the dead holder's lock: no stale lock
  train.run(config("epochs=1"), run_dir, log=None)


def test_compare_holds_every_run_directory_of_its_plan(tmp_path):
  out = tmp_path / "out"
  seen = {}

  def probe(line):
    if "== sgd" in line:  # while the first entry trains, the second one's directory is held
      seen["sam"] = run_lock.holds(out / "sam")
      seen["out"] = run_lock.holds(out)

  train.compare(config("epochs=1", "checkpoint_every=0"), ["sgd", "sam"], out, log=probe)
  assert seen == {"sam": True, "out": True}
  assert not run_lock.holds(out) and not run_lock.holds(out / "sam")


def test_leftover_orbax_temporary_directories_are_removed_on_resume(killed_after_epoch_three,
                                                                   reference):
  run_dir = killed_after_epoch_three
  stray = run_dir / "checkpoints" / f"4{checkpoints.ORBAX_TEMPORARY}-1234"
  (stray / "default").mkdir(parents=True)
  (run_dir / "checkpoints" / "7").mkdir()  # a stray empty step directory
  result, messages = resume(run_dir)
  assert not stray.exists() and not (run_dir / "checkpoints" / "7").exists()
  assert any("did not finish" in m for m in messages)
  assert any("empty directory" in m for m in messages)
  assert_same_as_reference(run_dir, result, reference)


# --- damaged checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_at_the_end(tmp_path_factory):
  """A run stopped while writing its summary (a full disk, in this process): three epochs and
  their checkpoints, unfinished."""
  run_dir = tmp_path_factory.mktemp("killed") / "run"
  with pytest.MonkeyPatch.context() as monkeypatch:
    inject(monkeypatch, "enospc:summary.json:partial")
    with pytest.raises(files.RunFileError):
      train.run(config(), run_dir, log=None)
  assert checkpoints.saved_steps(run_dir) == [8, 16, 24]  # the ends of epochs 1-3
  assert not (run_dir / "summary.json").exists()
  return run_dir


@pytest.fixture
def killed_after_epoch_three(tmp_path, killed_at_the_end):
  """A copy of the killed run, for one test to damage."""
  run_dir = tmp_path / "run"
  shutil.copytree(killed_at_the_end, run_dir, symlinks=True)
  (run_dir / run_lock.LOCK_FILE).unlink()
  return run_dir


def largest_data_file(step_dir):
  return max((p for p in (step_dir / "default").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def flip_one_bit(path, at=None):
  data = bytearray(path.read_bytes())
  at = len(data) // 2 if at is None else at
  data[at] ^= 0x01
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped bit", pytest.param("truncated", marks=SLOW),
                                    pytest.param("missing file", marks=SLOW)])
def test_a_damaged_checkpoint_is_found_and_the_previous_one_used(killed_after_epoch_three, damage,
                                                                  reference):
  run_dir = killed_after_epoch_three
  target = largest_data_file(run_dir / "checkpoints" / "24")
  if damage == "flipped bit":
    flip_one_bit(target)
  elif damage == "truncated":
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
  else:
    target.unlink()
  result, messages = resume(run_dir)
  assert any("checkpoint of step 24 (the end of epoch 3) is damaged" in m for m in messages), (
      messages)
  assert any("falling back to the checkpoint of step 16 (the end of epoch 2)" in m
             for m in messages)
  assert (run_dir / checkpoints.DAMAGED_DIR / "24").is_dir()  # kept, not deleted
  assert_same_as_reference(run_dir, result, reference)  # epoch 3 trained again from epoch 2


def test_no_intact_checkpoint_is_a_clear_error_and_changes_nothing(killed_after_epoch_three):
  run_dir = killed_after_epoch_three
  for step in (8, 16, 24):
    flip_one_bit(largest_data_file(run_dir / "checkpoints" / str(step)))
  files.remove_temporaries(run_dir)  # the killed write's temporary file (a resume removes it)
  (run_dir / run_lock.LOCK_FILE).touch()  # the resume takes the lock
  before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
  metrics_before = (run_dir / "metrics.jsonl").read_bytes()
  with pytest.raises(files.RunFileError, match="no intact checkpoint") as error:
    resume(run_dir)
  assert "(the end of epoch 3): " in str(error.value) and "(the end of epoch 1): " in str(
      error.value)
  assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
  assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before


def test_the_checksums_cover_every_data_file(tmp_path):
  step = tmp_path / "3"
  (step / "default" / "d").mkdir(parents=True)
  (step / checkpoints.ORBAX_METADATA).write_text("{}")
  (step / "default" / "d" / "x").write_bytes(b"abc" * 100)
  checkpoints.write_checksums(step)
  assert checkpoints.verify(step) is None
  flip_one_bit(step / "default" / "d" / "x", at=7)
  assert checkpoints.verify(step) == "default/d/x does not match its checksum"
  (step / checkpoints.CHECKSUM_FILE).unlink()
  assert checkpoints.verify(step) == f"it has no {checkpoints.CHECKSUM_FILE}"


# --- --overwrite, and requests that fail -----------------------------------------------------

@pytest.mark.parametrize("bad", [
    ["optimizer.rho=-1"], ["data.name=mnist", "data.data_dir=/nowhere"],
    *[pytest.param(bad, marks=SLOW) for bad in (
        ["epochs=1000000000", "optimizer.name=ae_sam"],
        ["batch_size=100000"], ["model.name=small_cnn", "optimizer.name=sam_on"], ["seed=-1"],
        ["data.options.train_size=0"], ["data.options.train_size=abc"],
        ["data.options.train_size=1.5"], ["epochs=1000000000", "schedule.kind=step"])]])
def test_overwrite_keeps_the_old_run_when_the_new_request_fails(tmp_path, capsys, bad):
  run_dir = tmp_path / "run"
  train.run(config("epochs=1"), run_dir, log=None)
  before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
  assert cli.main([*cli_args(run_dir, *bad), "--overwrite"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and "samx: error:" in err
  key = bad[0].split("=")[0] if not bad[0].startswith("data.name") else "data"
  assert key.split(".")[-1] in err or "model.name" in err or "optimizer.name" in err, err
  assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_bad_values_write_nothing(tmp_path, capsys):
  for bad in (["seed=-1"], ["data.options.train_size=-5"], ["epochs=1000000000",
                                                           "schedule.kind=step"]):
    run_dir = tmp_path / "new" / "run"
    assert cli.main(cli_args(run_dir, *bad)) == 2
    assert not (tmp_path / "new").exists()
  err = capsys.readouterr().err
  assert "seed must be an integer in [0, 2^31)" in err
  assert "data.options.train_size must be an integer >= 1; got -5" in err
  assert "step counters" in err


def test_ctrl_c_while_starting_writes_nothing(tmp_path, monkeypatch, capsys):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(train.loop, "make_trainer", interrupted)
  run_dir = tmp_path / "run"
  assert cli.main(cli_args(run_dir)) == 130
  assert "nothing was written" in capsys.readouterr().err
  assert not run_dir.exists()
  monkeypatch.undo()
  train.run(config("epochs=1"), run_dir, log=None)  # the same command, without --overwrite


# --- errors that were tracebacks -------------------------------------------------------------

def test_paths_that_are_files_or_read_only_are_named(tmp_path, killed_after_epoch_three, capsys):
  run_dir = killed_after_epoch_three
  saved = run_dir / "checkpoints"
  saved.rename(tmp_path / "saved")
  saved.write_text("not a directory")
  assert cli.main(["train", "--no-progress", "--resume", str(run_dir)]) in (1, 2)
  assert f"{saved} is not a directory" in capsys.readouterr().err
  a_file = tmp_path / "file"
  a_file.write_text("")
  assert cli.main(["compare", "--no-progress", "--optimizers", "sgd", "--out", str(a_file),
                   "--set", "epochs=1"]) == 2
  assert f"--out {a_file} is a file" in capsys.readouterr().err
  assert cli.main(cli_args(a_file)) == 2
  assert f"{a_file} is a file" in capsys.readouterr().err
  if os.geteuid() != 0:  # root writes anywhere
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    assert cli.main(cli_args(read_only / "run")) == 1
    assert "Permission denied" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "problem"), [
    ("[1, 2]", "holds a JSON list"), ("", "is empty"), ('{"epochs": 3', "is not valid JSON"),
    ('{"optimizer": {"rhoo": 1}}', "unknown key")])
def test_a_damaged_config_json_is_named(tmp_path, capsys, content, problem):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text(content)
  assert cli.main(["train", "--no-progress", "--resume", str(run_dir)]) in (1, 2)
  err = capsys.readouterr().err
  assert str(run_dir / "config.json") in err and problem in err and "Traceback" not in err
  assert cli.main(cli_args(run_dir)) in (1, 2)  # a new run there says the same
  assert problem in capsys.readouterr().err


@SLOW
def test_a_damaged_summary_json_says_what_to_do(tmp_path, capsys):
  run_dir = tmp_path / "run"
  train.run(config("epochs=1"), run_dir, log=None)
  (run_dir / "summary.json").write_text("")
  assert cli.main(["train", "--no-progress", "--resume", str(run_dir)]) in (1, 2)
  err = capsys.readouterr().err
  assert f"{run_dir / 'summary.json'} is empty" in err and "delete it" in err
  (run_dir / "summary.json").unlink()
  assert cli.main(["train", "--no-progress", "--resume", str(run_dir)]) == 0
  assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


# --- a diverging entry of a comparison -------------------------------------------------------

def test_compare_writes_the_table_when_one_entry_diverges_and_does_not_retrain_it(tmp_path,
                                                                                capsys):
  out = tmp_path / "out"
  args = ["compare", "--no-progress", "--out", str(out), "--optimizers",
          "sgd,sam+rho=1e9+learning_rate=10", *[a for s in [*SETTINGS[:4], "epochs=2"]
                                                for a in ("--set", s)]]
  assert cli.main(args) == 3
  err = capsys.readouterr()
  assert "1 of 2 entries diverged: sam+rho=1e9+learning_rate=10 (at step" in err.err
  table = (out / "compare.md").read_text()
  assert "| sgd |" in table and "(diverged at step" in table
  assert (out / "compare.png").exists()
  summaries = json.loads((out / "compare.json").read_text())
  assert summaries["sam+rho=1e9+learning_rate=10"]["status"] == "diverged"
  assert cli.main(args) == 3  # again: reported, not trained again
  again = capsys.readouterr().out
  assert "(diverged)" in again and "not trained again" in again
  assert "epoch   1/2" not in again


# --- folder datasets -------------------------------------------------------------------------

def test_folder_datasets_follow_symlinked_classes_and_need_two(tmp_path):
  from PIL import Image

  from samx import data

  elsewhere = tmp_path / "elsewhere"
  for split in ("train", "test"):
    for name, value in (("cat", 10), ("dog", 200)):
      folder = elsewhere / split / name
      folder.mkdir(parents=True)
      for i in range(3):
        Image.fromarray(np.full((4, 4, 3), value + i, np.uint8)).save(folder / f"{i}.png")
  root = tmp_path / "root"
  for split in ("train", "test"):
    (root / split).mkdir(parents=True)
    (root / split / "cat").symlink_to(elsewhere / split / "cat")
    (root / split / "dog").symlink_to(elsewhere / split / "dog")
  loaded = data.load(f"folder:{root}", "train", cache_dir=tmp_path / "cache")
  assert loaded.num_classes == 2 and len(loaded.labels) == 6

  one = tmp_path / "one"
  (one / "train" / "cat").mkdir(parents=True)
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(one / "train" / "cat" / "0.png")
  with pytest.raises(ValueError, match="one class only"):
    data.load(f"folder:{one}", "train", cache_dir=tmp_path / "cache")

  (root / "train" / "dog" / "loop").symlink_to(root / "train")
  with pytest.raises(ValueError, match="a loop"):
    data.load(f"folder:{root}", "train", cache_dir=tmp_path / "cache2")
