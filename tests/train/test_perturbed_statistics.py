"""``optimizer.perturbed_statistics``: what BatchNorm normalises with in the engine's perturbed
passes. Each choice's step is checked against the transform built by hand from
``samx.models`` (the definitions, and that the choices differ, are tested in
tests/models/test_statistics.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx
from samx import train
from samx.train.errors import ConfigError
from samx.train.training_data import TrainingData, split_arrays


def _data(n=16, size=8, classes=3):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, classes, n).astype(np.int32)
  images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
  arrays = split_arrays(images, labels, labels, np.zeros(n, bool))
  return TrainingData(arrays, split_arrays(images[:8], labels[:8]), classes, "random images",
                      np.full(3, 0.5), np.full(3, 0.25))


def _config(statistics, group_size="1"):
  return train.override(train.Config(), [
      "data.name=cifar10", "data.augment=false", "model.name=wide_resnet", "model.depth=10",
      "model.widen_factor=1", "model.width=0.25",
      "optimizer.name=sam", f"optimizer.group_size={group_size}", "optimizer.rho=0.5",
      f"optimizer.perturbed_statistics={statistics}", "optimizer.learning_rate=1.0",
      "optimizer.momentum=0.0", "optimizer.weight_decay=0.0", "batch_size=8", "epochs=1",
      "checkpoint_every=0"])


def test_auto_is_batch_with_groups_and_group_without():
  assert _config("auto").optimizer.statistics == "batch"
  assert _config("auto", "null").optimizer.statistics == "group"
  assert _config("running").optimizer.statistics == "running"
  with pytest.raises(ConfigError, match="optimizer.perturbed_statistics.*group, batch, running"):
    train.make_trainer(_config("clean"), _data())


def _by_hand(trainer, state, batch, statistics):
  """SAM's update (the engine's with lr 1, no momentum or decay) from samx.models directly."""
  x = trainer.preprocess(batch["input"])
  model = nnx.merge(trainer.graphdef, state.params, state.model_state, copy=True)
  if statistics == "group":
    fixed = model
  elif statistics == "batch":
    _, stats = samx.models.batch_statistics(nnx.clone(model), lambda m: m(x))
    fixed = samx.models.normalizing_with(model, stats)
  else:
    fixed = samx.models.normalizing_with(model)
  xent = optax.softmax_cross_entropy_with_integer_labels
  objective = samx.Objective.from_nnx(fixed, xent, x, batch["label"],
                                      surrogate=statistics != "group")
  grads = jax.grad(lambda p: jnp.mean(xent(nnx.merge(
      trainer.graphdef, p, state.model_state, copy=True)(x), batch["label"])))(state.params)
  tx = samx.sam(0.5, group_size=1)
  updates, _ = jax.jit(lambda g, p, o: tx.update(g, tx.init(p), p, objective=o))(
      grads, state.params, objective)
  return updates


@pytest.mark.slow  # a BatchNorm ResNet's 1-SAM step compiled twice (about a minute)
@pytest.mark.parametrize("statistics", ["batch", "group", "running"])
def test_each_choice_is_the_transform_on_that_model(statistics):
  data = _data()
  batch = {"input": jnp.asarray(data.train["input"][:8]), "label": jnp.asarray(
      data.train["label"][:8])}
  trainer = train.make_trainer(_config(statistics), data)
  state = trainer.init()
  before = jax.tree.map(jnp.array, state)  # copies: the step donates its input
  new_state, _ = trainer.train_step(state, batch)
  expected = _by_hand(trainer, before, batch, statistics)
  moved = jax.tree.map(lambda old, new: old - new, before.params, new_state.params)
  for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(expected), strict=True):
    # float32 rounding, relative to each leaf's scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(want))))
  # The running averages come from the clean pass alone, whatever the perturbed passes use.
  clean_model = nnx.merge(trainer.graphdef, before.params, before.model_state, copy=True)
  clean_model(trainer.preprocess(batch["input"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               new_state.model_state, nnx.state(clean_model, nnx.BatchStat))
