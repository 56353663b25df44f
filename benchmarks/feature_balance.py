"""Feature balance (Springer et al. 2024): does SAM learn the hard feature better than SGD?

The paper's protocol on the dominoes datasets, where an easy (MNIST) and a hard half both
predict the label: CIFAR-MNIST (binary: digits 0/1 on CIFAR-10 automobile/truck) and
FMNIST-MNIST with five classes (digits 0-4 on Fashion-MNIST T-shirt, trouser, pullover, dress,
coat; after Kirichenko et al. 2022); ``fmnist_mnist`` is the binary variant (T-shirt/dress).
10% of the training split is held out (``samx.data.dominoes(validation_fraction=0.1)``) and the
network, Springer et al.'s small CNN, trains on the rest through the engine for every rho of a
sweep (rho 0 is SGD) and every seed.

After every epoch (``train.run(epoch_metrics=...)``) each feature is probed on the frozen
penultimate features (``samx.analysis.linear_probe_accuracy``, a ridge probe) on dominoes whose
*other* half is random (correlation 1/k), so a probe can only read its own feature:
``val_<feature>_probe`` is fit on one half of the held-out validation images and scored on the
other (for selection), ``<feature>_probe`` is fit on all of them and scored on the test split
(reported). For each dataset, SAM's rho is the one with the best mean validation hard-feature
probe at the end of training; SGD has no rho to select. A run that stops being finite is
reported as diverged (and left out of the means).

    SAMX_DATA_DIR=../shared/data python benchmarks/feature_balance.py \
        --kinds fmnist_mnist5 --output-dir benchmarks/results/feature_balance

Run again with the same arguments, it reuses the finished runs (``<output-dir>/runs/``) and
rewrites the table and the plots.
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
from flax import nnx

import samx
from samx import train
from samx.data.dominoes import dominoes
from samx.train.errors import TrainingDivergedError

PROBE_SEED = 1234
VALIDATION_FRACTION = 0.1
FIVE = (0, 1, 2, 3, 4)
# name: (dominoes kind, options)
KINDS = {
    "cifar_mnist": ("cifar_mnist", {}),
    "fmnist_mnist": ("fmnist_mnist", {}),
    "fmnist_mnist5": ("fmnist_mnist", {"easy_classes": FIVE, "hard_classes": FIVE}),
}


def config_for(name: str, rho: float, seed: int, args) -> train.Config:
  kind, options = KINDS[name]
  assignments = [f"data.name=dominoes:{kind}", f"seed={seed}", f"epochs={args.epochs}",
                 f"optimizer.learning_rate={args.learning_rate}",
                 f"data.options.validation_fraction={VALIDATION_FRACTION}",
                 "optimizer.name=sgd" if rho == 0 else f"optimizer.rho={rho}"]
  assignments += [f"data.options.{key}={','.join(map(str, value))}"
                  for key, value in options.items()]
  if args.train_examples:
    assignments.append(f"data.train_examples={args.train_examples}")
  return train.override(train.preset("dominoes-cifar-mnist"), assignments)


_probe_accuracy = jax.jit(samx.analysis.linear_probe_accuracy,
                          static_argnames=("num_classes", "l2"))


class Prober:
  """Probe sets of one dataset: decorrelated dominoes of the validation and the test split."""

  def __init__(self, name: str, data_dir: str | None, l2: float, every: int = 1):
    kind, options = KINDS[name]
    self.k = len(options.get("hard_classes", (0, 1)))
    self.l2, self.every = l2, every
    self._trainer, self._features = None, None
    self.sets = {}
    for feature in ("hard", "easy"):
      other = "easy_correlation" if feature == "hard" else "hard_correlation"
      common = {other: 1.0 / self.k, "seed": PROBE_SEED, "data_dir": data_dir,
                "validation_fraction": VALIDATION_FRACTION, **options}
      validation = dominoes(kind, "validation", **common)
      test = dominoes(kind, "test", **common)
      key = f"{feature}_labels"
      self.sets[feature] = (validation.images, validation.metadata[key], test.images,
                            test.metadata[key])

  def _features_of(self, trainer: train.Trainer):
    """The frozen network's penultimate features, compiled once per trainer."""
    if self._trainer is not trainer:

      def features(params, model_state, images):
        model = nnx.merge(trainer.eval_graphdef, params, model_state)
        return model.features(trainer.preprocess(images))

      self._trainer, self._features = trainer, jax.jit(features)
    return self._features

  def probe(self, fit_x: jax.Array, fit_y: np.ndarray, test_x: jax.Array, test_y: np.ndarray
            ) -> float:
    return float(_probe_accuracy(fit_x, jnp.asarray(fit_y), test_x, jnp.asarray(test_y),
                                 num_classes=self.k, l2=self.l2))

  def __call__(self, trainer: train.Trainer, state: train.TrainState) -> dict[str, float]:
    epoch = int(state.step) // trainer.steps_per_epoch
    if epoch % self.every and epoch != trainer.config.epochs:
      return {}
    features = self._features_of(trainer)

    def embed(images: np.ndarray) -> jax.Array:
      return jnp.concatenate([features(state.params, state.model_state, images[i:i + 1000])
                              for i in range(0, len(images), 1000)]).astype(jnp.float32)

    metrics = {}
    for feature, (val_x, val_y, test_x, test_y) in self.sets.items():
      val_f, test_f = embed(val_x), embed(test_x)
      half = len(val_y) // 2
      metrics[f"val_{feature}_probe"] = self.probe(val_f[:half], val_y[:half], val_f[half:],
                                                   val_y[half:])
      metrics[f"{feature}_probe"] = self.probe(val_f, val_y, test_f, test_y)
    return metrics


