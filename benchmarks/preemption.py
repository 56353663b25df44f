"""How long ``samx train`` takes from SIGTERM to exit, the time a scheduler's grace period must
cover, and how long the same command takes to be training again.

Each trial starts ``samx train --resume-if-exists`` (the same command every time, as a scheduler
re-runs a preempted job), waits until the run has recorded one more epoch, waits a random
fraction of an epoch more, sends SIGTERM and times the exit. The stop finishes the steps already
dispatched (at most ``samx.train.in_flight.MAX_IN_FLIGHT`` ahead of the host), saves the
checkpoint of that step and waits until it is written; the table reports the median and the
largest of these times, the step time, the checkpoint's size, and the time from a restart to
its first recorded epoch. The final history is checked against an uninterrupted run's.

    python benchmarks/preemption.py                                  # saner-cifar10-cpu, SAM
    python benchmarks/preemption.py --preset quickstart --trials 8
    python benchmarks/preemption.py --set model.width=1 --set data.train_examples=2048 \\
        --out benchmarks/results/preemption_cpu_resnet18_full.json  # ResNet-18, full width
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import jax

TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")


def _records(run_dir: pathlib.Path) -> list[dict]:
  path = run_dir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="saner-cifar10-cpu")
  parser.add_argument("--set", dest="overrides", action="append", default=[])
  parser.add_argument("--optimizer", default="sam")
  parser.add_argument("--trials", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0, help="of the random moments")
  parser.add_argument("--out", default=None, help="a JSON file for the results")
  args = parser.parse_args()

  work = pathlib.Path(tempfile.mkdtemp(prefix="samx-preemption-"))
  run_dir = work / "run"
  settings = [f"optimizer.name={args.optimizer}", "checkpoint_every=1", *args.overrides]
  command = [sys.executable, "-m", "samx", "train", "--no-progress", "--preset", args.preset,
             "--run-dir", str(run_dir), "--resume-if-exists",
             *[item for setting in settings for item in ("--set", setting)]]
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  rng = random.Random(args.seed)
  trials = []
  try:
    for trial in range(args.trials):
      recorded = len(_records(run_dir))
      started = time.monotonic()
      process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
      while len(_records(run_dir)) <= recorded:
        if process.poll() is not None:
          raise SystemExit(f"trial {trial}: the run ended before it could be stopped:\n"
                           f"{process.communicate()[1][-2000:]}")
        time.sleep(0.05)
      to_first_epoch = time.monotonic() - started
      epoch_seconds = _records(run_dir)[-1]["epoch_seconds"]
      time.sleep(rng.uniform(0.0, epoch_seconds))
      sent = time.monotonic()
      process.send_signal(signal.SIGTERM)
      _, err = process.communicate(timeout=600)
      seconds = time.monotonic() - sent
      if process.returncode != 75:
        raise SystemExit(f"trial {trial}: exit status {process.returncode}, not 75:\n"
                         f"{err[-2000:]}")
      step = int(err.split("stopped after step ")[1].split()[0])
      records = _records(run_dir)
      steps_per_epoch = records[-1]["step"] // records[-1]["epoch"]
      trials.append({"sigterm_to_exit_seconds": seconds, "stopped_after_step": step,
                     "mid_epoch": step % steps_per_epoch != 0,
                     "restart_to_next_epoch_seconds": to_first_epoch,
                     "step_seconds": epoch_seconds / steps_per_epoch,
                     "checkpoint_bytes": _bytes(run_dir / "checkpoints" / str(step))})
      print(f"trial {trial}: stopped after step {step} in {seconds:.2f} s "
            f"(step {epoch_seconds / steps_per_epoch:.3f} s)", flush=True)
    finish = subprocess.run(command, env=env, capture_output=True, text=True)
    if finish.returncode != 0:
      raise SystemExit(f"the last restart failed:\n{finish.stderr[-2000:]}")
    full = work / "full"
    subprocess.run([*command[:command.index("--run-dir")], "--run-dir", str(full),
                    *command[command.index("--run-dir") + 2:]], env=env, check=True,
                   capture_output=True)
    same = ([{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in _records(run_dir)]
            == [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in _records(full)])
  finally:
    shutil.rmtree(work, ignore_errors=True)

  stops = [t["sigterm_to_exit_seconds"] for t in trials]
  result = {
      "preset": args.preset, "settings": settings, "trials": trials,
      "median_sigterm_to_exit_seconds": statistics.median(stops),
      "max_sigterm_to_exit_seconds": max(stops),
      "median_restart_to_next_epoch_seconds": statistics.median(
          t["restart_to_next_epoch_seconds"] for t in trials),
      "history_equals_uninterrupted_run": same,
      "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "machine": f"{platform.machine()}, {os.cpu_count()} cores",
      "command": " ".join(["python", "benchmarks/preemption.py", *sys.argv[1:]]),
  }
  print(f"SIGTERM to exit: median {result['median_sigterm_to_exit_seconds']:.2f} s, max "
        f"{result['max_sigterm_to_exit_seconds']:.2f} s over {len(trials)} stops "
        f"({sum(t['mid_epoch'] for t in trials)} mid-epoch); restart to the next recorded "
        f"epoch: median {result['median_restart_to_next_epoch_seconds']:.1f} s; history equal "
        f"to the uninterrupted run's: {same}")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  main()
