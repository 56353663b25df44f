"""The J-SAM penalty reproduces J-SAM's step exactly on a two-layer linear network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samx
from samx import penalties


@pytest.mark.slow  # per-example J-SAM on a convnet (the suite's time budget)
def test_sgd_plus_the_penalty_is_the_1sam_jsam_step():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 5)))
    t = jnp.asarray(rng.choice([-1.0, 1.0], size=8))
    params = {"v": jnp.asarray(rng.normal(size=3)), "W": jnp.asarray(rng.normal(size=(3, 5)))}
    apply = lambda p, inputs: inputs @ p["W"].T @ p["v"]
    logistic = lambda f, targets: jnp.logaddexp(0.0, -targets * f)
    objective = samx.Objective(apply, logistic, x, t)
    rho = 0.2

    def penalized_loss(p):
      z = x @ p["W"].T
      f = z @ p["v"]
      penalty = penalties.jsam_penalty(z, p["v"], rho=rho,
                                       residual_norms=jax.nn.sigmoid(-t * f),
                                       input_norms=jnp.linalg.norm(x, axis=1))
      return jnp.mean(logistic(f, t)) + penalty

    cheap = jax.grad(penalized_loss)(params)
    tx = samx.jacobian_sam(rho, group_size=1)
    jsam, _ = tx.update(objective.grad(params), tx.init(params), params, objective=objective)
    for name in ("v", "W"):
      np.testing.assert_allclose(cheap[name], jsam[name], rtol=1e-10, atol=1e-12)


def test_simple_penalties():
  features = jnp.array([[3.0, 4.0], [0.0, 1.0]])
  kernel = jnp.array([[1.0, 2.0], [2.0, 0.0]])
  assert float(penalties.weight_penalty(kernel)) == pytest.approx(4.5)
  assert float(penalties.feature_penalty(features)) == pytest.approx((25 + 1) / 4)
  assert float(penalties.feature_penalty(features, jnp.array([0.0, 2.0]))) == pytest.approx(0.5)
  combined = penalties.feature_and_weight_penalty(features, kernel, feature_coef=0.1,
                                                  weight_coef=0.01)
  assert float(combined) == pytest.approx(0.1 * 6.5 + 0.01 * 4.5)
  # The weights are constants for differentiation.
  grad = jax.grad(lambda w: penalties.feature_penalty(features, w))(jnp.ones(2))
  np.testing.assert_array_equal(grad, 0.0)


def test_example_weights_guard_zero_jacobians():
  weights = penalties.jsam_example_weights(jnp.ones(2), jnp.zeros((2, 3)), jnp.zeros(3),
                                           jnp.zeros(2))
  np.testing.assert_array_equal(weights, 0.0)
