"""samx in an optax pipeline: SGD and the SAM family on a small problem with noisy labels.

A 10-class Gaussian-mixture problem (no download) with 40% of the training labels flipped at
random, a two-hidden-layer MLP, and the same momentum-SGD pipeline for every optimizer; only
the samx transform at its head changes. For each optimizer it prints the best test accuracy
seen during training (evaluated every 50 steps), the final test accuracy, the fraction of noisy
training examples fitted to their wrong labels at the end (memorization) and the time spent in
training steps.

    python examples/quickstart.py [--steps 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import samx
from samx.models import MLP

NUM_CLASSES, DIM, NOISE_RATE, EVAL_EVERY = 10, 32, 0.4, 50


def gaussian_mixture(n: int, rng: np.random.Generator, centers: np.ndarray):
  labels = rng.integers(0, NUM_CLASSES, size=n)
  x = centers[labels] + rng.normal(size=(n, DIM))
  return x.astype(np.float32), labels.astype(np.int32)


def make_data(seed: int):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(NUM_CLASSES, DIM)) * 0.45
  x_train, y_train = gaussian_mixture(8192, rng, centers)
  x_test, y_test = gaussian_mixture(4096, rng, centers)
  noisy = rng.uniform(size=len(y_train)) < NOISE_RATE
  shift = rng.integers(1, NUM_CLASSES, size=len(y_train))  # to a different class
  given = np.where(noisy, (y_train + shift) % NUM_CLASSES, y_train).astype(np.int32)
  return x_train, given, noisy, x_test, y_test


OPTIMIZERS = {
    "sgd": None,
    "sam": lambda: samx.sam(rho=0.3),
    "asam": lambda: samx.sam(rho=3.0, adaptive=True),
    "m-sam (m=16)": lambda: samx.sam(rho=0.3, group_size=16),
    "gsam": lambda: samx.gsam(rho=0.3, alpha=0.3),
    "saner": lambda: samx.saner(rho=0.3, alpha=0.5, warmup_steps=300),
    "l-sam": lambda: samx.logit_sam(rho=0.3),
    "j-sam": lambda: samx.jacobian_sam(rho=0.3),
}


def train(name: str, data, steps: int, seed: int) -> dict[str, float]:
  x_train, given, noisy, x_test, y_test = data
  model = MLP(DIM, (256, 256), NUM_CLASSES, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)

  def apply_fn(p, inputs):
    return nnx.merge(graphdef, p)(inputs)

  loss_fn = optax.softmax_cross_entropy_with_integer_labels
  head = [] if OPTIMIZERS[name] is None else [OPTIMIZERS[name]()]
  tx = optax.chain(*head, optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    objective = samx.Objective(apply_fn, loss_fn, x, y)
    loss, grads = objective.value_and_grad(params)
    updates, opt_state = tx.update(grads, opt_state, params, objective=objective)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda p, x: jnp.argmax(apply_fn(p, x), axis=-1))
  rng = np.random.default_rng(seed)
  best_test, seconds = 0.0, 0.0
  for step_index in range(1, steps + 1):
    index = rng.choice(len(given), size=128, replace=False)
    start = time.perf_counter()
    params, opt_state, _ = step(params, opt_state, x_train[index], given[index])
    if step_index % EVAL_EVERY == 0 or step_index == steps:
      jax.block_until_ready(params)
      seconds += time.perf_counter() - start
      best_test = max(best_test, float(np.mean(np.asarray(predict(params, x_test)) == y_test)))
    else:
      seconds += time.perf_counter() - start

  train_pred = np.asarray(predict(params, x_train))
  return {
      "best test accuracy": best_test,
      "final test accuracy": float(np.mean(np.asarray(predict(params, x_test)) == y_test)),
      "memorized noisy labels": float(np.mean(train_pred[noisy] == given[noisy])),
      "seconds": seconds,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  data = make_data(args.seed)
  print(f"{len(data[1])} training examples, {data[2].mean():.0%} with a wrong label; "
        f"{args.steps} steps of batch 128 each.\n")
  print(f"{'optimizer':<14} {'best test acc':>13} {'final test acc':>15} "
        f"{'noisy memorized':>16} {'seconds':>8}")
  for name in OPTIMIZERS:
    result = train(name, data, args.steps, args.seed)
    print(f"{name:<14} {result['best test accuracy']:>13.3f} "
          f"{result['final test accuracy']:>15.3f} {result['memorized noisy labels']:>16.3f} "
          f"{result['seconds']:>8.1f}")


if __name__ == "__main__":
  main()
