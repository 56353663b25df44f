"""Every Python block of the README and of docs/ runs as written.

A block that uses names defined in the surrounding prose (``params``, ``apply_fn``, a model) gets
them from a setup written here, keyed by a line of the block; the block itself is executed
unchanged, and where it shows its output in comments, the output is checked. A new block with no
entry here fails the test until it gets one, so no documented snippet goes unrun.
"""

import contextlib
import io
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DATA_DIR = os.environ.get("SAMX_DATA_DIR")

LINEAR_MODEL = """
import jax, jax.numpy as jnp, optax, samx
params = {"w": jnp.ones((3, 2)) * 0.1, "b": jnp.zeros(2)}
def apply_fn(p, x):
  return x @ p["w"] + p["b"]
def loss_fn(outputs, labels):
  return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
x = jnp.asarray([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.0, 1.0], [2.0, 1.0, 0.0]])
y = jnp.asarray([0, 1, 1, 0])
objective = samx.Objective(apply_fn, loss_fn, x, y)
"""

NNX_MODEL = """
import jax, jax.numpy as jnp, optax, samx
from flax import nnx
model = samx.models.resnet18(num_classes=10, width=0.125, rngs=nnx.Rngs(0))
tx = optax.chain(samx.sam(0.05, perturb_mask=samx.models.normalization_mask(model)),
                 optax.sgd(0.1))
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
def loss_fn(outputs, labels):
  return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
x = jnp.ones((4, 32, 32, 3))
y = jnp.asarray([0, 1, 2, 3])
"""

# a line of a block -> (setup, check after the block, needs the data files)
SETUPS = {
    'config = train.override(train.preset("quickstart"), ["optimizer.name=saner", "epochs=8"])':
        ("", "assert 0 < result.summary['best_test_accuracy'] <= 1", False),
    "import jax, optax, samx":
        (LINEAR_MODEL, "params, state, loss = step(params, state, x, y)\n"
                       "assert jnp.isfinite(loss)", False),
    "def as_objective(grad_fn):":
        (LINEAR_MODEL, "o = as_objective(jax.grad(lambda w: objective.value_and_grad(w)[0]))\n"
                       "tx = samx.sam(0.1)\n"
                       "g = jax.grad(lambda w: objective.value_and_grad(w)[0])(params)\n"
                       "u, _ = tx.update(g, tx.init(params), params, objective=o)\n"
                       "assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(u))",
         False),
    "@nnx.jit":
        (NNX_MODEL, "before = jax.tree.leaves(nnx.state(model, nnx.Param))[0].copy()\n"
                    "train_step(model, optimizer, x, y)\n"
                    "assert not (jax.tree.leaves(nnx.state(model, nnx.Param))[0] == before).all()",
         False),
    "print(samx.group_plan(objective, params, group_size=1))": (LINEAR_MODEL, "", False),
    "in_flight = samx.train.InFlight()  # at most 4 dispatched steps, about 1 s, not yet finished":
        ("import jax.numpy as jnp, samx\n"
         "batches = [jnp.full((2,), i, jnp.float32) for i in range(10)]\n"
         "state = jnp.zeros((2,))\n"
         "def train_step(state, batch):\n"
         "  state = state + batch\n"
         "  return state, {'loss': state.sum()}\n",
         "assert float(state.sum()) == 90.0 and in_flight.pending <= 4", False),
    "from samx.data import load, noise, dominoes, synthetic, pipeline":
        ("", "assert noisy.noisy_mask.mean() > 0.4", True),
    "fsdp = 2 if n % 2 == 0 else 1":
        ("", "assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(params))", False),
    "w = jnp.full((8, 4), 0.1)":
        ("", "whole = samx.Objective(objective.apply_fn, objective.loss_fn, x, y)\n"
             "expected, _ = tx.update(whole.grad(w), tx.init(w), w, objective=whole)\n"
             "assert jnp.allclose(updates, expected, rtol=1e-5, atol=1e-7)", False),
    'config = train.override(train.preset("quickstart"), ["optimizer.name=sam"])':
        ("", "assert result.summary['status'] == 'finished'", False),
}


def python_blocks():
  """(document, line, source) of every ```python block, unindented."""
  for document in DOCUMENTS:
    lines = document.read_text().splitlines()
    index = 0
    while index < len(lines):
      opening = re.match(r"^(\s*)```python\s*$", lines[index])
      if not opening:
        index += 1
        continue
      indent, start, body = len(opening.group(1)), index + 1, []
      index += 1
      while not lines[index].strip().startswith("```"):
        body.append(lines[index][indent:])
        index += 1
      yield document.relative_to(ROOT), start, "\n".join(body) + "\n"
      index += 1


BLOCKS = list(python_blocks())


def expected_output(source):
  """The output a block shows in the comment lines after its last print (``#   ...``)."""
  lines = source.splitlines()
  prints = [i for i, line in enumerate(lines) if line.startswith("print(")]
  if not prints:
    return None
  return [line[2:] for line in lines[prints[-1] + 1:] if line.startswith("# ")]


# Blocks that train (seconds each) run with the slow tests, which CI runs too.
SLOW_BLOCKS = ("train.run(", "@nnx.jit")


@pytest.mark.parametrize(("document", "line", "source"), [
    pytest.param(d, n, source, marks=[pytest.mark.slow] * any(k in source for k in SLOW_BLOCKS))
    for d, n, source in BLOCKS], ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_every_documented_block_runs_as_written(document, line, source, tmp_path, monkeypatch):
  keys = [key for key in SETUPS if key in source.splitlines() or key in (
      text.strip() for text in source.splitlines())]
  assert len(keys) == 1, (f"{document}:{line}: a new Python block; give it a setup in "
                          f"tests/test_documented_code.py so that it runs as a test")
  setup, check, needs_data = SETUPS[keys[0]]
  if needs_data and not DATA_DIR:
    pytest.skip("needs SAMX_DATA_DIR")
  monkeypatch.chdir(tmp_path)  # runs/ and other outputs go here
  namespace: dict = {}
  exec(compile(setup, "<setup>", "exec"), namespace)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(source, f"{document}:{line}", "exec"), namespace)
  if check:
    exec(compile(check, "<check>", "exec"), namespace)
  shown = expected_output(source)
  if shown:
    assert printed.getvalue().strip().splitlines() == shown


def test_every_setup_is_used():
  lines = {text.strip() for _, _, source in BLOCKS for text in source.splitlines()}
  assert set(SETUPS) <= lines, set(SETUPS) - lines
