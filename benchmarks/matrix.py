"""Every method the engine knows on every model, whole-batch and 1-SAM, in float32 and bfloat16.

Each cell builds the engine's own training step (``samx.train.make_trainer``) for one method,
model, grouping (``optimizer.group_size`` unset or 1) and compute dtype, on a fixed batch of
small synthetic images with a learnable cue, and reports:

* whether it trains: ``--steps`` steps on that batch with finite metrics and a falling loss
  (the mean of the last two losses below the first);
* its step time as a ratio to SGD's on the same model and dtype, timed side by side (rounds of
  every method's compiled step in turn, the median of the per-round ratios);
* its peak memory (XLA's estimate of the compiled step: arguments, outputs and temporaries) as
  a ratio to SGD's;
* or, for a combination the engine refuses, its message (SAM-ON on a model without
  normalization layers, ...).

    python benchmarks/matrix.py                      # the whole matrix (about 25 min on 2 cores)
    python benchmarks/matrix.py --models vit --methods sgd,sam --dtypes float32
    python benchmarks/matrix.py --tables-from benchmarks/results/matrix_cpu.json

Writes a markdown table to stdout and JSON to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samx import train
from samx.train.errors import ConfigError
from samx.train.methods import METHODS
from samx.train.training_data import TrainingData, split_arrays

# Each model at a size that compiles in seconds: the architecture, not the width, is the point.
MODELS = {
    "mlp": ["model.name=mlp", "model.hidden=[64,64]"],
    "small_cnn": ["model.name=small_cnn", "model.width=0.25"],
    "resnet18": ["model.name=resnet18", "model.width=0.0625"],
    "preact_resnet18": ["model.name=preact_resnet18", "model.width=0.0625"],
    "wide_resnet": ["model.name=wide_resnet", "model.depth=10", "model.widen_factor=1",
                    "model.width=0.25"],
    "vit": ["model.name=vit", "model.hidden=[32]", "model.depth=2", "model.heads=4",
            "model.mlp_dim=64", "model.patch_size=4"],
}
GROUPINGS = {"whole batch": "null", "group_size=1": "1"}
DTYPES = ("float32", "bfloat16")
METHOD_NAMES = (*METHODS, "penalty")
# The methods without a perturbed pass: ``group_size`` changes nothing in them.
ONE_GRADIENT = ("sgd", "penalty")


def synthetic_data(n: int = 64, size: int = 16, classes: int = 4) -> TrainingData:
  """Random uint8 images whose first pixel encodes the label: learnable in a few steps."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, classes, n).astype(np.int32)
  images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
  images[:, :2, :2, :] = (labels[:, None, None, None] * 80).astype(np.uint8)
  arrays = split_arrays(images, labels, labels, np.zeros(n, bool))
  return TrainingData(arrays, split_arrays(images[:16], labels[:16]), classes,
                      "synthetic images", np.full(3, 0.5), np.full(3, 0.25))


def cell_config(model: str, method: str, grouping: str, dtype: str, batch_size: int
                ) -> train.Config:
  return train.override(train.Config(), [
      "data.name=cifar10", "data.augment=false", *MODELS[model], f"model.dtype={dtype}",
      f"optimizer.name={method}", f"optimizer.group_size={GROUPINGS[grouping]}",
      "optimizer.learning_rate=0.05", "optimizer.rho=0.05", "looksam.k=2",
      f"batch_size={batch_size}", "epochs=4", "checkpoint_every=0"])


def peak_bytes(compiled: Any) -> int:
  """Live at once, at most: inputs, outputs and XLA's temporaries."""
  memory = compiled.memory_analysis()
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
             + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def build_cell(config: train.Config, data: TrainingData, batch: dict) -> dict:
  """The compiled step of one cell and its state, or why the engine refuses it."""
  try:
    trainer = train.make_trainer(config, data)
  except ConfigError as error:
    return {"status": "refused", "reason": str(error)}
  state = trainer.init()
  started = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch).compile()
  return {"status": "built", "compiled": compiled, "state": state,
          "compile_seconds": time.perf_counter() - started, "peak_bytes": peak_bytes(compiled)}


