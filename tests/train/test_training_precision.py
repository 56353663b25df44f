"""bfloat16 training: float32 parameters, optimizer state and statistics, a step that computes
in bfloat16, and the quick start's result within 0.03 of float32's."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samx import train
from samx.data import pipeline
from samx.train.trainer import BATCH_AXIS


@pytest.mark.slow
def test_bfloat16_quickstart_matches_float32_and_keeps_float32_state():
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = train.override(train.preset("quickstart"), [f"model.dtype={dtype}"])
    results[dtype] = train.run(config, log=None)
  best = {dtype: r.summary["best_test_accuracy"] for dtype, r in results.items()}
  assert abs(best["bfloat16"] - best["float32"]) <= 0.03, best
  state = results["bfloat16"].state
  for tree in (state.params, state.opt_state):
    floats = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and all(leaf.dtype == jnp.float32 for leaf in floats)


def step_text(*assignments):
  config = train.override(train.Config(), [
      "data.options.train_size=256", "data.options.test_size=64", "batch_size=64",
      "model.hidden=32", *assignments])
  trainer = train.make_trainer(config)
  arrays = {"input": trainer.data.train["input"], "label": trainer.data.train["label"]}
  batch = next(pipeline.batches(arrays, 64, seed=0, epoch=0, mesh=trainer.mesh,
                                batch_axis=BATCH_AXIS))
  return trainer.train_step.lower(trainer.init(), batch).as_text()


def dot_result_types(text):
  return set(re.findall(r"dot_general.*-> tensor<[0-9x]*x(\w+)>", text))


@pytest.mark.parametrize("name", ["sgd", "sam"])
def test_the_compiled_step_computes_in_bfloat16(name):
  bf16 = dot_result_types(step_text(f"optimizer.name={name}", "model.dtype=bfloat16"))
  f32 = dot_result_types(step_text(f"optimizer.name={name}"))
  assert "bf16" in bf16 and "bf16" not in f32
  assert "f32" in bf16  # the head (logits) stays float32


def test_float16_is_refused_with_the_reason():
  with pytest.raises(train.ConfigError, match="model.dtype must be float32 or bfloat16 .*loss "
                     "scaling"):
    train.validate(train.override(train.Config(), ["model.dtype=float16"]))


def test_prefetching_changes_nothing_but_timing():
  config = train.override(train.preset("quickstart"), ["epochs=2", "data.options.train_size=1024"])
  keys = ("epoch_seconds", "images_per_second", "steps_per_second")
  histories = [[{k: v for k, v in r.items() if k not in keys}
                for r in train.run(train.override(config, [f"data.prefetch={n}"]),
                                   log=None).history] for n in (0, 2)]
  assert histories[0] == histories[1]
  assert list(pipeline.prefetch(iter(range(7)), 3)) == list(range(7))
  with pytest.raises(ValueError, match="size must be an integer >= 0"):
    list(pipeline.prefetch([1], -1))
  np.testing.assert_array_equal(np.arange(3), list(pipeline.prefetch(np.arange(3), 0)))
