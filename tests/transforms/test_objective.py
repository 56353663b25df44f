"""samx.Objective: its value and gradient, its groups, its errors, and its NNX constructor."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import linear_apply, squared_error
from flax import nnx

import samx


def test_value_and_grad_is_the_mean_loss_and_its_gradient(regression):
  objective = regression.objective()
  loss, grads = objective.value_and_grad(jnp.asarray(regression.w, jnp.float32))
  residual = regression.x @ regression.w - regression.y
  assert float(loss) == pytest.approx(0.5 * np.mean(residual**2), rel=1e-5)
  np.testing.assert_allclose(grads, regression.grad(regression.w), rtol=1e-5, atol=1e-6)


def test_pytree_inputs_and_targets():
  inputs = {"a": jnp.ones((6, 2)), "b": jnp.arange(6.0)}
  targets = (jnp.zeros(6), jnp.ones(6))
  objective = samx.Objective(
      lambda w, x: x["a"] @ w + x["b"], lambda out, t: (out - t[0]) ** 2 + 0 * t[1],
      inputs, targets)
  assert objective.batch_size == 6
  groups = objective.split_into_groups(3)
  assert groups.inputs["a"].shape == (2, 3, 2)
  assert groups.targets[1].shape == (2, 3)


def test_objective_is_a_pytree_that_crosses_jit(regression):
  objective = regression.objective()
  leaves = jax.tree.leaves(objective)
  assert len(leaves) == 2
  loss = jax.jit(lambda o, w: o.loss(w))(objective, jnp.asarray(regression.w, jnp.float32))
  assert np.isfinite(loss)


def test_mismatched_batch_sizes_are_an_error():
  objective = samx.Objective(linear_apply, squared_error, jnp.ones((4, 2)), jnp.ones(3))
  with pytest.raises(ValueError, match="common size"):
    objective.loss(jnp.ones(2))


def test_loss_fn_that_reduces_is_an_error():
  objective = samx.Objective(linear_apply, lambda o, t: jnp.mean((o - t) ** 2),
                             jnp.ones((4, 2)), jnp.ones(4))
  with pytest.raises(ValueError, match="one loss per example"):
    objective.value_and_grad(jnp.ones(2))


@pytest.mark.parametrize("group_size", [0, 3, -2, 2.0])
def test_split_into_groups_rejects_sizes_that_do_not_divide(group_size):
  objective = samx.Objective(linear_apply, squared_error, jnp.ones((4, 2)), jnp.ones(4))
  with pytest.raises(ValueError, match="group_size"):
    objective.split_into_groups(group_size)


def test_from_nnx_differentiates_the_params_and_freezes_the_rest():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 2, rngs=rngs)
      self.norm = nnx.BatchNorm(2, rngs=rngs)

    def __call__(self, x):
      return self.norm(self.linear(x))

  model = Net(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
  y = jnp.zeros(8, jnp.int32)
  xent = optax.softmax_cross_entropy_with_integer_labels
  before = nnx.state(model, nnx.BatchStat)
  objective = samx.Objective.from_nnx(model, xent, x, y)
  params = nnx.state(model, nnx.Param)
  _, grads = objective.value_and_grad(params)

  def reference(m):
    return jnp.mean(xent(m(x), y))

  expected = nnx.grad(reference)(nnx.clone(model))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grads, nnx.state(expected, nnx.Param))
  # The objective's forward passes leave the model's running statistics alone.
  jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model, nnx.BatchStat))


# ------------------------------------------------------------------ randomness in the model

def dropout_mlp(params, x, key):
  """A two-layer net with dropout on its hidden units: its output depends on ``key``."""
  h = jnp.tanh(x @ params["w1"])
  keep = jax.random.bernoulli(key, 0.7, h.shape)
  return jnp.where(keep, h / 0.7, 0.0) @ params["w2"]


def dropout_problem():
  rng = np.random.default_rng(3)
  params = {"w1": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(8,)), jnp.float32)
  return params, x, y, jax.random.key(7)


def sam_step_from_definition(params, x, y, key, rho):
  """grad L(w + rho g / ||g||) with the same dropout key in both passes, written out."""
  def loss(p):
    return jnp.mean(0.5 * (dropout_mlp(p, x, key) - y) ** 2)

  g = jax.grad(loss)(params)
  norm = jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g)))
  return jax.grad(loss)(jax.tree.map(lambda w, d: w + rho * d / norm, params, g))


def test_rngs_reach_the_model_and_both_passes_use_the_same_key():
  params, x, y, key = dropout_problem()
  objective = samx.Objective(dropout_mlp, lambda o, t: 0.5 * (o - t) ** 2, x, y, rngs=key)
  other = samx.Objective(dropout_mlp, lambda o, t: 0.5 * (o - t) ** 2, x, y,
                         rngs=jax.random.key(8))
  assert not np.allclose(objective.apply(params), other.apply(params))  # the key matters
  tx = samx.sam(0.1)
  updates, _ = jax.jit(lambda p: tx.update(objective.grad(p), tx.init(p), p,
                                           objective=objective))(params)
  expected = sam_step_from_definition(params, x, y, key, 0.1)
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group_path", ["layers", "vmap"])
def test_rngs_under_m_sharpness_give_group_k_the_key_folded_with_k(group_path):
  params, x, y, key = dropout_problem()
  objective = samx.Objective(dropout_mlp, lambda o, t: 0.5 * (o - t) ** 2, x, y, rngs=key)
  tx = samx.sam(0.1, group_size=2, group_path=group_path)
  updates, _ = jax.jit(lambda p: tx.update(objective.grad(p), tx.init(p), p,
                                           objective=objective))(params)
  per_group = [sam_step_from_definition(params, x[2 * k:2 * k + 2], y[2 * k:2 * k + 2],
                                        jax.random.fold_in(key, k), 0.1) for k in range(4)]
  expected = jax.tree.map(lambda *g: sum(g) / 4, *per_group)
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rngs_work_with_every_transform():
  params, x, y, key = dropout_problem()
  objective = samx.Objective(dropout_mlp, lambda o, t: 0.5 * (o - t) ** 2, x, y, rngs=key)
  for tx in (samx.logit_sam(0.1), samx.jacobian_sam(0.1, group_size=1),
             samx.saner(0.1, warmup_steps=2), samx.gsam(0.1, alpha=0.1),
             samx.looksam(0.1), samx.ae_sam(0.1, total_steps=4)):
    updates, _ = jax.jit(lambda p, tx=tx: tx.update(objective.grad(p), tx.init(p), p,
                                                    objective=objective))(params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_the_readme_recipe_wraps_a_plain_grad_fn(regression):
  """docs/transforms.md, "Why the objective, and a plain grad_fn": whole-batch transforms need
  only grad_fn."""
  def as_objective(grad_fn):
    def apply_fn(w, _):
      g = jax.lax.stop_gradient(grad_fn(w))
      return optax.tree.vdot(g, w)[None]
    return samx.Objective(apply_fn, lambda out, _: out, jnp.zeros((1,)), jnp.zeros((1,)))

  real = regression.objective()
  params = jnp.asarray(regression.w, jnp.float32)
  wrapped = as_objective(real.grad)
  for tx in (samx.sam(0.1), samx.sam(0.1, adaptive=True), samx.gsam(0.1, alpha=0.3),
             samx.saner(0.1, warmup_steps=0)):
    expected, _ = tx.update(real.grad(params), tx.init(params), params, objective=real)
    got, _ = tx.update(real.grad(params), tx.init(params), params, objective=wrapped)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
