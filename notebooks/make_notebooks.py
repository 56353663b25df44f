"""Writes the notebooks of this folder from the cells below, and executes them.

    python notebooks/make_notebooks.py              # write the .ipynb files (no outputs)
    python notebooks/make_notebooks.py --execute    # write and run them top to bottom (CPU size),
                                           # storing the outputs, as committed

The notebooks are code: each is a list of markdown and code cells here, so a change is a
reviewable diff and every notebook shares the same first cells (the install cell, the
CPU/accelerator switch). What a notebook needs that is reusable lives in samx.
"""

from __future__ import annotations

import argparse
import pathlib

import nbformat

HERE = pathlib.Path(__file__).resolve().parent


INSTALL = """# Installs samx where it is missing (Colab): the released package, by name.
# Until it is on the package index: from a clone, pip install -e /path/to/samx; or upload a
# wheel built there with `python -m build` and run %pip install samx-*.whl instead.
try:
  import samx
except ImportError:
  %pip install -q samx
  import samx"""


def header(title: str, summary: str) -> list[tuple[str, str]]:
  return [
      ("markdown", f"# {title}\n\n{summary}"),
      ("code", INSTALL),
      ("code", """# "cpu": from 15 s to 6 minutes on a 2-core CPU (what CI runs).
# "accelerator": the papers' scale, for a GPU or TPU runtime.
SCALE = "cpu\""""),
  ]


QUICKSTART = [
    ("markdown", """samx's transforms are `optax.GradientTransformationExtraArgs`: put one at the
head of an optax chain and pass the `objective` (model + loss + batch) to `update`. Here a
Flax NNX MLP learns a 10-class Gaussian mixture with 40% of its training labels flipped, and
the only line that changes between runs is the transform."""),
    ("code", """import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from samx.data import noise, synthetic
from samx.models import MLP

steps = 1000 if SCALE == "cpu" else 5000
x, y = synthetic.gaussian_mixture(8192, seed=0)
x_test, y_test = synthetic.gaussian_mixture(4096, split="test", seed=0)
noisy = noise.symmetric(y, 0.4, num_classes=10, seed=0)   # labels, noisy_mask, transition_matrix
xent = optax.softmax_cross_entropy_with_integer_labels
print(f"{noisy.noise_rate:.0%} of {len(y)} training labels are wrong")"""),
    ("code", """def train(transform, steps, seed=0, record_every=100):
  model = MLP(32, (256, 256), 10, rngs=nnx.Rngs(seed))
  head = [] if transform is None else [transform]
  tx = optax.chain(*head, optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    objective = samx.Objective.from_nnx(model, xent, xb, yb)    # what SAM re-evaluates
    loss, grads = nnx.value_and_grad(lambda m: xent(m(xb), yb).mean())(model)
    optimizer.update(model, grads, objective=objective)
    return loss

  predict = nnx.jit(lambda m, inputs: jnp.argmax(m(inputs), -1))
  rng, curve = np.random.default_rng(seed), []
  for index in range(1, steps + 1):
    rows = rng.choice(len(y), 128, replace=False)
    step(model, optimizer, x[rows], noisy.labels[rows])
    if index % record_every == 0:
      fitted = np.asarray(predict(model, x)) == noisy.labels
      curve.append({"step": index,
                    "test": float(np.mean(np.asarray(predict(model, x_test)) == y_test)),
                    "memorized": float(fitted[noisy.noisy_mask].mean())})
  return curve

transforms = {
    "SGD": None,
    "SAM": samx.sam(rho=0.3),
    "ASAM": samx.sam(rho=3.0, adaptive=True),
    "SANER": samx.saner(rho=0.3, alpha=0.5, warmup_steps=300),
    "J-SAM": samx.jacobian_sam(rho=0.3),
}
curves = {name: train(transform, steps) for name, transform in transforms.items()}
for name, curve in curves.items():
  best = max(r["test"] for r in curve)
  print(f"{name:6} best test {best:.3f}  final test {curve[-1]['test']:.3f}  "
        f"noisy labels memorized {curve[-1]['memorized']:.3f}")"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, curve in curves.items():
  steps_seen = [r["step"] for r in curve]
  axes[0].plot(steps_seen, [r["test"] for r in curve], label=name)
  axes[1].plot(steps_seen, [r["memorized"] for r in curve], label=name)
axes[0].set(xlabel="step", ylabel="test accuracy")
axes[1].set(xlabel="step", ylabel="noisy labels memorized")
axes[0].legend();"""),
    ("markdown", """SGD fits the wrong labels and its test accuracy falls with them; the SAM family
fits far fewer and loses less accuracy (SANER, which fits the fewest, almost none). A similar
run from the command line (the engine's own settings, one `rho` for every method) is
`samx compare`, with metrics per epoch, a table and this plot."""),
]

