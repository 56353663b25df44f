"""samx.gsam against GSAM's formula written out in float64."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import apply_once, sam_reference

import samx


def gsam_reference(problem, rho, alpha):
  g = problem.grad(problem.w)
  g_sam = sam_reference(problem.grad, problem.w, rho)
  g_perp = g - (g @ g_sam) / (g_sam @ g_sam) * g_sam
  return g_sam - alpha * g_perp


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gsam_matches_reference(logistic, alpha):
  updates, _ = apply_once(samx.gsam(0.2, alpha), logistic.objective(), logistic.w)
  np.testing.assert_allclose(updates, gsam_reference(logistic, 0.2, alpha), rtol=1e-5,
                             atol=1e-6)


def test_gsam_moves_sam_only_orthogonally_to_g_sam(regression):
  sam_updates, _ = apply_once(samx.sam(0.3), regression.objective(), regression.w)
  gsam_updates, _ = apply_once(samx.gsam(0.3, 0.7), regression.objective(), regression.w)
  difference = np.asarray(gsam_updates - sam_updates, np.float64)
  assert np.linalg.norm(difference) > 1e-3
  assert abs(difference @ np.asarray(sam_updates, np.float64)) < 1e-5


def test_gsam_alpha_schedule(regression):
  tx = samx.gsam(0.3, optax.linear_schedule(0.0, 1.0, 1))
  objective = regression.objective()
  params = jnp.asarray(regression.w, jnp.float32)
  state = tx.init(params)
  first, state = tx.update(objective.grad(params), state, params, objective=objective)
  second, state = tx.update(objective.grad(params), state, params, objective=objective)
  np.testing.assert_allclose(first, gsam_reference(regression, 0.3, 0.0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(second, gsam_reference(regression, 0.3, 1.0), rtol=1e-5, atol=1e-6)


def test_zero_gradient_is_safe():
  objective = samx.Objective(lambda w, x: x @ w, lambda o, t: (o - t) ** 2,
                             jnp.eye(3), jnp.zeros(3))
  updates, _ = apply_once(samx.gsam(0.1, 0.5), objective, jnp.zeros(3))
  np.testing.assert_array_equal(updates, np.zeros(3))


def test_negative_alpha_is_an_error():
  with pytest.raises(ValueError, match="`alpha`"):
    samx.gsam(0.1, -0.5)
