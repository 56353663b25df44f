"""Feature balance in a toy setting (Springer et al. 2024): SAM keeps learning the hard feature.

Data (``samx.data.synthetic.two_features``): a binary label shown by an easy block (one
dimension, margin 2, noise 0.1: separable, learned in a few steps) and a hard block (20
dimensions, margin 1 in one of them, unit noise in all: Bayes accuracy 0.84 alone). Model: a
two-layer ReLU network ``f(x) = v . relu(W x + b)`` (width 100) with the logistic loss, trained
by full-batch gradient descent (lr 0.1) with SGD's gradient, SAM's (one ``eps`` for the batch),
1-SAM's (one per example; ``samx.sam(rho, group_size=1)``) and 1-SAM's two halves: L-SAM (the
importance weights at the phantom point, the Jacobian at ``w``: Springer et al.'s
importance-weighting effect alone) and J-SAM (the Jacobian there: their learning-rate-scaling
effect alone), on 512 examples.

Measured along training, on 4,000 fresh test examples: the model's accuracy from each feature
alone (the other block set to zero) and a ridge probe on the hidden features (trained on 2,000
examples whose *other* block is random, ``samx.analysis.linear_probe_accuracy``); the
per-example importance weights at ``w`` and at the phantom point ``w + eps``
(``samx.analysis.importance_weights``), their Gini coefficients, and at the end their Lorenz
curves (``samx.analysis.lorenz_curve``), drawn as the paper's Figure 3 draws them: SGD's at its
real parameters against SAM's at its phantom parameters.

    python benchmarks/feature_balance_toy.py    # benchmarks/results/feature_balance_toy/
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import samx
from samx.data.synthetic import two_features

WIDTH = 100
TRAIN, PROBE_TRAIN, TEST = 512, 2000, 4000


def init(key: jax.Array, dim: int) -> dict:
  first, second = jax.random.split(key)
  return {"W": jax.random.normal(first, (dim, WIDTH)) / np.sqrt(dim),
          "b": jnp.zeros(WIDTH),
          "v": jax.random.normal(second, (WIDTH,)) / np.sqrt(WIDTH)}


def hidden(params: dict, inputs: jax.Array) -> jax.Array:
  return jax.nn.relu(inputs @ params["W"] + params["b"])


def apply(params: dict, inputs: jax.Array) -> jax.Array:
  return hidden(params, inputs) @ params["v"]


def logistic(outputs: jax.Array, signs: jax.Array) -> jax.Array:
  return jnp.logaddexp(0.0, -signs * outputs)


# name: (transform, one eps per example?). L-SAM keeps only the importance weights at the
# phantom point (Jacobian at w), J-SAM only the Jacobian there (Baek et al.'s decomposition;
# Springer et al.'s importance-weighting and learning-rate-scaling effects).
TRANSFORMS = {"sam": (samx.sam, False), "1-sam": (samx.sam, True),
              "1-l-sam": (samx.logit_sam, True), "1-j-sam": (samx.jacobian_sam, True)}


def parse(spec: str) -> tuple[str, str, float, int | None]:
  """``sgd`` or ``NAME+rho=R`` (NAME in ``TRANSFORMS``) -> (label, name, rho, group_size)."""
  name, *settings = spec.split("+")
  values = dict(s.split("=") for s in settings)
  rho = float(values.get("rho", 0.0))
  if name != "sgd" and name not in TRANSFORMS:
    raise SystemExit(f"--optimizers: unknown {name!r}; use sgd or one of {sorted(TRANSFORMS)} "
                     f"with +rho=R")
  return spec, name, rho, 1 if name != "sgd" and TRANSFORMS[name][1] else None


def probe_sets(seed: int, feature: str) -> tuple:
  other = {"easy_correlation": 0.5} if feature == "hard" else {"hard_correlation": 0.5}
  fit = two_features(PROBE_TRAIN, seed=seed + 20_000, **other)
  test = two_features(TEST, seed=seed + 30_000, **other)
  return (jnp.asarray(fit.inputs), jnp.asarray(fit.labels), jnp.asarray(test.inputs),
          jnp.asarray(test.labels))


def train_one(spec: str, seed: int, steps: int, evaluate_every: int, learning_rate: float
              ) -> dict:
  label, kind, rho, group_size = parse(spec)
  data = two_features(TRAIN, seed=seed)
  test = two_features(TEST, seed=seed + 10_000)
  objective = samx.Objective(apply, logistic, jnp.asarray(data.inputs), jnp.asarray(data.signs))
  params = init(jax.random.PRNGKey(seed), data.inputs.shape[1])
  tx = optax.sgd(learning_rate) if kind == "sgd" else optax.chain(
      TRANSFORMS[kind][0](rho, group_size=group_size), optax.sgd(learning_rate))
  state = tx.init(params)
  # Importance weights: SGD's phantom point at a nominal radius, to show the same comparison.
  weight_rho = rho if kind != "sgd" else 1.0
  weight_group = group_size if kind != "sgd" else None
  probes = {feature: probe_sets(seed, feature) for feature in ("easy", "hard")}
  test_x, test_t = jnp.asarray(test.inputs), jnp.asarray(test.signs)
  easy_columns = jnp.arange(test.inputs.shape[1]) < test.easy_dim

  @jax.jit
  def step(params, state):
    _, grads = objective.value_and_grad(params)
    updates, state = tx.update(grads, state, params, objective=objective)
    return optax.apply_updates(params, updates), state

  @jax.jit
  def measure(params):
    def accuracy(inputs):
      return jnp.mean(jnp.sign(apply(params, inputs)) == test_t)

    weights = samx.analysis.importance_weights(objective, params, weight_rho, weight_group)
    row = {"test_accuracy": accuracy(test_x),
           "easy_alone": accuracy(jnp.where(easy_columns, test_x, 0.0)),
           "hard_alone": accuracy(jnp.where(easy_columns, 0.0, test_x)),
           "gini_real": samx.analysis.gini_coefficient(weights.real),
           "gini_phantom": samx.analysis.gini_coefficient(weights.phantom),
           "train_loss": jnp.mean(logistic(apply(params, objective.inputs), objective.targets))}
    for feature, (fit_x, fit_y, probe_x, probe_y) in probes.items():
      row[f"{feature}_probe"] = samx.analysis.linear_probe_accuracy(
          hidden(params, fit_x), fit_y, hidden(params, probe_x), probe_y, num_classes=2,
          l2=1e-2)
    return row, weights

  curve = []
  for number in range(steps + 1):
    if number % evaluate_every == 0:
      row, weights = measure(params)
      curve.append({"step": number, **{k: float(v) for k, v in row.items()}})
    if number < steps:
      params, state = step(params, state)
  return {"optimizer": label, "seed": seed, "curve": curve,
          "weights_real": np.asarray(weights.real).tolist(),
          "weights_phantom": np.asarray(weights.phantom).tolist()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizers", default="sgd,sam+rho=0.25,sam+rho=0.5,sam+rho=1,sam+rho=2,"
                      "1-sam+rho=0.25,1-sam+rho=0.5,1-sam+rho=1,1-l-sam+rho=0.5,1-l-sam+rho=1,"
                      "1-j-sam+rho=0.5,1-j-sam+rho=1")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--evaluate-every", type=int, default=100)
  parser.add_argument("--learning-rate", type=float, default=0.1)
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path("benchmarks/results/feature_balance_toy"))
  args = parser.parse_args()
  started = time.perf_counter()
  runs = [train_one(spec, int(seed), args.steps, args.evaluate_every, args.learning_rate)
          for spec in args.optimizers.split(",") for seed in args.seeds.split(",")]
  seconds = time.perf_counter() - started
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / "results.json").write_text(json.dumps(
      {"runs": runs, "seconds": seconds,
       "arguments": {k: str(v) for k, v in vars(args).items()}}) + "\n")
  table = format_table(runs, args.optimizers.split(","))
  (args.output_dir / "table.md").write_text(table + "\n")
  plot(runs, args.optimizers.split(","), args.output_dir / "feature_balance_toy.png")
  print(table)
  print(f"\n{seconds:.0f} s; results in {args.output_dir}")


def _cell(values: list[float]) -> str:
  spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
  return f"{statistics.fmean(values):.3f}{spread}"


def format_table(runs: list[dict], specs: list[str]) -> str:
  keys = ("test_accuracy", "easy_alone", "hard_alone", "easy_probe", "hard_probe",
          "gini_real", "gini_phantom")
  lines = ["| optimizer | seeds | step | test acc | easy alone | hard alone | easy probe | "
           "hard probe | Gini at w | Gini at w+eps |", "|---|---|---|---|---|---|---|---|---|---|"]
  for spec in specs:
    chosen = [r for r in runs if r["optimizer"] == spec]
    for index in (len(chosen[0]["curve"]) // 6, -1):
      rows = [r["curve"][index] for r in chosen]
      lines.append(f"| {spec} | {len(chosen)} | {rows[0]['step']} | "
                   + " | ".join(_cell([row[k] for row in rows]) for k in keys) + " |")
  return "\n".join(lines)


def plot(runs: list[dict], specs: list[str], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, 4, figsize=(18, 3.8), constrained_layout=True)
  colors = {spec: plt.get_cmap("tab20")(index % 20) for index, spec in enumerate(specs)}
  for spec in specs:
    chosen = [r for r in runs if r["optimizer"] == spec]
    steps = [row["step"] for row in chosen[0]["curve"]]

    def mean_curve(key, chosen=chosen):
      return np.mean([[row[key] for row in r["curve"]] for r in chosen], axis=0)

    axes[0].plot(steps, mean_curve("hard_alone"), color=colors[spec], label=spec)
    axes[0].plot(steps, mean_curve("hard_probe"), color=colors[spec], linestyle=":")
    axes[1].plot(steps, mean_curve("easy_alone"), color=colors[spec], label=spec)
    key = "gini_real" if spec == "sgd" else "gini_phantom"
    axes[2].plot(steps, mean_curve(key), color=colors[spec],
                 label=f"{spec} ({'at w' if spec == 'sgd' else 'at w+eps'})")
    population, share = samx.analysis.lorenz_curve(
        jnp.asarray(chosen[0]["weights_real" if spec == "sgd" else "weights_phantom"]))
    axes[3].plot(population, share, color=colors[spec],
                 label=f"{spec} ({'real' if spec == 'sgd' else 'phantom'})")
  axes[0].set(title="hard feature (solid: model, easy block zeroed;\ndotted: linear probe)",
              xlabel="step", ylabel="test accuracy")
  axes[1].set(title="easy feature (model, hard block zeroed)", xlabel="step",
              ylabel="test accuracy")
  axes[2].set(title="Gini of the importance weights", xlabel="step", ylabel="Gini")
  axes[3].plot([0, 1], [0, 1], "k:", linewidth=1)
  axes[3].set(title="Lorenz curves at the end (seed 0)", xlabel="share of examples",
              ylabel="share of importance weight")
  for axis in axes:
    axis.legend(fontsize=8)
  figure.savefig(path, dpi=110)
  plt.close(figure)


if __name__ == "__main__":
  main()