LABEL_NOISE = [
    ("markdown", """The training engine (`samx.train`) on real data: the same configuration, data,
noise, initialisation and batch order for SGD, SAM and SANER; per epoch the test accuracy, the
share of noisy training labels fitted (memorization) and, for SANER, its group fractions. On a CPU:
Fashion-MNIST with 50% symmetric noise and a small CNN; on an accelerator: the SANER paper's
ResNet-18 on CIFAR-10 with 50% noise (through tensorflow-datasets when the files are not
local)."""),
    ("code", """import os
import pathlib
import shutil

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from samx import train

local = bool(os.environ.get("SAMX_DATA_DIR"))
if SCALE == "cpu":
  config = train.override(train.preset("fashion-mnist-noise-cpu"), [
      f"data.name={'fashion_mnist' if local else 'tfds:fashion_mnist'}",
      "epochs=20", "saner.warmup_epochs=5", "checkpoint_every=0"])
else:
  config = train.override(train.preset("saner-cifar10"), [  # bfloat16 compute on accelerators
      f"data.name={'cifar10' if local else 'tfds:cifar10'}", "model.dtype=bfloat16",
      "checkpoint_every=0"])
print(config.data.name, config.model.name, config.model.dtype,
      f"{config.noise.rate:.0%} {config.noise.kind} noise,", config.epochs, "epochs")"""),
    ("code", """out = pathlib.Path("runs/notebook-label-noise")
shutil.rmtree(out, ignore_errors=True)  # a fresh comparison each time the notebook runs
results = train.compare(config, ["sgd", "sam", "saner"], out, log=None)
summaries = {name: result.summary for name, result in results.items()}
display(Markdown(train.format_table(summaries, markdown=True)))"""),
    ("code", """fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
for name, result in results.items():
  epochs = [r["epoch"] for r in result.history]
  axes[0].plot(epochs, [r["test_accuracy"] for r in result.history], label=name)
  axes[1].plot(epochs, [r["noisy_memorization"] for r in result.history], label=name)
saner = results["saner"].history
for group in "abc":
  axes[2].plot([r["epoch"] for r in saner], [r[f"saner_group_{group}"] for r in saner],
               label=f"group {group.upper()}")
axes[0].set(xlabel="epoch", ylabel="test accuracy")
axes[1].set(xlabel="epoch", ylabel="noisy labels memorized")
axes[2].set(xlabel="epoch", ylabel="fraction of components (SANER)")
for axis in axes:
  axis.legend()"""),
    ("markdown", """What this run shows, written from its own summaries (so the words follow the
numbers above, whatever they are):"""),
    ("code", """def story(summaries):
  sgd = summaries["sgd"]
  fell = sgd["best_test_accuracy"] - sgd["final_test_accuracy"] >= 0.01
  lines = [f"SGD's test accuracy peaks at epoch {sgd['best_epoch']} "
           f"({sgd['best_test_accuracy']:.3f}) and "
           + (f"falls to {sgd['final_test_accuracy']:.3f}" if fell else
              f"ends at {sgd['final_test_accuracy']:.3f}")
           + f", with {sgd['final_noisy_memorization']:.0%} of the noisy labels memorized."]
  for name in ("sam", "saner"):
    s = summaries[name]
    fewer = s["final_noisy_memorization"] < sgd["final_noisy_memorization"]
    lines.append(f"{name.upper()} memorizes {s['final_noisy_memorization']:.0%} "
                 f"({'fewer' if fewer else 'no fewer'} than SGD) and ends at "
                 f"{s['final_test_accuracy']:.3f} (best {s['best_test_accuracy']:.3f}).")
  return " ".join(lines)


display(Markdown(story(summaries)))"""),
    ("markdown", """SANER scales the components SAM already down-weights (group B) further, so it
fits the noisy labels more slowly still. `benchmarks/label_noise.py` runs this comparison over
datasets, noise settings and seeds."""),
]

