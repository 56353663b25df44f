"""Importance weights, Lorenz curves and Gini coefficients against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samx
from samx import analysis


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _logistic_problem(seed=0, n=24, d=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  t = rng.choice([-1.0, 1.0], size=n)
  w = rng.normal(size=d)
  objective = samx.Objective(lambda p, inputs: inputs @ p,
                             lambda f, targets: jnp.logaddexp(0.0, -targets * f),
                             jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  return x, t, w, objective


def test_logistic_weights_are_sigmoid_of_minus_the_margin_at_w_and_at_the_phantom_point():
  x, t, w, objective = _logistic_problem()
  rho = 0.4
  weights = analysis.importance_weights(objective, jnp.asarray(w, jnp.float32), rho)
  real = _sigmoid(-t * (x @ w))
  # Whole-batch SAM: g = -(1/n) sum_i s_i t_i x_i, eps = rho g / ||g||.
  g = -(real * t) @ x / len(t)
  phantom = _sigmoid(-t * (x @ (w + rho * g / np.linalg.norm(g))))
  np.testing.assert_allclose(weights.real, real / real.sum(), rtol=1e-5)
  np.testing.assert_allclose(weights.phantom, phantom / phantom.sum(), rtol=1e-5)


def test_one_sam_weights_use_each_examples_own_step():
  x, t, w, objective = _logistic_problem(seed=1)
  rho = 0.3
  weights = jax.jit(analysis.importance_weights, static_argnums=(2, 3))(
      objective, jnp.asarray(w, jnp.float32), rho, 1)
  # Example i's own ascent step moves its margin by -rho ||x_i|| (Baek et al., Lemma 3.1).
  phantom = _sigmoid(-t * (x @ w) + rho * np.linalg.norm(x, axis=1))
  np.testing.assert_allclose(weights.phantom, phantom / phantom.sum(), rtol=1e-5)
  groups = analysis.importance_weights(objective, jnp.asarray(w, jnp.float32), rho, 4)
  assert groups.phantom.shape == (24,)
  assert float(jnp.sum(groups.phantom)) == pytest.approx(1.0, rel=1e-6)


def test_softmax_weights_are_residual_norms():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 6)
  objective = samx.Objective(lambda p, inputs: inputs * p,
                             optax.softmax_cross_entropy_with_integer_labels,
                             jnp.asarray(logits), jnp.asarray(labels))
  weights = analysis.importance_weights(objective, jnp.float32(1.0), 0.0)
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  norms = np.linalg.norm(probabilities - np.eye(3)[labels], axis=1)
  np.testing.assert_allclose(weights.real, norms / norms.sum(), rtol=1e-5)
  np.testing.assert_allclose(weights.phantom, weights.real, rtol=1e-6)  # rho = 0


def test_gini_coefficient_is_the_mean_absolute_difference():
  rng = np.random.default_rng(3)
  for values in (rng.exponential(size=50), rng.uniform(size=7), rng.pareto(1.5, size=200)):
    expected = np.abs(values[:, None] - values[None, :]).sum() / (2 * len(values) ** 2
                                                                   * values.mean())
    assert float(analysis.gini_coefficient(jnp.asarray(values))) == pytest.approx(
        expected, rel=1e-4, abs=1e-6)
  assert float(analysis.gini_coefficient(jnp.ones(10))) == pytest.approx(0.0, abs=1e-6)
  assert float(analysis.gini_coefficient(jnp.zeros(10))) == pytest.approx(0.0, abs=1e-6)
  one_hot = jnp.zeros(10).at[3].set(2.0)
  assert float(analysis.gini_coefficient(one_hot)) == pytest.approx(0.9, rel=1e-5)


def test_lorenz_curve_runs_from_zero_to_one_below_the_diagonal():
  population, share = analysis.lorenz_curve(jnp.asarray([3.0, 1.0, 0.0, 4.0]))
  np.testing.assert_allclose(population, [0, 0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(share, [0, 0, 0.125, 0.5, 1.0])
  population, share = analysis.lorenz_curve(jnp.full(5, 0.2))
  np.testing.assert_allclose(share, population, atol=1e-6)


def test_the_phantom_point_makes_logistic_weights_more_equal_when_one_feature_is_learned():
  # Two redundant features, the first learned (large weight), the second not: the ascent step
  # mostly shrinks the learned feature's weight, so the examples the model fits well get
  # their weight back and the weights are more equal (Springer et al., Section 4).
  rng = np.random.default_rng(4)
  t = rng.choice([-1.0, 1.0], size=200)
  x = np.stack([t * 2.0 + 0.3 * rng.normal(size=200), t * 0.3 + rng.normal(size=200)], 1)
  objective = samx.Objective(lambda p, inputs: inputs @ p,
                             lambda f, targets: jnp.logaddexp(0.0, -targets * f),
                             jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  weights = analysis.importance_weights(objective, jnp.asarray([2.0, 0.05]), 1.0)
  assert float(analysis.gini_coefficient(weights.phantom)) < float(
      analysis.gini_coefficient(weights.real)) - 0.1
