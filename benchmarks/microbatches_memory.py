"""The temporary memory of one SAM step with gradient accumulation inside it.

``samx.Objective(..., microbatches=k)`` takes every gradient of the step over ``k`` slices of
the batch, one after another. This prints XLA's memory analysis of the compiled step (no
timing: the figure is the compiler's, the same on every run) for a 2,048-example MLP
(64 -> 512 -> 10) at k = 1, 2, 8, 32.

  python benchmarks/microbatches_memory.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import samx


def main() -> None:
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(size=(64, 512)) / 8, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(512, 10)) / 20, jnp.float32)}
  x = jnp.asarray(rng.normal(size=(2048, 64)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=2048), jnp.int32)

  def model(p, inputs):
    return jnp.tanh(inputs @ p["w1"]) @ p["w2"]

  tx = samx.sam(0.05)
  print("| microbatches | temporary memory of the SAM step (MiB) |")
  print("|---:|---:|")
  for slices in (1, 2, 8, 32):
    objective = samx.Objective(model, optax.softmax_cross_entropy_with_integer_labels, x,
                               labels, microbatches=slices)
    step = jax.jit(lambda p, o=objective: tx.update(o.grad(p), tx.init(p), p, objective=o)[0])
    memory = step.lower(params).compile().memory_analysis()
    print(f"| {slices} | {memory.temp_size_in_bytes / 2**20:.1f} |")


if __name__ == "__main__":
  main()