DECOMPOSITION = [
    ("markdown", """Baek et al. split SAM's perturbed gradient `J(w+eps)ᵀ r(f(w+eps))` into its two
factors: L-SAM perturbs only the logit term `r`, J-SAM only the Jacobian `J`. J-SAM keeps SAM's
robustness to noisy labels, L-SAM does not; and part of J-SAM's effect can be had without a
second gradient, as explicit penalties on the features and the last layer (in the table below
the penalty run memorizes fewer noisy labels than SGD, but more than J-SAM)."""),
    ("code", """import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Markdown, display

from samx import train

epochs = 16 if SCALE == "cpu" else 40
config = train.override(train.preset("quickstart"), [f"epochs={epochs}"])
results = train.compare(config, ["sgd", "sam", "lsam", "jsam", "penalty+feature_coef=0.01"],
                        log=None)
summaries = {name: result.summary for name, result in results.items()}
display(Markdown(train.format_table(summaries, markdown=True)))"""),
    ("markdown", """**Why**: for logistic regression, 1-SAM multiplies each example's logit term by
`sigmoid(-z + rho ||x||) / sigmoid(-z)` relative to SGD, increasing in the margin `z`: examples
the model already fits — mostly the clean ones — count more. `samx.analysis.logit_weights`
measures it for any model."""),
    ("code", """rng = np.random.default_rng(0)
n, d = 200, 400
mu = rng.normal(size=d)
mu *= 3 / np.linalg.norm(mu)
t = rng.choice([-1.0, 1.0], n)
x = (t[:, None] * mu + rng.normal(size=(n, d))).astype(np.float32)
noisy = np.zeros(n, bool)
noisy[rng.choice(n, n // 5, replace=False)] = True
given = np.where(noisy, -t, t).astype(np.float32)



def linear(params, inputs):
  return inputs @ params["w"]


def logistic(outputs, targets):
  return jax.nn.softplus(-targets * outputs[:, 0])


objective = samx.Objective(linear, logistic, jnp.asarray(x), jnp.asarray(given))
tx = optax.chain(samx.sam(0.2, group_size=1), optax.sgd(0.01))    # 1-SAM
params = {"w": jnp.zeros((d, 1))}
state = tx.init(params)

@jax.jit
def step(params, state):
  updates, state = tx.update(objective.grad(params), state, params, objective=objective)
  return optax.apply_updates(params, updates), state

history = []
for _ in range(200):
  weights = samx.analysis.logit_weights(objective, params, rho=0.2)
  split = samx.analysis.split_by_mask(weights, jnp.asarray(noisy))
  history.append((float(split.clean), float(split.noisy)))
  params, state = step(params, state)
plt.plot([h[0] for h in history], label="clean examples")
plt.plot([h[1] for h in history], label="noisy examples")
plt.xlabel("1-SAM step")
plt.ylabel("mean 1-SAM / SGD logit weight")
plt.legend();"""),
    ("markdown", """**The penalty alternative**: SGD on the loss plus
`samx.penalties.feature_and_weight_penalty(features, head_kernel, ...)` — one forward and
backward pass, the cost of SGD (`optimizer.name=penalty` in the engine, in the table above). For
a two-layer linear network, `samx.penalties.jsam_penalty` reproduces J-SAM's 1-SAM step exactly
(Baek et al., Proposition 4.1; tested in `tests/test_penalties.py`)."""),
]