def train_a_few_steps(cell: dict, batch: dict, steps: int) -> None:
  """``steps`` steps on ``batch``: the losses, and whether they are finite and falling."""
  losses, finite = [], True
  for _ in range(steps):
    cell["state"], metrics = cell["compiled"](cell["state"], batch)
    metrics = jax.device_get(metrics)
    losses.append(float(metrics["loss"]))
    finite = finite and all(np.isfinite(float(v)) for v in metrics.values()) and not float(
        metrics["nonfinite"])
  falling = finite and statistics.fmean(losses[-2:]) < losses[0]
  cell.update(losses=losses, status="trains" if falling else (
      "not finite" if not finite else "loss not falling"))


def time_side_by_side(cells: dict[str, dict], batch: dict, rounds: int, steps: int) -> None:
  """Rounds of ``steps`` steps of every cell in turn; each cell's per-round time over SGD's."""
  timed = {name: cell for name, cell in cells.items() if "compiled" in cell}
  per_round = {name: [] for name in timed}
  for _ in range(rounds):
    for name, cell in timed.items():
      jax.block_until_ready(cell["state"])
      started = time.perf_counter()
      for _ in range(steps):
        cell["state"], metrics = cell["compiled"](cell["state"], batch)
      jax.block_until_ready((cell["state"], metrics))
      per_round[name].append((time.perf_counter() - started) / steps)
  baseline = per_round.get("sgd")
  for name, times in per_round.items():
    timed[name]["step_ms"] = 1e3 * statistics.median(times)
    if baseline:
      timed[name]["time_over_sgd"] = statistics.median(
          t / b for t, b in zip(times, baseline, strict=True))


def run_matrix(models, methods, groupings, dtypes, *, batch_size: int = 16, steps: int = 6,
               rounds: int = 5, timed_steps: int = 3, log=print) -> list[dict]:
  """Every cell of the matrix (see the module doc), as a list of rows."""
  data = synthetic_data()
  batch = {"input": jnp.asarray(data.train["input"][:batch_size]),
           "label": jnp.asarray(data.train["label"][:batch_size])}
  rows = []
  for model in models:
    for dtype in dtypes:
      # SGD is the baseline of the ratios; without them (no timing, no SGD row) it is skipped.
      needs_sgd = rounds > 0 or "sgd" in methods
      sgd = (build_cell(cell_config(model, "sgd", "whole batch", dtype, batch_size), data,
                        batch) if needs_sgd else {"status": "not built"})
      if needs_sgd:
        train_a_few_steps(sgd, batch, steps)
      for grouping in groupings:
        cells = {"sgd": sgd} if needs_sgd else {}
        for method in methods:
          if method == "sgd":
            continue
          if method in ONE_GRADIENT and grouping != "whole batch":
            cells[method] = {"status": "n/a", "reason": "one gradient per step: no groups"}
            continue
          cell = build_cell(cell_config(model, method, grouping, dtype, batch_size), data,
                            batch)
          if "compiled" in cell:
            train_a_few_steps(cell, batch, steps)
          cells[method] = cell
          log(f"{model} {dtype} {grouping} {method}: {cell['status']}")
        if rounds:
          time_side_by_side(cells, batch, rounds, timed_steps)
        for method, cell in cells.items():
          if method == "sgd" and "sgd" not in methods:
            continue
          rows.append({
              "model": model, "dtype": dtype, "grouping": grouping, "method": method,
              "status": cell["status"], "reason": cell.get("reason"),
              "losses": cell.get("losses"), "step_ms": cell.get("step_ms"),
              "time_over_sgd": cell.get("time_over_sgd"),
              "peak_bytes": cell.get("peak_bytes"),
              "memory_over_sgd": (cell["peak_bytes"] / sgd["peak_bytes"]
                                  if "peak_bytes" in cell and "peak_bytes" in sgd else None),
              "compile_seconds": cell.get("compile_seconds")})
  return rows


