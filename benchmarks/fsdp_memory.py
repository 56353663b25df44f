"""Per-device memory of the training state under FSDP (``sharding.fsdp=N``), N = 1, 2, 4, 8.

For each model (the full-width ResNet-18 of ``saner-cifar10`` and the ViT-T/4 of
``vit-cifar10``, each with its preset's method and base optimizer), the engine's train step is
compiled on 8 devices with the state split N ways, and XLA's memory analysis of the compiled
step gives the bytes each device holds: its arguments (the state's shards and the batch's) and
its temporaries. "state" is the per-device bytes of the state's own shards (parameters,
optimizer state, BatchNorm statistics), read from the arrays' shardings. Nothing is timed. On a
CPU the 8 devices are virtual (``--xla_force_host_platform_device_count=8``, which this script
sets for itself); the layout and the bytes are what 8 accelerators would hold.

    python benchmarks/fsdp_memory.py                 # prints a table, writes the JSON
    python benchmarks/fsdp_memory.py --models vit --fsdp 1,8
"""

from __future__ import annotations

import os

from samx.train import virtual_cpu_devices_flags  # importing JAX does not start its backends

os.environ["XLA_FLAGS"] = virtual_cpu_devices_flags(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import json
import pathlib

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from samx import train
from samx.train import sharding
from samx.train.training_data import TrainingData, split_arrays

MODELS = {"resnet18": "saner-cifar10", "vit": "vit-cifar10"}
RESULTS = pathlib.Path(__file__).parent / "results" / "fsdp_memory_cpu.json"


def cifar_shaped_data(examples: int = 256) -> TrainingData:
  """Random CIFAR-10-shaped images: the layout and the bytes do not depend on the pixels."""
  rng = np.random.default_rng(0)

  def split():
    return split_arrays(rng.integers(0, 256, (examples, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, examples))

  return TrainingData(split(), split(), 10, "cifar10-shaped", np.full(3, 120.0, np.float32),
                      np.full(3, 60.0, np.float32))


def measure(preset: str, fsdp: int) -> dict:
  config = train.override(train.preset(preset), [f"sharding.fsdp={fsdp}"])
  trainer = train.make_trainer(config, data=cifar_shaped_data())
  state = trainer.init()
  batch_sharding = NamedSharding(trainer.mesh, PartitionSpec(sharding.BATCH_AXES))
  batch = {"input": jax.ShapeDtypeStruct((config.batch_size, 32, 32, 3), np.uint8,
                                         sharding=batch_sharding),
           "label": jax.ShapeDtypeStruct((config.batch_size,), np.int32,
                                         sharding=batch_sharding)}
  memory = trainer.train_step.lower(state, batch).compile().memory_analysis()
  return {"preset": preset, "method": config.optimizer.name, "base": config.optimizer.base,
          "fsdp": fsdp, "mesh": dict(trainer.mesh.shape),
          "parameters": int(sum(leaf.size for leaf in jax.tree.leaves(state.params))),
          "state_bytes_per_device": sharding.bytes_per_device(state),
          "argument_bytes": int(memory.argument_size_in_bytes),
          "temp_bytes": int(memory.temp_size_in_bytes)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS), help="resnet18, vit")
  parser.add_argument("--fsdp", default="1,2,4,8", help="values of sharding.fsdp")
  parser.add_argument("--output", default=str(RESULTS))
  args = parser.parse_args()
  rows = [measure(MODELS[name], int(n)) | {"model": name}
          for name in args.models.split(",") for n in args.fsdp.split(",")]
  mib = 2**20
  print("| model | method, base | fsdp | state per device (MiB) | vs fsdp=1 | compiled step's "
        "arguments (MiB) | temporaries (MiB) |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for row in rows:
    first = next(r for r in rows if r["model"] == row["model"])
    print(f"| {row['model']} ({row['parameters']:,} parameters) | {row['method']}, "
          f"{row['base']} | {row['fsdp']} | {row['state_bytes_per_device'] / mib:.1f} | "
          f"{row['state_bytes_per_device'] / first['state_bytes_per_device']:.3f} | "
          f"{row['argument_bytes'] / mib:.1f} | {row['temp_bytes'] / mib:.1f} |")
  pathlib.Path(args.output).write_text(json.dumps(
      {"jax": jax.__version__, "devices": "8 virtual CPU devices", "rows": rows}, indent=1)
      + "\n")


if __name__ == "__main__":
  main()