FEATURE_BALANCE = [
    ("markdown", """Springer et al. find that on data where an easy and a hard feature both predict
the label, SGD learns the easy one and neglects the other, while SAM suppresses the well-learned
easy feature so the hard one is learned too. Dominoes stack an MNIST digit (easy) on a
Fashion-MNIST or CIFAR-10 image (hard); a linear probe on the frozen penultimate features,
trained where the other half is random, measures how well each feature is represented."""),
    ("code", """import os

import jax
import numpy as np

from samx import data, train

if not os.environ.get("SAMX_DATA_DIR"):  # Colab: download MNIST and Fashion-MNIST (~30 MB)
  data.fetch("mnist")
  data.fetch("fashion_mnist")
kind = "fmnist_mnist"    # "cifar_mnist" needs CIFAR-10's files in $SAMX_DATA_DIR
epochs = 4 if SCALE == "cpu" else 30"""),
    ("code", """def probe_accuracy(trainer, state, feature):
  correlations = ({"easy_correlation": 0.5} if feature == "hard" else {"hard_correlation": 0.5})
  splits = {s: data.dominoes(kind, s, seed=1234, **correlations) for s in ("train", "test")}
  model = trainer.eval_model(state)
  embed = jax.jit(lambda images: model.features(trainer.preprocess(images)))
  features = {s: np.concatenate([embed(d.images[i:i + 1000]) for i in range(0, len(d), 1000)])
              for s, d in splits.items()}
  return float(samx.analysis.linear_probe_accuracy(
      features["train"], splits["train"].metadata[f"{feature}_labels"], features["test"],
      splits["test"].metadata[f"{feature}_labels"], num_classes=2, l2=1e-2))

for optimizer in ("sgd", "sam"):
  config = train.override(train.preset("dominoes-cifar-mnist"), [
      f"data.name=dominoes:{kind}", f"optimizer.name={optimizer}", f"epochs={epochs}"])
  result = train.run(config, log=None)
  trainer = train.make_trainer(config)
  print(f"{optimizer}: test accuracy {result.summary['final_test_accuracy']:.3f}, "
        f"hard-feature probe {probe_accuracy(trainer, result.state, 'hard'):.3f}, "
        f"easy-feature probe {probe_accuracy(trainer, result.state, 'easy'):.3f}")"""),
    ("markdown", """In this short CPU run the finding does not show: both probes are near their
ceiling after SGD and after SAM alike (the lines above). `benchmarks/feature_balance.py`
runs the paper's protocol (10% held out for validation, a rho sweep selected on validation
probes, three seeds, probes after every epoch); `benchmarks/README.md` reports that at CPU scale
it is not reproduced either (on five-class FMNIST-MNIST SAM's hard-feature probe ends 1 point
below SGD's; on CIFAR-MNIST neither optimizer learns the hard feature beyond what the untrained
network's features give), and a toy setting where it is (`benchmarks/feature_balance_toy.py`)."""),
]

