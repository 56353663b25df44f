"""Gradient accumulation inside a step (``Objective(..., microbatches=k)``): one perturbation
from the whole batch's gradient, the perturbed gradient accumulated over the slices.

Checked against SAM written from its definition in float64 numpy on the whole batch, against
every transform with ``microbatches=1`` (float64, 1e-10), and for the memory it exists for.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import LogisticRegression, linear_apply, logistic_loss, sam_reference

import samx

BATCH, SLICES = 24, 4


def _mlp_problem(dtype):
  rng = np.random.default_rng(3)
  params = {"w1": jnp.asarray(rng.normal(size=(5, 8)) / 2, dtype),
            "b1": jnp.asarray(rng.normal(size=(8,)) / 4, dtype),
            "w2": jnp.asarray(rng.normal(size=(8, 3)) / 3, dtype)}
  x = jnp.asarray(rng.normal(size=(BATCH, 5)), dtype)
  labels = jnp.asarray(rng.integers(0, 3, size=BATCH), jnp.int32)
  return params, x, labels


def _mlp(params, x):
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


TRANSFORMS = {
    "sam": lambda: samx.sam(0.3),
    "asam": lambda: samx.sam(0.5, adaptive=True),
    "gsam": lambda: samx.gsam(0.3, 0.4),
    "saner": lambda: samx.saner(0.3, alpha=0.5, warmup_steps=0),
    "looksam": lambda: samx.looksam(0.3, k=1, alpha=0.7),
    "ae_sam": lambda: samx.ae_sam(0.3, threshold=lambda count: -1e9),  # always SAM
    "logit_sam": lambda: samx.logit_sam(0.3),
    "jacobian_sam": lambda: samx.jacobian_sam(0.3),
    "sam_ascent_steps": lambda: samx.sam(0.3, ascent_steps=2),
    "1-sam": lambda: samx.sam(0.3, group_size=1),
    "m-sam_vmap": lambda: samx.sam(0.3, group_size=3, group_path="vmap"),
}


# The rest of the transforms with the slow tests (the default suite's time budget).
DEFAULT_SUITE = ("sam", "gsam", "logit_sam", "sam_ascent_steps", "1-sam")


@pytest.mark.parametrize("name", [
    name if name in DEFAULT_SUITE else pytest.param(name, marks=pytest.mark.slow)
    for name in TRANSFORMS])
def test_accumulated_step_equals_the_whole_batch_step(name):
  with jax.enable_x64(True):
    params, x, labels = _mlp_problem(jnp.float64)
    updates = {}
    for slices in (1, SLICES):
      objective = samx.Objective(_mlp, _xent, x, labels, microbatches=slices)
      tx = TRANSFORMS[name]()
      # the incoming gradient accumulated too
      step = jax.jit(lambda p, o=objective, t=tx: t.update(o.grad(p), t.init(p), p,
                                                             objective=o)[0])
      updates[slices] = step(params)
    for key in params:
      np.testing.assert_allclose(updates[SLICES][key], updates[1][key], rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(updates[1]["w1"] - _mlp_grad(params, x, labels)))) > 1e-4


def _mlp_grad(params, x, labels):
  return jax.grad(lambda p: jnp.mean(_xent(_mlp(p, x), labels)))(params)["w1"]


def test_sam_over_microbatches_is_sam_of_the_whole_batch():
  # Independent math: float64 numpy SAM on the whole batch, grad at w + rho g / ||g||.
  logistic = LogisticRegression(n=BATCH)
  objective = samx.Objective(linear_apply, logistic_loss, jnp.asarray(logistic.x, jnp.float32),
                             jnp.asarray(logistic.y, jnp.float32), microbatches=SLICES)
  params = jnp.asarray(logistic.w, jnp.float32)
  tx = samx.sam(0.2)
  updates, _ = jax.jit(lambda p: tx.update(objective.grad(p), tx.init(p), p,
                                           objective=objective))(params)
  np.testing.assert_allclose(updates, sam_reference(logistic.grad, logistic.w, 0.2),
                             rtol=1e-5, atol=1e-6)
  # Not what SAM per microbatch gives (m-sharpness with m = the slice).
  per_slice = np.mean([sam_reference(lambda w, s=s: logistic.grad(w, s), logistic.w, 0.2)
                       for s in np.split(np.arange(BATCH), SLICES)], axis=0)
  assert np.max(np.abs(per_slice - np.asarray(updates))) > 1e-3


def test_surrogate_and_dropout_keys_per_slice():
  # rngs: slice j draws from fold_in(key, j) in its clean and perturbed pass alike.
  with jax.enable_x64(True):
    params, x, labels = _mlp_problem(jnp.float64)

    def dropout_mlp(p, inputs, key):
      keep = jax.random.bernoulli(key, 0.7, inputs.shape)
      return _mlp(p, jnp.where(keep, inputs / 0.7, 0.0))

    key = jax.random.key(4)
    objective = samx.Objective(dropout_mlp, _xent, x, labels, rngs=key, microbatches=SLICES,
                               surrogate=True)
    tx = samx.sam(0.3)
    updates = jax.jit(lambda p: tx.update(objective.grad(p), tx.init(p), p,
                                          objective=objective)[0])(params)
    # From the definition: slice j's gradients with key fold_in(key, j), averaged; the
    # surrogate's update is g + (g~_sam - g~) with g~ = g here (the same function).
    slices = np.split(np.arange(BATCH), SLICES)

    def grad_at(p):
      return jax.tree.map(lambda *gs: sum(gs) / SLICES, *[
          jax.grad(lambda q, s=s, j=j: jnp.mean(_xent(
              dropout_mlp(q, x[s], jax.random.fold_in(key, j)), labels[s])))(p)
          for j, s in enumerate(slices)])

    g = grad_at(params)
    norm = jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(g)))
    expected = grad_at(jax.tree.map(lambda w, gi: w + 0.3 * gi / norm, params, g))
    for leaf in params:
      np.testing.assert_allclose(updates[leaf], expected[leaf], rtol=1e-10, atol=1e-12)


def test_accumulation_bounds_the_step_memory():
  # The compiled step's temporary memory (XLA's own analysis, no timing): the activations of
  # one slice at a time.
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(size=(64, 512)) / 8, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(512, 10)) / 20, jnp.float32)}
  x = jnp.asarray(rng.normal(size=(2048, 64)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=2048), jnp.int32)
  model = lambda p, inputs: jnp.tanh(inputs @ p["w1"]) @ p["w2"]
  temp = {}
  for slices in (1, 8):
    objective = samx.Objective(model, _xent, x, labels, microbatches=slices)
    tx = samx.sam(0.05)
    step = jax.jit(lambda p, o=objective, t=tx: t.update(o.grad(p), t.init(p), p,
                                                           objective=o)[0])
    temp[slices] = step.lower(params).compile().memory_analysis().temp_size_in_bytes
  # One (2048, 512) float32 activation is 4 MiB; a slice's is 0.5 MiB.
  assert temp[8] < temp[1] / 3, temp


def test_microbatches_must_divide_the_batch():
  logistic = LogisticRegression(n=BATCH)
  objective = samx.Objective(linear_apply, logistic_loss, jnp.asarray(logistic.x, jnp.float32),
                             jnp.asarray(logistic.y, jnp.float32), microbatches=5)
  with pytest.raises(ValueError, match="`microbatches`=5 must divide the batch size 24"):
    objective.grad(jnp.zeros(4))
  with pytest.raises(ValueError, match="`microbatches` must be a positive integer"):
    samx.Objective(linear_apply, logistic_loss, logistic.x, logistic.y, microbatches=0)
  grouped = samx.Objective(linear_apply, logistic_loss, jnp.asarray(logistic.x, jnp.float32),
                           jnp.asarray(logistic.y, jnp.float32), microbatches=8)
  with pytest.raises(ValueError, match="must divide the number of groups"):
    samx.sam(0.1, group_size=6).update(jnp.zeros(4), samx.sam(0.1).init(jnp.zeros(4)),
                                       jnp.zeros(4), objective=grouped)
