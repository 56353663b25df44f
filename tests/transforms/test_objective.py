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
