"""Feature balance (Springer et al. 2024): does SAM learn the hard feature better than SGD?

On the dominoes datasets (CIFAR-MNIST: an MNIST 0/1 on top of a CIFAR-10 automobile/truck;
FMNIST-MNIST: on top of a Fashion-MNIST T-shirt/dress), where the easy (MNIST) and the hard
half both predict the label, the script trains Springer et al.'s small CNN with SGD and with
SAM through the engine, freezes it, and fits a linear probe (``samx.analysis.
linear_probe_accuracy``) on its penultimate features for each feature separately: the hard
feature's probe is trained and tested on dominoes whose easy half is random
(``easy_correlation=0.5``), so it can only read the hard half, and the easy feature's probe on
dominoes whose hard half is random. The paper's claim: SAM's hard-feature probe is more
accurate than SGD's (SAM suppresses the well-learned easy feature, so the hard one is learned
too), at little cost to the easy one.

    SAMX_DATA_DIR=../shared/data python benchmarks/feature_balance.py \
        --output-dir benchmarks/results/feature_balance
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

import samx
from samx import train
from samx.data import dominoes

PROBE_SEED = 1234


def probe_features(trainer: train.Trainer, state: train.TrainState, images: np.ndarray,
                   batch: int = 1000) -> np.ndarray:
  model = trainer.eval_model(state)
  features = jax.jit(lambda x: model.features(trainer.preprocess(x)))
  return np.concatenate([np.asarray(features(images[i:i + batch]))
                         for i in range(0, len(images), batch)])


def probe(trainer, state, kind: str, feature: str, data_dir, l2: float) -> float:
  correlations = ({"easy_correlation": 0.5, "hard_correlation": 1.0} if feature == "hard"
                  else {"easy_correlation": 1.0, "hard_correlation": 0.5})
  sets = {split: dominoes(kind, split, seed=PROBE_SEED, data_dir=data_dir, **correlations)
          for split in ("train", "test")}
  key = f"{feature}_labels"
  train_x = probe_features(trainer, state, sets["train"].images)
  test_x = probe_features(trainer, state, sets["test"].images)
  return float(samx.analysis.linear_probe_accuracy(
      jnp.asarray(train_x), jnp.asarray(sets["train"].metadata[key]), jnp.asarray(test_x),
      jnp.asarray(sets["test"].metadata[key]), num_classes=2, l2=l2))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kinds", default="cifar_mnist,fmnist_mnist")
  parser.add_argument("--optimizers", default="sgd,sam,sam+rho=0.1")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--l2", type=float, default=1e-2, help="the probe's ridge penalty")
  parser.add_argument("--output-dir", type=pathlib.Path,
                      default=pathlib.Path("benchmarks/results/feature_balance"))
  args = parser.parse_args()
  started = time.perf_counter()
  rows = []
  for kind in args.kinds.split(","):
    for spec in args.optimizers.split(","):
      name, *settings = spec.split("+")
      for seed in (int(s) for s in args.seeds.split(",")):
        assignments = [f"data.name=dominoes:{kind}", f"optimizer.name={name}", f"seed={seed}",
                       *[f"optimizer.{s}" for s in settings]]
        if args.epochs is not None:
          assignments.append(f"epochs={args.epochs}")
        config = train.override(train.preset("dominoes-cifar-mnist"), assignments)
        result = train.run(config, log=None)
        trainer = train.make_trainer(config)
        row = {"kind": kind, "optimizer": spec, "seed": seed,
               "test_accuracy": result.summary["final_test_accuracy"],
               "hard_probe": probe(trainer, result.state, kind, "hard", config.data.data_dir,
                                     args.l2),
               "easy_probe": probe(trainer, result.state, kind, "easy", config.data.data_dir,
                                     args.l2),
               "train_seconds": result.summary["train_seconds"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
  seconds = time.perf_counter() - started
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / "results.json").write_text(json.dumps(
      {"rows": rows, "seconds": seconds, "arguments": {k: str(v) for k, v in vars(args).items()}},
      indent=2) + "\n")
  lines = ["| dominoes | optimizer | seeds | test acc | hard-feature probe | easy-feature probe |",
           "|---|---|---|---|---|---|"]
  for kind in args.kinds.split(","):
    for spec in args.optimizers.split(","):
      chosen = [r for r in rows if r["kind"] == kind and r["optimizer"] == spec]

      def cell(key, chosen=chosen):
        values = [r[key] for r in chosen]
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.3f}{spread}"

      lines.append(f"| {kind} | {spec} | {len(chosen)} | {cell('test_accuracy')} | "
                   f"{cell('hard_probe')} | {cell('easy_probe')} |")
  table = "\n".join(lines)
  (args.output_dir / "table.md").write_text(table + "\n")
  plot(rows, args, args.output_dir / "feature_balance.png")
  print(table)
  print(f"\n{seconds:.0f} s; results in {args.output_dir}")


def plot(rows, args, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kinds = args.kinds.split(",")
  specs = args.optimizers.split(",")
  figure, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6),
                              constrained_layout=True, squeeze=False)
  for axis, kind in zip(axes[0], kinds, strict=True):
    for offset, feature in enumerate(("hard_probe", "easy_probe")):
      means = [statistics.fmean(r[feature] for r in rows
                                if r["kind"] == kind and r["optimizer"] == s) for s in specs]
      axis.bar(np.arange(len(specs)) + 0.38 * offset, means, width=0.36,
               label=feature.replace("_", "-feature "))
    axis.set_xticks(np.arange(len(specs)) + 0.19, specs)
    axis.set_ylim(0.5, 1.0)
    axis.set(title=f"{kind} dominoes: linear-probe accuracy", ylabel="probe test accuracy")
    axis.legend(fontsize=8)
  figure.savefig(path, dpi=110)
  plt.close(figure)


if __name__ == "__main__":
  main()
