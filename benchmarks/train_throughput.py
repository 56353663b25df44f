"""Training throughput of the engine: steps/s and images/s of SGD and SAM on the CPU presets,
and the step time on 1, 2, 4 and 8 devices.

The engine's own compiled step and input pipeline (``samx.train.make_trainer`` and
``samx.data.pipeline.batches``) are timed, as ``samx train`` runs them: for each preset, SGD and
SAM alternate in rounds of ``--steps`` steps so that the machine's noise falls on both alike;
the table reports the median round and the SAM/SGD ratio of the per-round times.

``--scaling`` re-runs itself with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and
times one preset on a mesh of 1, 2, 4 and 8 devices at the same global batch. On a CPU the
virtual devices share the same cores, so this measures the cost of partitioning (collectives
and per-device overhead), not a speed-up; on a multi-GPU or TPU host it is the real scaling.

    python benchmarks/train_throughput.py                       # CPU presets, SGD vs SAM
    python benchmarks/train_throughput.py --scaling             # 1 -> 8 virtual devices
    python benchmarks/train_throughput.py --presets saner-cifar10 --optimizers sgd,sam,saner
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax

from samx import train
from samx.data import pipeline

CPU_PRESETS = "quickstart,mnist-cpu,fashion-mnist-noise-cpu,saner-cifar10-cpu"


def time_rounds(configs: dict[str, train.Config], steps: int, rounds: int) -> dict[str, dict]:
  # Each config's own data.prefetch applies: batches are made that many steps ahead.
  """Per config: compiled step and a fresh batch iterator; rounds of ``steps`` steps, alternated."""
  runners = {}
  for name, config in configs.items():
    trainer = train.make_trainer(config)
    state = trainer.init()
    arrays = {"input": trainer.data.train["input"], "label": trainer.data.train["label"]}

    def batch_stream(trainer=trainer, arrays=arrays, config=config):
      epoch = 0
      while True:
        yield from pipeline.batches(arrays, config.batch_size, seed=config.seed, epoch=epoch,
                                    mesh=trainer.mesh, batch_axis="data")
        epoch += 1

    stream = pipeline.prefetch(batch_stream(), config.data.prefetch)
    first = next(stream)
    started = time.perf_counter()
    step = trainer.train_step.lower(state, first).compile()
    compile_seconds = time.perf_counter() - started
    state, _ = step(state, first)
    runners[name] = {"step": step, "state": state, "stream": stream, "times": [],
                     "batch_size": config.batch_size, "compile_seconds": compile_seconds,
                     "devices": trainer.mesh.size}
  for round_index in range(rounds):
    order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
    for name in order:
      runner = runners[name]
      state = runner["state"]
      started = time.perf_counter()
      in_flight = train.InFlight()  # as the training loop bounds it
      for _ in range(steps):
        state, metrics = runner["step"](state, next(runner["stream"]))
        in_flight.add(metrics)
      jax.block_until_ready((state, metrics))
      runner["times"].append((time.perf_counter() - started) / steps)
      runner["state"] = state
  return {name: {"step_seconds": statistics.median(r["times"]), "times": r["times"],
                 "images_per_second": r["batch_size"] / statistics.median(r["times"]),
                 "steps_per_second": 1.0 / statistics.median(r["times"]),
                 "compile_seconds": r["compile_seconds"], "devices": r["devices"]}
          for name, r in runners.items()}


def throughput(presets: list[str], optimizers: list[str], steps: int, rounds: int,
               settings: list[str] = ()) -> list[dict]:
  rows = []
  for preset in presets:
    base = train.override(train.preset(preset), list(settings))
    configs = {name: train.override(base, [f"optimizer.name={name}"]) for name in optimizers}
    results = time_rounds(configs, steps, rounds)
    reference = results[optimizers[0]]["times"]
    for name, result in results.items():
      ratios = [a / b for a, b in zip(result["times"], reference, strict=True)]
      rows.append({"preset": preset, "optimizer": name, "batch_size": base.batch_size,
                   "model": base.model.name, **result,
                   f"ratio_to_{optimizers[0]}": statistics.median(ratios)})
      print(f"{preset:<26} {name:<8} {result['steps_per_second']:8.1f} steps/s "
            f"{result['images_per_second']:9.0f} img/s  x{statistics.median(ratios):.2f}",
            flush=True)
  return rows


def prefetch_effect(presets: list[str], dtype: str, steps: int, rounds: int) -> list[dict]:
  """SGD's step on each preset with data.prefetch 0 and 2, timed in alternated rounds."""
  rows = []
  for preset in presets:
    base = train.override(train.preset(preset), ["optimizer.name=sgd", f"model.dtype={dtype}"])
    results = time_rounds({n: train.override(base, [f"data.prefetch={n}"]) for n in (0, 2)},
                          steps, rounds)
    ratios = [a / b for a, b in zip(results[2]["times"], results[0]["times"], strict=True)]
    rows.append({"preset": preset, "optimizer": "sgd", "dtype": dtype,
                 "images_per_second_0": results[0]["images_per_second"],
                 "images_per_second_2": results[2]["images_per_second"],
                 "time_2_over_0": statistics.median(ratios)})
    print(f"{preset:<26} prefetch 0: {results[0]['images_per_second']:9.0f} img/s  "
          f"prefetch 2: {results[2]['images_per_second']:9.0f} img/s  "
          f"x{statistics.median(ratios):.3f}", flush=True)
  return rows


