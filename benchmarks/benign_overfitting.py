"""Benign vs harmful overfitting (Chen et al. 2023): SGD and SAM on signal/noise-patch data.

Data ``x = [y mu, xi]`` (Chen et al.'s model, ``samx.data.synthetic.signal_noise_patches``;
10% of the training labels flipped), the two-layer ReLU CNN with a fixed second layer, and
full-batch gradient descent, through the engine (preset ``chen-patches``). Over a grid of the
signal strength ``||mu||`` and the patch dimension ``d``, the script trains SGD and SAM to zero
training error and records the test error: SGD overfits harmfully (high test error) where the
noise patches are easier to memorize than the signal is to learn (small ``n ||mu||^4 /
(sigma_p^4 d)``); the paper proves SAM overfits benignly in a larger region.

Along one harmful setting it also records, over training, the signal learned (``max_r <w_{j,r},
j mu>``, averaged over the two signs ``j``) and the noise memorized (the mean over training
examples of ``max_r <w_{y_i,r}, xi_i>``, the filters of the example's given label against its
noise patch) for SGD and SAM.

    python benchmarks/benign_overfitting.py --output-dir benchmarks/results/benign_overfitting
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from samx import train
from samx.data import pipeline, synthetic


def config_for(args, optimizer: str, signal_norm: float, dim: int, epochs: int) -> train.Config:
  assignments = [f"optimizer.name={optimizer}", f"data.options.signal_norm={signal_norm}",
                 f"data.options.dim={dim}", f"data.options.train_size={args.train_size}",
                 f"epochs={epochs}", f"eval_every={epochs}", f"seed={args.seed}",
                 f"optimizer.learning_rate={args.learning_rate}", f"noise.rate={args.flip}"]
  if optimizer == "sam":
    assignments.append(f"optimizer.rho={args.rho}")
  return train.override(train.preset("chen-patches"), assignments)


def grid(args) -> list[dict]:
  rows = []
  for signal_norm in args.signal_norms:
    for dim in args.dims:
      for optimizer in ("sgd", "sam"):
        result = train.run(config_for(args, optimizer, signal_norm, dim, args.epochs), log=None)
        final = result.history[-1]
        rows.append({"signal_norm": signal_norm, "dim": dim, "optimizer": optimizer,
                     "test_error": 1.0 - final["test_accuracy"],
                     "train_accuracy": final["train_accuracy"],
                     "noisy_memorization": final["noisy_memorization"]})
        print(f"||mu||={signal_norm:<5} d={dim:<5} {optimizer:<4} test error "
              f"{rows[-1]['test_error']:.3f}  train acc {final['train_accuracy']:.3f}",
              flush=True)
  return rows


def curves(args) -> dict:
  """Signal learning and noise memorization over training, SGD vs SAM, at one setting."""
  out = {}
  for optimizer in ("sgd", "sam"):
    config = config_for(args, optimizer, args.curve_signal_norm, args.curve_dim, args.epochs)
    trainer = train.make_trainer(config)
    patches = synthetic.signal_noise_patches(
        args.train_size, args.curve_dim, signal_norm=args.curve_signal_norm, noise_std=1.0,
        seed=config.seed)
    rows = np.arange(args.train_size)
    noise = jnp.asarray(patches.inputs[rows, 1 - patches.signal_patch])
    given = jnp.asarray(trainer.data.train["label"])
    mu = jnp.asarray(patches.mu, jnp.float32)
    m = config.model.filters_per_sign

    @jax.jit
    def measure(params, m=m, mu=mu, given=given, noise=noise):
      filters = params["filters"][...]  # (2m, d): +1 filters first
      positive, negative = filters[:m], filters[m:]
      signal = 0.5 * (jnp.max(positive @ mu) + jnp.max(-(negative @ mu)))
      own = jnp.where(given[:, None, None] == 1, positive[None], negative[None])  # (n, m, d)
      memorized = jnp.mean(jnp.max(jnp.einsum("nmd,nd->nm", own, noise), axis=1))
      return signal, memorized

    state = trainer.init()
    arrays = {"input": trainer.data.train["input"], "label": trainer.data.train["label"]}
    curve = []
    for epoch in range(config.epochs + 1):
      if epoch:
        for batch in pipeline.batches(arrays, config.batch_size, seed=config.seed,
                                      epoch=epoch - 1, mesh=trainer.mesh):
          state, _ = trainer.train_step(state, batch)
      if epoch % args.curve_every == 0:
        signal, memorized = measure(state.params)
        curve.append({"epoch": epoch, "signal_learning": float(signal),
                      "noise_memorization": float(memorized)})
    out[optimizer] = curve
  return out


def plot(results: dict, args, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, 4, figsize=(18, 4), constrained_layout=True)
  errors = {}
  for optimizer in ("sgd", "sam"):
    table = np.zeros((len(args.signal_norms), len(args.dims)))
    for row in results["grid"]:
      if row["optimizer"] == optimizer:
        table[args.signal_norms.index(row["signal_norm"]), args.dims.index(row["dim"])] = row[
            "test_error"]
    errors[optimizer] = table
  for axis, optimizer in zip(axes[:2], ("sgd", "sam"), strict=True):
    image = axis.imshow(errors[optimizer], origin="lower", cmap="viridis", vmin=0, vmax=0.5,
                        aspect="auto")
    axis.set_xticks(range(len(args.dims)), [str(d) for d in args.dims])
    axis.set_yticks(range(len(args.signal_norms)), [str(s) for s in args.signal_norms])
    axis.set(xlabel="patch dimension d", ylabel="signal strength ||mu||",
             title=f"{optimizer.upper()}: test error")
    for (i, j), value in np.ndenumerate(errors[optimizer]):
      axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")
    figure.colorbar(image, ax=axis, shrink=0.8)
  for optimizer, style in (("sgd", "-"), ("sam", "--")):
    curve = results["curves"][optimizer]
    epochs = [r["epoch"] for r in curve]
    axes[2].plot(epochs, [r["noise_memorization"] for r in curve], style, color="C3",
                 label=f"{optimizer.upper()}: noise memorization")
    axes[2].plot(epochs, [r["signal_learning"] for r in curve], style, color="C0",
                 label=f"{optimizer.upper()}: signal learning")
  axes[2].set(xlabel="epoch (full-batch step)",
              title=f"||mu||={args.curve_signal_norm}, d={args.curve_dim}")
  axes[2].legend(fontsize=8)
  gain = errors["sgd"] - errors["sam"]
  image = axes[3].imshow(gain, origin="lower", cmap="RdBu", vmin=-0.5, vmax=0.5, aspect="auto")
  axes[3].set_xticks(range(len(args.dims)), [str(d) for d in args.dims])
  axes[3].set_yticks(range(len(args.signal_norms)), [str(s) for s in args.signal_norms])
  axes[3].set(xlabel="patch dimension d", ylabel="||mu||",
              title="test error SGD − SAM (blue: SAM better)")
  figure.colorbar(image, ax=axes[3], shrink=0.8)
  figure.savefig(path, dpi=110)
  plt.close(figure)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--signal-norms", type=lambda s: [float(v) for v in s.split(",")],
                      default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
  parser.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")],
                      default=[100, 200, 400, 800, 1600])
  parser.add_argument("--train-size", type=int, default=100)
  parser.add_argument("--flip", type=float, default=0.1)
  parser.add_argument("--epochs", type=int, default=300)
  parser.add_argument("--learning-rate", type=float, default=0.5)
  parser.add_argument("--rho", type=float, default=1.0)
  parser.add_argument("--curve-signal-norm", type=float, default=0.75)
  parser.add_argument("--curve-dim", type=int, default=400)
  parser.add_argument("--curve-every", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path("benchmarks/results/benign_overfitting"))
  args = parser.parse_args()
  started = time.perf_counter()
  results = {"grid": grid(args), "curves": curves(args)}
  results["seconds"] = time.perf_counter() - started
  results["arguments"] = {k: v for k, v in vars(args).items() if k != "output_dir"}
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  plot(results, args, args.output_dir / "benign_overfitting.png")
  header = "| ‖mu‖ \\ d | " + " | ".join(str(d) for d in args.dims) + " |"
  lines = []
  for optimizer in ("sgd", "sam"):
    lines += [f"Test error, {optimizer.upper()}:", "", header,
              "|---|" + "---|" * len(args.dims)]
    for signal_norm in args.signal_norms:
      cells = [f"{r['test_error']:.3f}" for d in args.dims for r in results["grid"]
               if r["optimizer"] == optimizer and r["signal_norm"] == signal_norm
               and r["dim"] == d]
      lines.append(f"| {signal_norm} | " + " | ".join(cells) + " |")
    lines.append("")
  (args.output_dir / "table.md").write_text("\n".join(lines))
  print("\n".join(lines))
  print(f"{results['seconds']:.0f} s; results in {args.output_dir}")


if __name__ == "__main__":
  main()