def _ratio(value: float | None) -> str:
  return "" if value is None else f"{value:.2f}"


def markdown(rows: list[dict]) -> str:
  lines = ["| model | dtype | grouping | method | status | time / SGD | memory / SGD |",
           "|---|---|---|---|---|---|---|"]
  for row in rows:
    status = (f"{row['status']}: {row['reason']}" if row["status"] in ("refused", "n/a")
              else row["status"])
    lines.append(f"| {row['model']} | {row['dtype']} | {row['grouping']} | {row['method']} | "
                 f"{status} | {_ratio(row['time_over_sgd'])} | "
                 f"{_ratio(row['memory_over_sgd'])} |")
  return "\n".join(lines)


def markdown_by_model(rows: list[dict], dtype: str) -> str:
  """One dtype's cells as a table: a method per row, a model and grouping per column, each
  cell ``time / SGD, memory / SGD`` (``-`` where the engine refuses the combination, ``n/a``
  where it means nothing, ``failed`` where it did not train)."""
  rows = [row for row in rows if row["dtype"] == dtype]
  columns = list(dict.fromkeys((row["model"], row["grouping"]) for row in rows))
  methods = list(dict.fromkeys(row["method"] for row in rows))
  cells = {(row["method"], row["model"], row["grouping"]): row for row in rows}
  short = {"whole batch": "", "group_size=1": ", 1-SAM"}

  def cell(row: dict | None) -> str:
    if row is None:
      return ""
    if row["status"] == "refused":
      return "-"
    if row["status"] == "n/a":
      return "n/a"
    if row["status"] != "trains":
      return row["status"]
    return f"{_ratio(row['time_over_sgd'])}, {_ratio(row['memory_over_sgd'])}"

  lines = ["| method | " + " | ".join(f"{m}{short[g]}" for m, g in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for method in methods:
    lines.append(f"| {method} | " + " | ".join(
        cell(cells.get((method, m, g))) for m, g in columns) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--methods", default=",".join(METHOD_NAMES))
  parser.add_argument("--groupings", default=",".join(GROUPINGS),
                      help=f"comma-separated, of: {', '.join(GROUPINGS)}")
  parser.add_argument("--dtypes", default=",".join(DTYPES))
  parser.add_argument("--steps", type=int, default=6, help="training steps per cell")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds (0: no timing)")
  parser.add_argument("--output", type=pathlib.Path, default=None, help="JSON file to write")
  parser.add_argument("--tables-from", type=pathlib.Path, default=None,
                      help="print the tables of a JSON file this script wrote, and stop")
  args = parser.parse_args(argv)
  if args.tables_from:
    rows = json.loads(args.tables_from.read_text())["rows"]
    for dtype in dict.fromkeys(row["dtype"] for row in rows):
      print(f"\n{dtype}: time / SGD, memory / SGD\n" + markdown_by_model(rows, dtype))
    return rows
  rows = run_matrix(args.models.split(","), args.methods.split(","),
                    args.groupings.split(","), args.dtypes.split(","), steps=args.steps,
                    rounds=args.rounds)
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); jax {jax.__version__}; batch 16 of "
        "16x16x3 synthetic images")
  print(markdown(rows))
  for dtype in dict.fromkeys(row["dtype"] for row in rows):
    print(f"\n{dtype}: time / SGD, memory / SGD\n" + markdown_by_model(rows, dtype))
  if args.output:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"device": f"{device.platform} ({device.device_kind})",
                                       "jax": jax.__version__, "rows": rows}, indent=2) + "\n")
  return rows


if __name__ == "__main__":
  main()
