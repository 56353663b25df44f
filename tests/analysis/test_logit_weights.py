"""SAM's per-example re-weighting against Baek et al.'s closed form for logistic regression."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samx
from samx import analysis


def test_logistic_regression_weights_match_lemma_3_1():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 5))
  x /= np.linalg.norm(x, axis=1, keepdims=True) / rng.uniform(0.5, 1.5)  # one common norm
  t = rng.choice([-1.0, 1.0], size=32)
  w = rng.normal(size=5)
  rho = 0.3
  objective = samx.Objective(lambda p, inputs: inputs @ p,
                             lambda f, targets: jnp.logaddexp(0.0, -targets * f),
                             jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  weights = np.asarray(analysis.logit_weights(objective, jnp.asarray(w, jnp.float32), rho))
  z = t * (x @ w)
  sigmoid = lambda a: 1.0 / (1.0 + np.exp(-a))
  expected = sigmoid(-z + rho * np.linalg.norm(x, axis=1)) / sigmoid(-z)
  np.testing.assert_allclose(weights, expected, rtol=1e-5)
  # Increasing in the margin (at a given ||x||): the better an example is fit, the more SAM
  # up-weights it.
  order = np.argsort(z)
  assert np.all(np.diff(weights[order]) > 0)


def test_weights_are_one_at_rho_zero_and_split_by_mask():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, 10), jnp.int32)
  objective = samx.Objective(lambda p, inputs: jnp.tanh(inputs @ p),
                             optax.softmax_cross_entropy_with_integer_labels, x, labels)
  params = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
  np.testing.assert_allclose(analysis.logit_weights(objective, params, 0.0), 1.0, rtol=1e-6)
  weights = jax.jit(analysis.logit_weights, static_argnums=2)(objective, params, 0.5)
  mask = np.arange(10) < 3
  summary = analysis.split_by_mask(weights, mask)
  assert float(summary.noisy) == pytest.approx(float(np.mean(np.asarray(weights)[mask])))
  assert float(summary.clean) == pytest.approx(float(np.mean(np.asarray(weights)[~mask])))
  assert np.isnan(float(analysis.split_by_mask(weights, np.zeros(10, bool)).noisy))
