"""Throughput of the input pipeline alone against the training step it feeds.

The pipeline is what runs per step outside the model: gathering a shuffled batch of CIFAR-10
shaped uint8 images on the host, putting it on the device, and the on-device augmentation
(random crop with padding 4, flip, normalisation), compiled with jax.jit. The training step is
SGD and SAM on ResNet-18 (CIFAR stem) at the given width, as in step_cost.py. Both are reported
in images per second, measured in one process.

    python benchmarks/input_pipeline.py [--batch-size 128] [--resnet-width 0.25]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import step_cost
from flax import nnx

from samx.data import pipeline


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
  step_args = argparse.Namespace(mlp_width=512, resnet_width=args.resnet_width,
                                 batch_size=args.batch_size)
  model, _ = step_cost.make_model("resnet18", step_args)
  model.train()
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tx = step_cost.optimizers(16, "resnet18")[name]()
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.normal(size=(args.batch_size, 32, 32, 3)), jax.numpy.float32)
  y = jax.numpy.asarray(rng.integers(0, 10, args.batch_size), jax.numpy.int32)
  state = (params, stats, tx.init(params))
  step = jax.jit(step_cost.make_step(model, name, tx))
  *state, loss = step(*state, x, y)
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(args.steps):
    *state, loss = step(*state, x, y)
  jax.block_until_ready(loss)
  return args.steps * args.batch_size / (time.perf_counter() - start)


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