def scaling(preset: str, optimizer: str, steps: int, rounds: int) -> list[dict]:
  if jax.device_count() < 8:
    env = {**os.environ, "XLA_FLAGS": train.virtual_cpu_devices_flags(8),
           "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    out = subprocess.run([sys.executable, __file__, "--scaling", "--scaling-preset", preset,
                          "--scaling-optimizer", optimizer, "--steps", str(steps), "--rounds",
                          str(rounds), "--print-json"], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
  base = train.override(train.preset(preset), [f"optimizer.name={optimizer}"])
  configs = {f"{d} devices": train.override(base, [f"devices={d}"]) for d in (1, 2, 4, 8)}
  results = time_rounds(configs, steps, rounds)
  one = results["1 devices"]["times"]
  return [{"preset": preset, "optimizer": optimizer, "devices": r["devices"],
           "step_seconds": r["step_seconds"], "images_per_second": r["images_per_second"],
           "ratio_to_1_device": statistics.median(
               [a / b for a, b in zip(r["times"], one, strict=True)])}
          for r in results.values()]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default=CPU_PRESETS)
  parser.add_argument("--optimizers", default="sgd,sam")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--scaling", action="store_true")
  parser.add_argument("--scaling-preset", default="saner-cifar10-cpu")
  parser.add_argument("--scaling-optimizer", default="sam")
  parser.add_argument("--print-json", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--output", type=pathlib.Path)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="model.dtype (parameters stay float32)")
  parser.add_argument("--prefetch", type=int, default=2,
                      help="data.prefetch: batches put on the devices ahead of the step")
  parser.add_argument("--compare-prefetch", action="store_true",
                      help="time each preset's SGD step with data.prefetch 0 and 2, alternated")
  args = parser.parse_args()
  if args.scaling:
    rows = scaling(args.scaling_preset, args.scaling_optimizer, args.steps, args.rounds)
    if args.print_json:
      print(json.dumps(rows))
      return
    print("| preset | optimizer | devices | step (ms) | images/s | step time / 1 device |")
    print("|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['preset']} | {r['optimizer']} | {r['devices']} | "
            f"{1e3 * r['step_seconds']:.1f} | {r['images_per_second']:.0f} | "
            f"{r['ratio_to_1_device']:.2f} |")
  elif args.compare_prefetch:
    rows = prefetch_effect(args.presets.split(","), args.dtype, args.steps, args.rounds)
    print("\n| preset | optimizer | images/s, no prefetch | images/s, prefetch 2 | time ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['preset']} | {r['optimizer']} | {r['images_per_second_0']:.0f} | "
            f"{r['images_per_second_2']:.0f} | {r['time_2_over_0']:.3f} |")
  else:
    optimizers = args.optimizers.split(",")
    settings = [f"model.dtype={args.dtype}", f"data.prefetch={args.prefetch}"]
    rows = throughput(args.presets.split(","), optimizers, args.steps, args.rounds, settings)
    print(f"\n| preset | model | batch | optimizer | steps/s | images/s | time / "
          f"{optimizers[0]} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['preset']} | {r['model']} | {r['batch_size']} | {r['optimizer']} | "
            f"{r['steps_per_second']:.1f} | {r['images_per_second']:.0f} | "
            f"{r[f'ratio_to_{optimizers[0]}']:.2f} |")
  if args.output:
    args.output.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                       "jax": jax.__version__, "devices": str(jax.devices()),
                                       "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
  main()
