"""Throughput of the input pipeline alone against the training step it feeds.

The pipeline is what runs per step outside the model: gathering a shuffled batch of CIFAR-10
shaped uint8 images on the host, putting it on the device, and the on-device augmentation
(random crop with padding 4, flip, normalisation), compiled with jax.jit. The training step is
the engine's own compiled step (``samx.train.make_trainer``) for SGD and SAM on ResNet-18 (CIFAR
stem) at the given width. Both are reported in images per second, measured in one process.

    python benchmarks/input_pipeline.py [--batch-size 128] [--resnet-width 0.25]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

from samx import train
from samx.data import pipeline
from samx.train.trainer import BATCH_AXIS
from samx.train.training_data import split_arrays

LEARNING_RATE, RHO = 0.1, 0.05  # as in step_cost.py


def pipeline_images_per_second(batch_size: int, num_examples: int, epochs: int) -> float:
  rng = np.random.default_rng(0)
  arrays = {"image": rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, num_examples).astype(np.int32)}
  augment = jax.jit(pipeline.augment)
  key = jax.random.key(0)
  images = 0
  warm = next(pipeline.batches(arrays, batch_size, seed=0, epoch=0))
  jax.block_until_ready(augment(key, warm["image"]))
  start = time.perf_counter()
  for epoch in range(epochs):
    for step, batch in enumerate(pipeline.batches(arrays, batch_size, seed=0, epoch=epoch)):
      out = augment(jax.random.fold_in(key, step), batch["image"])
      images += batch_size
  jax.block_until_ready(out)
  return images / (time.perf_counter() - start)


def step_images_per_second(name: str, args: argparse.Namespace) -> float:
  """Images/s of the engine's own compiled step (``samx.train.make_trainer``) for ``name``,
  on a fixed batch of random CIFAR-shaped images (the step alone: no augmentation in it)."""
  rng = np.random.default_rng(0)
  n = args.batch_size
  images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, n)
  data = train.TrainingData(split_arrays(images, labels), split_arrays(images, labels), 10,
                            "random CIFAR-shaped images", np.full(3, 0.5), np.full(3, 0.25))
  config = train.override(train.Config(), [
      "data.name=cifar10", "model.name=resnet18", f"model.width={args.resnet_width}",
      f"optimizer.name={name}", f"optimizer.rho={RHO}", f"optimizer.learning_rate={LEARNING_RATE}",
      f"batch_size={n}", "devices=1", "checkpoint_every=0"])
  trainer = train.make_trainer(config, data)
  batch = next(pipeline.batches({"input": images, "label": labels.astype(np.int32)}, n, seed=0,
                                epoch=0, mesh=trainer.mesh, batch_axis=BATCH_AXIS))
  state = trainer.init()
  state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  return args.steps * n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--resnet-width", type=float, default=0.25)
  parser.add_argument("--examples", type=int, default=10240, help="dataset size for the pipeline")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5, help="timed training steps")
  parser.add_argument("--output", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  result = {
      "pipeline_images_per_s": pipeline_images_per_second(args.batch_size, args.examples,
                                                          args.epochs),
      "sgd_step_images_per_s": step_images_per_second("sgd", args),
      "sam_step_images_per_s": step_images_per_second("sam", args),
  }
  result["pipeline_over_sgd_step"] = (result["pipeline_images_per_s"]
                                      / result["sgd_step_images_per_s"])
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); batch {args.batch_size}, ResNet-18 "
        f"width {args.resnet_width}")
  for name, value in result.items():
    print(f"{name:>26}: {value:,.1f}")
  if args.output:
    args.output.write_text(json.dumps({"args": {**vars(args), "output": str(args.output)},
                                       **result}, indent=2))
  return result


if __name__ == "__main__":
  main()