BENIGN = [
    ("markdown", """Chen et al.: on data `x = [y mu, xi]` (a signal patch and a noise patch), a
two-layer ReLU CNN trained by (full-batch) gradient descent memorizes the noise patches and
overfits harmfully when the signal is weak relative to the noise; SAM learns the signal over a
much larger range. Below, the test error of each over a grid of signal strengths and patch
dimensions."""),
    ("code", """import matplotlib.pyplot as plt
import numpy as np

from samx import train

signal_norms = [0.5, 1.0, 2.0] if SCALE == "cpu" else [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
dims = [100, 400, 1600] if SCALE == "cpu" else [100, 200, 400, 800, 1600]
errors = {name: np.zeros((len(signal_norms), len(dims))) for name in ("sgd", "sam")}
for i, signal_norm in enumerate(signal_norms):
  for j, dim in enumerate(dims):
    for optimizer in errors:
      config = train.override(train.preset("chen-patches"), [
          f"optimizer.name={optimizer}", f"data.options.signal_norm={signal_norm}",
          f"data.options.dim={dim}", "eval_every=300"])
      errors[optimizer][i, j] = 1 - train.run(config, log=None).summary["final_test_accuracy"]
print("test error; rows ||mu|| =", signal_norms, "columns d =", dims)
for optimizer, table in errors.items():
  print(optimizer.upper(), np.array2string(table, precision=2))"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for axis, (optimizer, table) in zip(axes, errors.items(), strict=True):
  image = axis.imshow(table, origin="lower", vmin=0, vmax=0.5, cmap="viridis")
  axis.set_xticks(range(len(dims)), dims)
  axis.set_yticks(range(len(signal_norms)), signal_norms)
  axis.set(xlabel="patch dimension d", ylabel="||mu||", title=f"{optimizer.upper()}: test error")
  for (i, j), value in np.ndenumerate(table):
    axis.text(j, i, f"{value:.2f}", ha="center", va="center", color="w")
fig.colorbar(image, ax=axes);"""),
    ("markdown", """SGD's test error grows as the signal weakens relative to the noise (smaller
`||mu||`, larger `d`); SAM's stays far lower over most of the grid (the errors printed above).
`benchmarks/benign_overfitting.py` runs the full grid and
the signal-learning / noise-memorization curves; its results are in `benchmarks/README.md`."""),
]

SCALING = [
    ("markdown", """The engine shards the global batch over a `jax.sharding.Mesh` of every device
and replicates the state; XLA inserts the collectives, so SAM's `eps` (and, in models with
BatchNorm, its statistics) are those of the global batch, and the same code runs on one CPU,
eight GPUs or a TPU pod. On a
CPU this notebook makes 8 virtual devices (importing JAX does not start its backends, so the
flag still takes effect here, before the first computation), whose collectives wait patiently
for device threads that a busy machine starves (`samx.train.virtual_cpu_devices_flags`). The
training loop keeps at most four steps in flight (`samx.train.InFlight`): on XLA's CPU backend a
host that runs many steps ahead of several devices can hang their collectives."""),
    ("code", """import os

from samx.train import virtual_cpu_devices_flags

if SCALE == "cpu":   # 8 virtual CPU devices; must be set before JAX initialises its backends
  os.environ["XLA_FLAGS"] = virtual_cpu_devices_flags(8)"""),
    ("code", """import jax

from samx import train
from samx.data import pipeline

print(jax.device_count(), "devices:", jax.devices()[:2], "...")
config = train.override(train.preset("quickstart"), ["optimizer.name=sam", "epochs=3"])
histories = {}
for devices in (1, jax.device_count()):
  result = train.run(train.override(config, [f"devices={devices}"]), log=None)
  histories[devices] = result.history
  print(f"{devices} device(s): test accuracy per epoch",
        [round(r["test_accuracy"], 4) for r in result.history],
        f"- {result.summary['images_per_second']:.0f} images/s")"""),
    ("markdown", """The metrics agree across device counts (up to the order of floating-point
reductions). The 8 virtual devices share this machine's cores, so they are slower than one
device: they show the partitioning, not a speed-up. Below, one global batch as the engine lays
it out: each device holds a slice of the batch."""),
    ("code", """all_devices = train.override(config, [f"devices={jax.device_count()}"])
trainer = train.make_trainer(all_devices)
batch = next(pipeline.batches({"input": trainer.data.train["input"]}, config.batch_size, seed=0,
                              epoch=0, mesh=trainer.mesh))
print(batch["input"].sharding)
jax.debug.visualize_array_sharding(batch["input"][:, :8])"""),
    ("markdown", """**FSDP.** With `sharding.fsdp=N` the state itself is split too: every array of
at least `sharding.min_elements` elements (parameters, momentum, BatchNorm statistics) is split
`N` ways along its largest dimension that `N` divides, the rest replicated
(`docs/many-devices.md`). The metrics are data parallel's; each device holds a fraction of the
state. Here the quick start's MLP (its weights are small, so `min_elements` is lowered to split
them) on all devices, data parallel and fully sharded:"""),
    ("code", """from samx.train import sharding

layouts = {}
for fsdp in (1, jax.device_count()):
  result = train.run(train.override(all_devices, [f"sharding.fsdp={fsdp}",
                                                  "sharding.min_elements=1024"]), log=None)
  layouts[fsdp] = result
  print(f"fsdp={fsdp}: test accuracy per epoch",
        [round(r["test_accuracy"], 4) for r in result.history],
        f"- state per device {sharding.bytes_per_device(result.state) / 1024:.0f} KiB")
kernel = jax.tree.leaves(layouts[jax.device_count()].state.params)[-1]
print("a kernel of shape", kernel.shape, "is laid out as", kernel.sharding.spec)"""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": ("samx quick start: SAM and its variants in an optax chain",
                            "SGD, SAM, ASAM, SANER and J-SAM on noisy labels with Flax NNX.",
                            QUICKSTART),
    "02_label_noise.ipynb": ("Label noise: SGD vs SAM vs SANER on real data",
                             "Memorization and test accuracy against epochs.", LABEL_NOISE),
    "03_decomposition.ipynb": ("Why SAM resists label noise: L-SAM, J-SAM and the penalties",
                               "Baek et al.'s logit/Jacobian decomposition.", DECOMPOSITION),
    "04_feature_balance.ipynb": ("Feature balance on dominoes",
                                 "Springer et al.: linear probes of the easy and the hard "
                                 "feature.", FEATURE_BALANCE),
    "05_benign_overfitting.ipynb": ("Benign vs harmful overfitting",
                                    "Chen et al.'s signal/noise patches.", BENIGN),
    "06_scaling.ipynb": ("Scaling: training on a mesh of devices",
                         "Data parallelism with jax.sharding, on 8 virtual CPU devices here.",
                         SCALING),
}


