"""Cost of one training step for the SAM family, side by side with SGD and optax.contrib.sam.

For each model, every optimizer's full training step (forward/backward with BatchNorm
statistics from the clean pass, the optimizer update, the parameter update) is jit-compiled in
this one process, and then timed in interleaved rounds so that the machine's noise falls on all
of them alike. Reported per optimizer: median step time and its ratio to SGD, XLA's FLOP count
of the compiled step (``compiled.cost_analysis()``) and its ratio to SGD, and XLA's peak memory
estimate of the step (``compiled.memory_analysis()``) and its ratio to SGD.

    python benchmarks/step_cost.py                      # CPU-sized defaults
    python benchmarks/step_cost.py --models resnet18 --resnet-width 1.0 --batch-size 128  # GPU

Writes a markdown table to stdout and JSON to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import samx
import samx.models
from samx.models import MLP, SmallCNN, ViT, resnet18

LEARNING_RATE, RHO = 0.1, 0.05
LOOKSAM_K = 5
# Rows that only some models have: SAM-ON needs normalization layers.
MODEL_SPECIFIC = {"sam-on", "1-sam (batch statistics)"}


def optimizers(group_size: int, model_name: str = "mlp", *, model: nnx.Module | None = None,
               total_steps: int = 100) -> dict[str, Callable[[], Any]]:
  """Every optimizer measured: a samx transform (or none) before momentum SGD with weight decay.

  LookSAM's and AE-SAM's costs are means over steps: LookSAM evaluates the second gradient on
  one step in ``k`` (time it over a multiple of ``k`` steps), AE-SAM where its threshold says
  (``total_steps`` sets its threshold's schedule, so that the timed steps run through it).
  """
  def descent():
    return optax.add_decayed_weights(5e-4), optax.sgd(LEARNING_RATE, momentum=0.9)

  return {
      "sgd": lambda: optax.chain(*descent()),
      "sam": lambda: optax.chain(samx.sam(RHO), *descent()),
      "asam": lambda: optax.chain(samx.sam(10 * RHO, adaptive=True), *descent()),
      "saner": lambda: optax.chain(samx.saner(RHO, warmup_steps=100), *descent()),
      "saner (track_groups=False)": lambda: optax.chain(
          samx.saner(RHO, warmup_steps=100, track_groups=False), *descent()),
      "gsam": lambda: optax.chain(samx.gsam(RHO, 0.1), *descent()),
      f"m-sam (m={group_size})": lambda: optax.chain(samx.sam(RHO, group_size=group_size),
                                                     *descent()),
      f"m-sam (m={group_size}, one group at a time)": lambda: optax.chain(
          samx.sam(RHO, group_size=group_size, groups_in_parallel=1), *descent()),
      "l-sam": lambda: optax.chain(samx.logit_sam(RHO), *descent()),
      "j-sam": lambda: optax.chain(samx.jacobian_sam(RHO), *descent()),
      # SGD on the loss plus feature- and last-layer-norm penalties (one forward/backward).
      "penalty": lambda: optax.chain(*descent()),
      "optax.contrib.sam": lambda: optax.contrib.sam(
          optax.chain(*descent()), optax.chain(optax.contrib.normalize(), optax.sgd(RHO)),
          opaque_mode=True),
      "looksam (k=5)": lambda: optax.chain(samx.looksam(RHO, k=LOOKSAM_K), *descent()),
      "ae-sam": lambda: optax.chain(samx.ae_sam(RHO, total_steps=total_steps), *descent()),
  } | ({
      # SAM-ON: only the normalization layers perturbed (the MLP has none).
      "sam-on": lambda: optax.chain(
          samx.sam(RHO, perturb_mask=samx.models.normalization_mask(model)), *descent()),
  } if model is not None and any(jax.tree.leaves(samx.models.normalization_mask(model)))
      else {}) | ({
      # 1-SAM with BatchNorm normalising every example with the clean batch's statistics held
      # fixed, as a surrogate (the engine's default under group_size).
      "1-sam (batch statistics)": lambda: optax.chain(samx.sam(RHO, group_size=1), *descent()),
  } if model is not None and jax.tree.leaves(nnx.state(model, nnx.BatchStat)) else {}) | {
      # Per-example SAM (Baek et al.'s 1-SAM): layer weights factored (the default), and every
      # group gradient by vmap (per-example weights; the path before group_path existed).
      "1-sam": lambda: optax.chain(samx.sam(RHO, group_size=1), *descent()),
      "j-sam 1-sam": lambda: optax.chain(samx.jacobian_sam(RHO, group_size=1), *descent()),
      "l-sam 1-sam": lambda: optax.chain(samx.logit_sam(RHO, group_size=1), *descent()),
      "1-sam (vmap)": lambda: optax.chain(samx.sam(RHO, group_size=1, group_path="vmap"),
                                          *descent()),
      "j-sam 1-sam (vmap)": lambda: optax.chain(
          samx.jacobian_sam(RHO, group_size=1, group_path="vmap"), *descent()),
      f"m-sam (m={group_size}, vmap)": lambda: optax.chain(
          samx.sam(RHO, group_size=group_size, group_path="vmap"), *descent()),
  }


def make_model(name: str, args: argparse.Namespace) -> tuple[nnx.Module, tuple[int, ...]]:
  if name == "mlp":
    hidden = (args.mlp_width, args.mlp_width)
    return MLP(784, hidden, 10, dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0)), (28, 28, 1)
  if name == "cnn":
    return SmallCNN((28, 28, 1), 10, dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0)), (28, 28, 1)
  if name == "resnet18":
    return resnet18(10, width=args.resnet_width, dtype=jnp.dtype(args.dtype),
                    rngs=nnx.Rngs(0)), (32, 32, 3)
  if name == "vit":  # vit-cifar10-cpu's model by default; vit-cifar10's ViT-T/4 with
    # --vit-hidden 192 --vit-depth 12 --vit-heads 3 --vit-mlp-dim 768
    return ViT(10, 4, args.vit_hidden, args.vit_depth, args.vit_heads, args.vit_mlp_dim,
               dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0)), (32, 32, 3)
  raise ValueError(f"--models: unknown model {name!r}; choose from mlp, cnn, resnet18, vit.")


def make_step(model: nnx.Module, name: str, tx: optax.GradientTransformation):
  """The training step ``(params, stats, opt_state, x, y) -> (params, stats, opt_state, loss)``."""
  graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
  xent = optax.softmax_cross_entropy_with_integer_labels

  def forward(params, stats, x):
    network = nnx.merge(graphdef, params, stats, copy=True)
    return network(x), nnx.state(network, nnx.BatchStat)

  def clean_loss(params, stats, x, y):
    if name == "penalty":
      network = nnx.merge(graphdef, params, stats, copy=True)
      features = network.features(x)
      penalty = samx.penalties.feature_and_weight_penalty(
          features, network.head.kernel[...], feature_coef=1e-3, weight_coef=1e-3)
      loss = jnp.mean(xent(network.head(features), y)) + penalty
      return loss, nnx.state(network, nnx.BatchStat)
    logits, new_stats = forward(params, stats, x)
    return jnp.mean(xent(logits, y)), new_stats

  def clean_loss_and_outputs(params, stats, x, y):
    logits, new_stats = forward(params, stats, x)
    return jnp.mean(xent(logits, y)), (new_stats, logits)

  fixed_graphdef, _, _ = nnx.split(samx.models.normalizing_with(model), nnx.Param,
                                   nnx.BatchStat)

  def clean_loss_and_batch_statistics(params, stats, x, y):
    network = nnx.merge(graphdef, params, stats, copy=True)
    logits, batch_stats = samx.models.batch_statistics(network, lambda m: m(x))
    return jnp.mean(xent(logits, y)), (nnx.state(network, nnx.BatchStat), batch_stats)

  def step(params, stats, opt_state, x, y):
    if name.endswith("(batch statistics)"):
      (loss, (new_stats, batch_stats)), grads = jax.value_and_grad(
          clean_loss_and_batch_statistics, has_aux=True)(params, stats, x, y)
      objective = samx.Objective(
          lambda p, inputs: nnx.merge(fixed_graphdef, p, batch_stats, copy=True)(inputs), xent,
          x, y, surrogate=True)
      updates, opt_state = tx.update(grads, opt_state, params, objective=objective)
      return optax.apply_updates(params, updates), new_stats, opt_state, loss
    if name.startswith("j-sam"):
      # J-SAM reuses the clean pass's outputs for its logit term.
      (loss, (new_stats, logits)), grads = jax.value_and_grad(
          clean_loss_and_outputs, has_aux=True)(params, stats, x, y)
      objective = samx.Objective(lambda p, inputs: forward(p, stats, inputs)[0], xent, x, y,
                                 outputs=logits)
      updates, opt_state = tx.update(grads, opt_state, params, objective=objective)
      return optax.apply_updates(params, updates), new_stats, opt_state, loss
    (loss, new_stats), grads = jax.value_and_grad(clean_loss, has_aux=True)(params, stats, x, y)
    if name == "optax.contrib.sam":
      def grad_fn(p, _):
        return jax.grad(lambda q: clean_loss(q, stats, x, y)[0])(p)

      updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    else:
      # The perturbed pass normalises with its own batch statistics and discards them.
      objective = samx.Objective(lambda p, inputs: forward(p, stats, inputs)[0], xent, x, y)
      updates, opt_state = tx.update(grads, opt_state, params, objective=objective)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return step


def measure(model_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
  model, image_shape = make_model(model_name, args)
  model.train()
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch_size, *image_shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=args.batch_size), jnp.int32)

  runs = {}
  chosen = optimizers(args.group_size, model_name, model=model,
                      total_steps=2 + args.rounds * args.steps)
  if args.optimizers:
    wanted = {"sgd", "sam", *(name.strip() for name in args.optimizers.split(","))}
    unknown = wanted - set(chosen) - MODEL_SPECIFIC
    if unknown:
      raise ValueError(f"--optimizers: unknown {sorted(unknown)}; choose from {sorted(chosen)}.")
    chosen = {name: make for name, make in chosen.items() if name in wanted}
  for name, make_tx in chosen.items():
    tx = make_tx()
    state = (params, stats, tx.init(params))
    compiled = jax.jit(make_step(model, name, tx)).lower(*state, x, y).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # Live at once, at most: inputs, outputs and XLA's temporaries (on CPU,
    # `peak_memory_in_bytes` leaves the temporaries out).
    memory = compiled.memory_analysis()
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    for _ in range(2):  # warm up
      *state, loss = compiled(*state, x, y)
    jax.block_until_ready(loss)
    runs[name] = {"compiled": compiled, "state": state, "times": [],
                  "flops": float(cost.get("flops", float("nan"))), "peak_bytes": int(peak)}

  names = list(runs)
  for round_index in range(args.rounds):
    # Rotate the order, so that no optimizer always runs first after another one's caches.
    for name in names[round_index % len(names):] + names[:round_index % len(names)]:
      run = runs[name]
      state = run["state"]
      start = time.perf_counter()
      for _ in range(args.steps):
        *state, loss = run["compiled"](*state, x, y)
      jax.block_until_ready((state, loss))
      run["times"].append((time.perf_counter() - start) / args.steps)
      run["state"] = state

  # Ratios are taken within each round (the optimizers ran back to back), then summarised.
  def round_ratios(name: str, reference: str) -> list[float]:
    return [t / r for t, r in zip(runs[name]["times"], runs[reference]["times"], strict=True)]

  def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(median), float(q3)

  sgd = runs["sgd"]
  rows = []
  for name, run in runs.items():
    label = name
    if name == "ae-sam":  # how often it took the SAM branch over the warm-up and timed steps
      opt_state = run["state"][2]
      share = (optax.tree_utils.tree_get(opt_state, "sam_steps")
               / optax.tree_utils.tree_get(opt_state, "count"))
      label = f"ae-sam (SAM on {float(share):.0%} of steps)"
    rows.append({
        "model": model_name, "optimizer": label,
        "ms_per_step": 1e3 * statistics.median(run["times"]),
        "time_vs_sgd": quartiles(round_ratios(name, "sgd")),
        "time_vs_sam": quartiles(round_ratios(name, "sam")),
        "gflops_per_step": run["flops"] / 1e9, "flops_vs_sgd": run["flops"] / sgd["flops"],
        "peak_mb": run["peak_bytes"] / 2**20,
        "memory_vs_sgd": run["peak_bytes"] / sgd["peak_bytes"],
    })
  return rows


def markdown(rows: list[dict[str, Any]]) -> str:
  """A table; time ratios are the median over rounds with the interquartile range."""

  def ratio(q: tuple[float, float, float]) -> str:
    return f"{q[1]:.2f} ({q[0]:.2f}–{q[2]:.2f})"

  lines = ["| model | optimizer | ms/step | time / SGD | time / SAM | GFLOP/step | FLOPs / SGD "
           "| peak MiB | memory / SGD |", "|" + "---|" * 9]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['optimizer']} | {r['ms_per_step']:.2f} | {ratio(r['time_vs_sgd'])} "
        f"| {ratio(r['time_vs_sam'])} | {r['gflops_per_step']:.3f} | {r['flops_vs_sgd']:.3f} | "
        f"{r['peak_mb']:.1f} | {r['memory_vs_sgd']:.2f} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="mlp,resnet18")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--mlp-width", type=int, default=512, help="hidden units of the MLP")
  parser.add_argument("--resnet-width", type=float, default=0.25,
                      help="channel multiplier of ResNet-18 (1.0 = the standard 64-512)")
  parser.add_argument("--vit-hidden", type=int, default=64, help="the ViT's token width")
  parser.add_argument("--vit-depth", type=int, default=4, help="the ViT's blocks")
  parser.add_argument("--vit-heads", type=int, default=4, help="the ViT's attention heads")
  parser.add_argument("--vit-mlp-dim", type=int, default=128, help="the ViT's MLP width")
  parser.add_argument("--group-size", type=int, default=16, help="m of the m-SAM row")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="the models' compute dtype (parameters stay float32)")
  parser.add_argument("--optimizers", default=None,
                      help="comma-separated subset of the rows (sgd and sam are always run)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
  parser.add_argument("--output", type=pathlib.Path, default=None, help="JSON file to write")
  args = parser.parse_args(argv)
  if args.batch_size % args.group_size:
    parser.error(f"--group-size {args.group_size} must divide --batch-size {args.batch_size}")
  if args.steps % LOOKSAM_K:
    parser.error(f"--steps must be a multiple of LookSAM's k={LOOKSAM_K}, so that each timed "
                 "round holds the same number of its perturbed steps")

  rows = [row for name in args.models.split(",") for row in measure(name.strip(), args)]
  device = jax.devices()[0]
  header = (f"device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s), "
            f"host {platform.processor() or platform.machine()}; jax {jax.__version__}, "
            f"batch {args.batch_size}, MLP 784-{args.mlp_width}-{args.mlp_width}-10, ResNet-18 "
            f"width {args.resnet_width}, ViT {args.vit_depth}x{args.vit_hidden} "
            f"({args.vit_heads} heads, MLP {args.vit_mlp_dim}, 4x4 patches), {args.dtype}, "
            f"rounds {args.rounds} x {args.steps} "
            "steps (median)")
  print(header)
  print(markdown(rows))
  if args.output:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"setup": header, "args": vars(args) | {
        "output": str(args.output)}, "rows": rows}, indent=2))
  return rows


if __name__ == "__main__":
  main()
