"""L-SAM and J-SAM against dense-Jacobian references, linear models and Proposition 4.1."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import apply_once, sam_reference

import samx


def _mlp_problem(seed=0, n=12):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=n), jnp.int32)
  params = {"w1": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)}
  apply = lambda p, inputs: jnp.tanh(inputs @ p["w1"]) @ p["w2"]
  objective = samx.Objective(apply, optax.softmax_cross_entropy_with_integer_labels, x, labels)
  return objective, params


def _dense_reference(objective, params, rho, which):
  """The formula with dense matrices: flatten w, build J = d f / d w and r = d L / d f."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  outputs = lambda w: objective.apply_fn(unravel(w), objective.inputs).reshape(-1)
  mean_loss_of_outputs = lambda f: objective.losses_from_outputs(
      f.reshape(objective.batch_size, -1)).mean()
  g = jax.grad(lambda w: mean_loss_of_outputs(outputs(w)))(flat)
  perturbed = flat + rho * g / jnp.linalg.norm(g)
  jacobian_at = lambda w: jax.jacobian(outputs)(w)             # (outputs, params)
  residual_at = lambda w: jax.grad(mean_loss_of_outputs)(outputs(w))
  if which == "logit":
    return jacobian_at(flat).T @ residual_at(perturbed)
  return jacobian_at(perturbed).T @ residual_at(flat)


@pytest.mark.parametrize(("transform", "which"), [(samx.logit_sam, "logit"),
                                                  (samx.jacobian_sam, "jacobian")])
def test_matches_the_dense_jacobian_formula(transform, which):
  objective, params = _mlp_problem()
  updates, _ = apply_once(transform(0.3), objective, params)
  flat = jax.flatten_util.ravel_pytree(updates)[0]
  np.testing.assert_allclose(flat, _dense_reference(objective, params, 0.3, which), rtol=2e-5,
                             atol=2e-6)


@pytest.mark.parametrize("transform", [samx.logit_sam, samx.jacobian_sam])
@pytest.mark.parametrize("group_size", [None, 1])
def test_rho_zero_is_the_sgd_gradient(transform, group_size):
  objective, params = _mlp_problem()
  updates, _ = apply_once(transform(0.0, group_size=group_size), objective, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               updates, objective.grad(params))


@pytest.mark.parametrize("group_size", [None, 1, 4])
def test_linear_model_jsam_is_sgd_and_lsam_is_sam(logistic, group_size):
  # f = <w, x>: the Jacobian x does not depend on w.
  objective = logistic.objective()
  jsam, _ = apply_once(samx.jacobian_sam(0.4, group_size=group_size), objective, logistic.w)
  lsam, _ = apply_once(samx.logit_sam(0.4, group_size=group_size), objective, logistic.w)
  sam, _ = apply_once(samx.sam(0.4, group_size=group_size), objective, logistic.w)
  np.testing.assert_allclose(jsam, logistic.grad(logistic.w), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(lsam, sam, rtol=1e-5, atol=1e-6)
  if group_size is None:
    np.testing.assert_allclose(lsam, sam_reference(logistic.grad, logistic.w, 0.4), rtol=1e-5,
                               atol=1e-6)


def test_on_a_nonlinear_model_the_three_differ():
  objective, params = _mlp_problem()
  flat = lambda tree: np.asarray(jax.flatten_util.ravel_pytree(tree)[0])
  sgd = flat(objective.grad(params))
  results = {name: flat(apply_once(make(0.5), objective, params)[0]) for name, make in
             [("sam", samx.sam), ("lsam", samx.logit_sam), ("jsam", samx.jacobian_sam)]}
  for a in ("sam", "lsam", "jsam"):
    assert np.linalg.norm(results[a] - sgd) > 1e-3
    for b in ("sam", "lsam", "jsam"):
      if a < b:
        assert np.linalg.norm(results[a] - results[b]) > 1e-4, (a, b)


def _two_layer_problem(seed=0, n=6, d=5, k=4):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float64)
  t = jnp.asarray(rng.choice([-1.0, 1.0], size=n), jnp.float64)
  params = {"v": jnp.asarray(rng.normal(size=k), jnp.float64),
            "W": jnp.asarray(rng.normal(size=(k, d)), jnp.float64)}
  apply = lambda p, inputs: inputs @ p["W"].T @ p["v"]            # f = <v, W x>
  loss = lambda f, targets: jnp.logaddexp(0.0, -targets * f)     # -log sigmoid(t f)
  return samx.Objective(apply, loss, x, t), params


def _proposition_4_1(objective, params, rho):
  """Baek et al.'s closed form of the 1-SAM J-SAM update, averaged over examples."""
  v, W = params["v"], params["W"]
  grad_v, grad_W = 0.0, 0.0
  for x, t in zip(objective.inputs, objective.targets, strict=True):
    z = W @ x
    s = jax.nn.sigmoid(-t * (v @ z))
    J = jnp.sqrt(z @ z + (x @ x) * (v @ v))
    grad_v = grad_v - s * (t * z - rho * (x @ x) * v / J)
    grad_W = grad_W - s * jnp.outer(t * v - rho * z / J, x)
  n = objective.batch_size
  return {"v": grad_v / n, "W": grad_W / n}


def test_two_layer_linear_network_follows_proposition_4_1():
  with jax.enable_x64(True):
    objective, params = _two_layer_problem()
    tx = samx.jacobian_sam(0.3, group_size=1)
    updates, _ = tx.update(objective.grad(params), tx.init(params), params, objective=objective)
    expected = _proposition_4_1(objective, params, 0.3)
    for name in ("v", "W"):
      np.testing.assert_allclose(updates[name], expected[name], rtol=1e-10, atol=1e-12)

    # And its first-order dependence on rho, by central finite differences.
    def update_at(rho):
      tx = samx.jacobian_sam(rho, group_size=1)
      return tx.update(objective.grad(params), tx.init(params), params, objective=objective)[0]

    h = 1e-4
    slope = jax.tree.map(lambda a, b: (a - b) / (2 * h), update_at(0.1 + h), update_at(0.1 - h))
    closed_slope = jax.tree.map(lambda a, b: (a - b) / 0.1, _proposition_4_1(objective, params,
                                                                                 0.1),
                                _proposition_4_1(objective, params, 0.0))
    for name in ("v", "W"):
      np.testing.assert_allclose(slope[name], closed_slope[name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("group_size", [None, 3])
def test_jsam_with_the_callers_outputs_equals_recomputing_them(group_size):
  objective, params = _mlp_problem()
  outputs = objective.apply_fn(params, objective.inputs)
  with_outputs = samx.Objective(objective.apply_fn, objective.loss_fn, objective.inputs,
                                objective.targets, outputs=outputs)
  tx = samx.jacobian_sam(0.3, group_size=group_size)
  a, _ = apply_once(tx, objective, params)
  b, _ = apply_once(tx, with_outputs, params)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), a, b)
  # The outputs are really used: wrong ones (softmax is shift-invariant, so scale) change it.
  wrong = samx.Objective(objective.apply_fn, objective.loss_fn, objective.inputs,
                         objective.targets, outputs=2.0 * outputs)
  c, _ = apply_once(tx, wrong, params)
  assert not np.allclose(jax.flatten_util.ravel_pytree(c)[0],
                         jax.flatten_util.ravel_pytree(a)[0])
