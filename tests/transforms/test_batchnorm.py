"""With BatchNorm, the running statistics come from the clean pass only, never from w + eps."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx


class _BatchNormNet(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 4, rngs=rngs)
    self.norm = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.norm(self.linear(x))))


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@pytest.mark.parametrize("make_tx", [
    lambda: samx.sam(0.5), lambda: samx.saner(0.5, warmup_steps=0), lambda: samx.gsam(0.5, 0.5),
    lambda: samx.sam(0.5, group_size=4)])
def test_running_statistics_come_from_the_clean_pass(make_tx):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 3)) + 1.0, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, size=8), jnp.int32)
  model = _BatchNormNet(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.chain(make_tx(), optax.sgd(0.1)), wrt=nnx.Param)

  # Independently: the pre-BN activations at the current weights and the momentum update.
  kernel = np.asarray(model.linear.kernel[...], np.float64)
  bias = np.asarray(model.linear.bias[...], np.float64)
  pre_norm = np.asarray(x, np.float64) @ kernel + bias
  mean_before = np.asarray(model.norm.mean[...], np.float64)
  var_before = np.asarray(model.norm.var[...], np.float64)
  expected_mean = 0.9 * mean_before + 0.1 * pre_norm.mean(0)
  expected_var = 0.9 * var_before + 0.1 * pre_norm.var(0)

  @nnx.jit
  def train_step(model, optimizer):
    objective = samx.Objective.from_nnx(model, _xent, x, labels)
    grads = nnx.grad(lambda m: jnp.mean(_xent(m(x), labels)))(model)  # updates the statistics
    optimizer.update(model, grads, objective=objective)

  train_step(model, optimizer)
  # One momentum update from the clean activations; a second write from the perturbed pass
  # would make the mean about 0.19 * activations instead of 0.1 * activations.
  np.testing.assert_allclose(model.norm.mean[...], expected_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.norm.var[...], expected_var, rtol=1e-5, atol=1e-6)