def run_one(config: train.Config, directory: pathlib.Path, prober: Prober) -> dict:
  """The run's history and summary: read back if finished, else trained (again)."""
  if train.inspect_run(directory).kind == "finished" and (
      train.to_dict(train.load_run_config(directory)) == train.to_dict(config)):
    history = [json.loads(line) for line in (directory / "metrics.jsonl").read_text()
               .splitlines()]
    return {"history": history, "summary": json.loads((directory / "summary.json").read_text()),
            "diverged": False}
  if (directory / "diverged.json").exists():
    return json.loads((directory / "diverged.json").read_text())
  try:
    result = train.run(config, directory, overwrite=True, log=None, epoch_metrics=prober)
  except TrainingDivergedError as error:
    history = [json.loads(line) for line in (directory / "metrics.jsonl").read_text()
               .splitlines()] if (directory / "metrics.jsonl").exists() else []
    record = {"history": history, "summary": {}, "diverged": True, "message": str(error)}
    (directory / "diverged.json").write_text(json.dumps(record) + "\n")
    return record
  return {"history": result.history, "summary": result.summary, "diverged": False}


def initial_probes(name: str, seed: int, args, prober: Prober) -> dict:
  """The probes of the untrained network (the seed's initialisation): the floor that training
  improves on."""
  trainer = train.make_trainer(config_for(name, 0.0, seed, args))
  return {"seed": seed, **prober(trainer, trainer.init())}