def build(name: str) -> nbformat.NotebookNode:
  title, summary, cells = NOTEBOOKS[name]
  all_cells = [*header(title, summary), *cells]
  notebook = nbformat.v4.new_notebook()
  notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"},
                       "language_info": {"name": "python"},
                       "colab": {"provenance": []}, "accelerator": "GPU"}
  notebook.cells = [nbformat.v4.new_markdown_cell(text) if kind == "markdown"
                    else nbformat.v4.new_code_cell(text) for kind, text in all_cells]
  return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = 1800) -> nbformat.NotebookNode:
  from nbclient import NotebookClient

  NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": str(HERE)}}).execute()
  return notebook


def _code_without_comments(source: str) -> list[str]:
  return [line for line in source.splitlines() if not line.strip().startswith("#")]


def refresh_text(name: str) -> nbformat.NotebookNode:
  """The stored notebook with the builder's markdown and comments, its code cells' outputs
  kept: for edits of text only. Raises if any code (other than comment lines) changed, since
  its stored outputs would then no longer be its own (run with --execute)."""
  built = build(name)
  stored = nbformat.read(HERE / name, as_version=4)
  if [c.cell_type for c in built.cells] != [c.cell_type for c in stored.cells] or any(
      _code_without_comments(b.source) != _code_without_comments(s.source)
      for b, s in zip(built.cells, stored.cells, strict=True) if b.cell_type == "code"):
    raise SystemExit(f"{name}: its code changed; run with --execute to store new outputs.")
  for built_cell, stored_cell in zip(built.cells, stored.cells, strict=True):
    stored_cell.source = built_cell.source
  return stored


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--execute", action="store_true")
  parser.add_argument("--text-only", action="store_true",
                      help="refresh markdown and comments, keeping the stored outputs")
  parser.add_argument("--only", help="a comma-separated subset of the notebook file names")
  args = parser.parse_args()
  names = args.only.split(",") if args.only else list(NOTEBOOKS)
  for name in names:
    notebook = refresh_text(name) if args.text_only else build(name)
    if args.execute:
      notebook = execute(notebook)
    nbformat.write(notebook, HERE / name)
    print("wrote", HERE / name, "(executed)" if args.execute else "")


if __name__ == "__main__":
  main()
