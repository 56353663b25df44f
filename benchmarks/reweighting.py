"""SAM's re-weighting of clean and noisy examples, and SANER's groups, over training.

Part 1 (Baek et al. 2024, Lemma 3.1): binary logistic regression on two Gaussian classes with
a fraction of the training labels flipped. For each example, 1-SAM scales its logit term by
``sigmoid(-z + rho ||x||) / sigmoid(-z)`` relative to SGD (``samx.analysis.logit_weights``),
which grows with the margin ``z``: the examples the model already fits, mostly the clean ones,
are up-weighted. The script trains with SGD and with 1-SAM (full batch) and records, over
training, the mean weight of the clean and of the noisy examples, the share of the noisy
labels fitted (memorization) and the test accuracy.

Part 2 (Luong et al. 2024): SANER's groups along a SAM run of the engine on the quick-start
problem (10-class Gaussian mixture, 40% symmetric noise, MLP). At the end of every epoch, on a
fixed batch of training examples, ``samx.analysis.saner_group_split`` gives the fractions of
the gradient's components in groups A (r >= 1), B (0 < r < 1) and C (r <= 0), and per group
the share of the gradient's mass that comes from the noisy examples.

    python benchmarks/reweighting.py --output-dir benchmarks/results/reweighting
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import samx
from samx import train
from samx.data import pipeline
from samx.train.step import cross_entropy


def logistic_data(n: int, dim: int, noise_rate: float, seed: int, signal: float):
  rng = np.random.default_rng(seed)
  mu = rng.normal(size=dim)
  mu *= signal / np.linalg.norm(mu)

  def draw(count):
    t = rng.choice([-1.0, 1.0], size=count)
    return (t[:, None] * mu + rng.normal(size=(count, dim))).astype(np.float32), t

  x, t = draw(n)
  x_test, t_test = draw(4 * n)
  noisy = np.zeros(n, bool)
  noisy[rng.choice(n, round(noise_rate * n), replace=False)] = True
  given = np.where(noisy, -t, t).astype(np.float32)
  return x, given, noisy, x_test, t_test.astype(np.float32)


def logistic_loss(outputs, targets):
  return jax.nn.softplus(-targets * outputs[:, 0])


def linear(params, inputs):
  return inputs @ params["w"]


def reweighting(args) -> dict:
  x, t, noisy, x_test, t_test = logistic_data(args.examples, args.dim, args.noise_rate,
                                              args.seed, args.signal)
  results = {}
  for name in ("sgd", "1-sam"):
    head = [] if name == "sgd" else [samx.sam(args.rho, group_size=1)]
    tx = optax.chain(*head, optax.sgd(args.learning_rate))
    params = {"w": jnp.zeros((args.dim, 1), jnp.float32)}
    state = tx.init(params)
    objective = samx.Objective(linear, logistic_loss, jnp.asarray(x), jnp.asarray(t))

    @jax.jit
    def step(params, state, objective=objective, tx=tx):
      grads = objective.grad(params)
      updates, state = tx.update(grads, state, params, objective=objective)
      return optax.apply_updates(params, updates), state

    @jax.jit
    def measure(params, objective=objective):
      weights = samx.analysis.logit_weights(objective, params, args.rho)
      split = samx.analysis.split_by_mask(weights, jnp.asarray(noisy))
      margins = jnp.asarray(t) * linear(params, objective.inputs)[:, 0]
      fitted = margins > 0
      test_correct = jnp.mean((jnp.asarray(t_test) * linear(params, jnp.asarray(x_test))[:, 0])
                              > 0)
      return {"weight_clean": split.clean, "weight_noisy": split.noisy,
              "memorization": jnp.mean(fitted[noisy]), "clean_fit": jnp.mean(fitted[~noisy]),
              "test_accuracy": test_correct}

    curve = []
    for index in range(args.steps + 1):
      if index % args.record_every == 0:
        curve.append({"step": index, **{k: float(v) for k, v in measure(params).items()}})
      if index < args.steps:
        params, state = step(params, state)
    results[name] = curve
  return results


def saner_groups(args) -> dict:
  config = train.override(train.preset("quickstart"), [
      "optimizer.name=sam", f"epochs={args.group_epochs}", f"seed={args.seed}"])
  trainer = train.make_trainer(config)
  data = trainer.data
  state = trainer.init()
  rows = np.random.default_rng([args.seed, 7]).choice(len(data.train["label"]), 1024,
                                                      replace=False)
  probe_x = jnp.asarray(data.train["input"][rows])
  probe_y = jnp.asarray(data.train["label"][rows])
  probe_noisy = jnp.asarray(data.train["noisy"][rows])
  graphdef = trainer.graphdef

  @jax.jit
  def split(params, model_state):
    def apply_fn(p, inputs):
      return nnx.merge(graphdef, p, model_state, copy=True)(inputs)

    objective = samx.Objective(apply_fn, cross_entropy, probe_x, probe_y)
    return samx.analysis.saner_group_split(objective, params, config.optimizer.rho,
                                           probe_noisy)

  arrays = {"input": data.train["input"], "label": data.train["label"]}
  curve = []
  evaluator = trainer.evaluator()
  for epoch in range(config.epochs + 1):
    if epoch > 0:
      for batch in pipeline.batches(arrays, config.batch_size, seed=config.seed,
                                    epoch=epoch - 1, mesh=trainer.mesh):
        state, _ = trainer.train_step(state, batch)
    result = jax.device_get(split(state.params, state.model_state))
    metrics = evaluator.metrics(state)
    curve.append({"epoch": epoch,
                  **{f"fraction_{g}": float(getattr(result.fractions, g)) for g in "abc"},
                  **{f"noisy_share_{g}": float(getattr(result.noisy_share, g)) for g in "abc"},
                  "noisy_fraction_of_probe": float(np.mean(data.train["noisy"][rows])),
                  "noisy_memorization": metrics["noisy_memorization"],
                  "test_accuracy": metrics["test_accuracy"]})
  return {"config": train.to_dict(config), "curve": curve}


def plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
  sam_curve = results["reweighting"]["1-sam"]
  steps = [r["step"] for r in sam_curve]
  axes[0].plot(steps, [r["weight_clean"] for r in sam_curve], label="clean examples")
  axes[0].plot(steps, [r["weight_noisy"] for r in sam_curve], label="noisy examples")
  axes[0].axhline(1.0, color="gray", lw=0.8, ls=":")
  axes[0].set(xlabel="step (1-SAM training)", ylabel="mean 1-SAM / SGD logit weight",
              title="logistic regression: SAM's per-example weights")
  axes[0].legend(fontsize=8)
  for name, curve in results["reweighting"].items():
    axes[1].plot([r["step"] for r in curve], [r["memorization"] for r in curve],
                 label=f"{name}: noisy labels fitted")
    axes[1].plot([r["step"] for r in curve], [r["test_accuracy"] for r in curve], ls="--",
                 label=f"{name}: test accuracy")
  axes[1].set(xlabel="step", title="logistic regression: memorization")
  axes[1].legend(fontsize=8)
  groups = results["saner_groups"]["curve"]
  epochs = [r["epoch"] for r in groups]
  for g, color in zip("abc", ("C0", "C1", "C2"), strict=True):
    axes[2].plot(epochs, [r[f"fraction_{g}"] for r in groups], color=color,
                 label=f"group {g.upper()}: fraction of components")
    axes[2].plot(epochs, [r[f"noisy_share_{g}"] for r in groups], color=color, ls="--",
                 label=f"group {g.upper()}: noisy share of |g|")
  axes[2].set(xlabel="epoch (SAM, quick start)", title="SANER's groups along a SAM run")
  axes[2].legend(fontsize=7)
  figure.savefig(path, dpi=110)
  plt.close(figure)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=200)
  parser.add_argument("--dim", type=int, default=400)
  parser.add_argument("--signal", type=float, default=3.0, help="||mu||")
  parser.add_argument("--noise-rate", type=float, default=0.2)
  parser.add_argument("--rho", type=float, default=0.2)
  parser.add_argument("--learning-rate", type=float, default=0.01)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--record-every", type=int, default=10)
  parser.add_argument("--group-epochs", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path("benchmarks/results/reweighting"))
  args = parser.parse_args()
  started = time.perf_counter()
  results = {"reweighting": reweighting(args), "saner_groups": saner_groups(args)}
  results["seconds"] = time.perf_counter() - started
  results["command"] = "python benchmarks/reweighting.py " + " ".join(
      f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output_dir")
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  plot(results, args.output_dir / "reweighting.png")
  lines = ["| optimizer | step | mean weight, clean | mean weight, noisy | noisy fitted | "
           "test acc |", "|---|---|---|---|---|---|"]
  for name, curve in results["reweighting"].items():
    shown = {args.record_every, 5 * args.record_every, len(curve) // 4 * args.record_every,
             len(curve) // 2 * args.record_every, args.steps}
    for r in (r for r in curve if r["step"] in shown):
      lines.append(f"| {name} | {r['step']} | {r['weight_clean']:.3f} | "
                   f"{r['weight_noisy']:.3f} | {r['memorization']:.3f} | "
                   f"{r['test_accuracy']:.3f} |")
  lines += ["", "| epoch | A | B | C | noisy share A | noisy share B | noisy share C | "
            "noisy memorized | test acc |", "|---|---|---|---|---|---|---|---|---|"]
  for r in results["saner_groups"]["curve"]:
    lines.append(f"| {r['epoch']} | {r['fraction_a']:.3f} | {r['fraction_b']:.3f} | "
                 f"{r['fraction_c']:.3f} | {r['noisy_share_a']:.3f} | "
                 f"{r['noisy_share_b']:.3f} | {r['noisy_share_c']:.3f} | "
                 f"{r['noisy_memorization']:.3f} | {r['test_accuracy']:.3f} |")
  (args.output_dir / "table.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"\n{results['seconds']:.0f} s; results in {args.output_dir}")


if __name__ == "__main__":
  main()