def label(rho: float) -> str:
  return "sgd" if rho == 0 else f"sam rho={rho:g}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kinds", default="fmnist_mnist5,cifar_mnist")
  parser.add_argument("--rhos", default="0,0.01,0.02,0.05,0.1,0.2", help="0 is SGD")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--learning-rate", type=float, default=0.01)
  parser.add_argument("--train-examples", type=int, default=None,
                      help="train on a random subset of the 90%% (default: all of it)")
  parser.add_argument("--l2", type=float, default=1e-2, help="the probes' ridge penalty")
  parser.add_argument("--probe-every", type=int, default=1,
                      help="probe every this many epochs (and after the last)")
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path("benchmarks/results/feature_balance"))
  args = parser.parse_args()
  started = time.perf_counter()
  rhos = [float(r) for r in args.rhos.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  results_file = args.output_dir / "results.json"
  results = json.loads(results_file.read_text()) if results_file.exists() else {}
  for name in args.kinds.split(","):
    prober = Prober(name, train.preset("dominoes-cifar-mnist").data.data_dir, args.l2,
                    args.probe_every)
    runs = []
    for rho in rhos:
      for seed in seeds:
        config = config_for(name, rho, seed, args)
        directory = args.output_dir / "runs" / name / label(rho).replace(" ", "_") / f"seed{seed}"
        outcome = run_one(config, directory, prober)
        runs.append({"rho": rho, "seed": seed, **outcome})
        last = outcome["history"][-1] if outcome["history"] else {}
        print(json.dumps({"kind": name, "rho": rho, "seed": seed,
                          "diverged": outcome["diverged"],
                          **{k: last.get(k) for k in ("test_accuracy", "hard_probe",
                                                      "easy_probe", "val_hard_probe")},
                          "seconds": round(time.perf_counter() - started)}), flush=True)
    results[name] = {"arguments": {k: str(v) for k, v in vars(args).items()},
                     "config": train.to_dict(config_for(name, rhos[-1], seeds[0], args)),
                     "runs": runs, "initial": [initial_probes(name, seed, args, prober)
                                               for seed in seeds]}
  args.output_dir.mkdir(parents=True, exist_ok=True)
  results_file.write_text(json.dumps(results) + "\n")
  table = format_tables(results)
  (args.output_dir / "table.md").write_text(table + "\n")
  plot(results, args.output_dir / "feature_balance.png")
  print(table)
  print(f"\n{time.perf_counter() - started:.0f} s; results in {args.output_dir}")


def _cell(values: list[float]) -> str:
  if not values:
    return "-"
  spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
  return f"{statistics.fmean(values):.3f}{spread}"


def final_values(runs: list[dict], rho: float, key: str) -> list[float]:
  return [r["history"][-1][key] for r in runs if r["rho"] == rho and not r["diverged"]]


def selected_rho(runs: list[dict]) -> float | None:
  """SAM's rho with the best mean validation hard-feature probe at the end of training."""
  candidates = {r["rho"] for r in runs if r["rho"] > 0}
  scored = {rho: statistics.fmean(v) for rho in candidates
            if (v := final_values(runs, rho, "val_hard_probe"))}
  return max(scored, key=scored.get) if scored else None


def format_tables(results: dict) -> str:
  keys = ("test_accuracy", "val_hard_probe", "hard_probe", "easy_probe")
  lines = ["| dominoes | optimizer | seeds (diverged) | test acc | validation hard probe | "
           "hard-feature probe | easy-feature probe | train s/run |",
           "|---|---|---|---|---|---|---|---|"]
  for name, entry in results.items():
    runs = entry["runs"]
    chosen = selected_rho(runs)
    initial = entry.get("initial", [])
    if initial:
      lines.append(f"| {name} | untrained (initialisation) | {len(initial)} | - | "
                   + " | ".join(_cell([p[k] for p in initial]) for k in keys[1:]) + " | - |")
    for rho in sorted({r["rho"] for r in runs}):
      group = [r for r in runs if r["rho"] == rho]
      diverged = sum(r["diverged"] for r in group)
      mark = " (selected)" if rho == chosen else ""
      seconds = [r["summary"]["train_seconds"] for r in group if not r["diverged"]]
      time_cell = f"{statistics.fmean(seconds):.0f}" if seconds else "-"
      lines.append(f"| {name} | {label(rho)}{mark} | {len(group)} ({diverged}) | "
                   + " | ".join(_cell(final_values(runs, rho, k)) for k in keys)
                   + f" | {time_cell} |")
  return "\n".join(lines)


def plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(results)
  figure, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 7),
                              constrained_layout=True, squeeze=False)
  for column, name in enumerate(names):
    runs = results[name]["runs"]
    chosen = selected_rho(runs)
    rhos = sorted({r["rho"] for r in runs})
    for rho in (0.0, chosen):
      if rho is None:
        continue
      group = [r for r in runs if r["rho"] == rho and not r["diverged"]]
      epochs = [row["epoch"] for row in group[0]["history"] if "hard_probe" in row]
      for feature, style in (("hard", "-"), ("easy", "--")):
        curve = np.mean([[row[f"{feature}_probe"] for row in r["history"] if "hard_probe" in row]
                         for r in group], axis=0)
        axes[0, column].plot(epochs, curve, style, label=f"{label(rho)}: {feature} feature")
    axes[0, column].set(title=f"{name}: probe accuracy over training (mean of seeds)",
                        xlabel="epoch", ylabel="probe test accuracy")
    axes[0, column].legend(fontsize=8)
    for feature, marker in (("hard", "o"), ("easy", "s")):
      means = [statistics.fmean(v) if (v := final_values(runs, rho, f"{feature}_probe"))
               else np.nan for rho in rhos]
      spreads = [statistics.stdev(v) if len(v := final_values(runs, rho, f"{feature}_probe")) > 1
                 else 0.0 for rho in rhos]
      axes[1, column].errorbar(range(len(rhos)), means, yerr=spreads, marker=marker,
                               capsize=3, label=f"{feature} feature")
    axes[1, column].set_xticks(range(len(rhos)), [label(r).replace("sam ", "") for r in rhos])
    axes[1, column].set(title=f"{name}: final probes against rho (0 = SGD)",
                        ylabel="probe test accuracy")
    axes[1, column].legend(fontsize=8)
  figure.savefig(path, dpi=110)
  plt.close(figure)


if __name__ == "__main__":
  main()
