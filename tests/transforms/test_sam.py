"""samx.sam and ASAM against closed forms, a hand-written reference and optax.contrib.sam."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import apply_once, asam_reference, sam_reference

import samx


@pytest.mark.parametrize("rho", [0.0, 0.05, 0.5])
def test_sam_on_quadratic_matches_closed_form(regression, rho):
  # On L = 0.5 w'Aw - c'w, grad L(w + eps) = g + A eps exactly.
  g = regression.grad(regression.w)
  expected = g + (rho * regression.a @ g / np.linalg.norm(g) if rho else 0.0)
  updates, state = apply_once(samx.sam(rho), regression.objective(), regression.w)
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)
  assert int(state.count) == 1


@pytest.mark.parametrize("rho", [0.01, 0.3])
def test_sam_on_logistic_regression_matches_reference(logistic, rho):
  updates, _ = apply_once(samx.sam(rho), logistic.objective(), logistic.w)
  np.testing.assert_allclose(updates, sam_reference(logistic.grad, logistic.w, rho),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.01, 1.0])
def test_asam_matches_closed_form(regression, eta):
  rho = 0.2
  g = regression.grad(regression.w)
  t = np.abs(regression.w) + eta
  expected = g + regression.a @ (rho * t**2 * g / np.linalg.norm(t * g))
  updates, _ = apply_once(samx.sam(rho, adaptive=True, eta=eta), regression.objective(),
                          regression.w)
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)


def test_asam_on_logistic_regression_matches_reference(logistic):
  updates, _ = apply_once(samx.sam(0.5, adaptive=True, eta=0.1), logistic.objective(), logistic.w)
  np.testing.assert_allclose(updates, asam_reference(logistic.grad, logistic.w, 0.5, 0.1),
                             rtol=1e-5, atol=1e-6)


def test_asam_is_invariant_to_rescaling_a_layer():
  # ASAM's point (Kwon et al.): for f = v * relu(W x) the loss is invariant under
  # (W, v) -> (cW, v/c), and ASAM's perturbed loss (eta=0) is too; SAM's is not.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=8), jnp.float32)
  apply = lambda p, inputs: jax.nn.relu(inputs @ p["W"]) @ p["v"]
  objective = samx.Objective(apply, lambda o, t: (o - t) ** 2, x, y)
  params = {"W": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "v": jnp.asarray(rng.normal(size=4), jnp.float32)}
  rescaled = {"W": 4.0 * params["W"], "v": params["v"] / 4.0}

  def perturbed_loss(adaptive, p):
    g = objective.grad(p)
    eps = (samx.transforms._perturbation.asam_perturbation(0.0) if adaptive
           else samx.transforms._perturbation.sam_perturbation)(g, p, jnp.float32(0.1))
    return float(objective.loss(jax.tree.map(jnp.add, p, eps)))

  assert perturbed_loss(True, params) == pytest.approx(perturbed_loss(True, rescaled), rel=1e-4)
  assert perturbed_loss(False, params) != pytest.approx(perturbed_loss(False, rescaled), rel=1e-3)


def _mlp_problem(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=32))
  params = {
      "hidden": {"w": jnp.asarray(rng.normal(size=(6, 16)) / 2, jnp.float32),
                 "b": jnp.zeros(16, jnp.float32)},
      "out": {"w": jnp.asarray(rng.normal(size=(16, 3)) / 4, jnp.float32),
              "b": jnp.zeros(3, jnp.float32)},
  }

  def apply(p, inputs):
    hidden = jnp.tanh(inputs @ p["hidden"]["w"] + p["hidden"]["b"])
    return hidden @ p["out"]["w"] + p["out"]["b"]

  xent = optax.softmax_cross_entropy_with_integer_labels
  return samx.Objective(apply, xent, x, labels), params


def test_sam_matches_optax_contrib_sam_in_opaque_mode():
  objective, params = _mlp_problem()
  rho, lr = 0.05, 0.1
  samx_tx = optax.chain(samx.sam(rho), optax.sgd(lr, momentum=0.9))
  optax_tx = optax.contrib.sam(
      optax.sgd(lr, momentum=0.9), optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
      opaque_mode=True)
  samx_params, optax_params = params, params
  samx_state, optax_state = samx_tx.init(params), optax_tx.init(params)

  @jax.jit
  def samx_step(p, state):
    updates, state = samx_tx.update(objective.grad(p), state, p, objective=objective)
    return optax.apply_updates(p, updates), state, updates

  @jax.jit
  def optax_step(p, state):
    grad_fn = lambda q, _: objective.grad(q)
    updates, state = optax_tx.update(objective.grad(p), state, p, grad_fn=grad_fn)
    return optax.apply_updates(p, updates), state, updates

  for _ in range(10):
    samx_params, samx_state, samx_updates = samx_step(samx_params, samx_state)
    optax_params, optax_state, optax_updates = optax_step(optax_params, optax_state)
    chex.assert_trees_all_close(samx_updates, optax_updates, atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_close(samx_params, optax_params, atol=1e-6, rtol=1e-6)


def test_rho_schedule_is_advanced_by_the_transforms_own_count(regression):
  # rho = 0 at step 0 (plain gradient), 0.1 at step 1 (SAM), 0.2 at step 2.
  schedule = optax.linear_schedule(0.0, 0.2, transition_steps=2)
  tx = samx.sam(schedule)
  objective = regression.objective()
  params = jnp.asarray(regression.w, jnp.float32)
  state = tx.init(params)
  grads = objective.grad(params)
  for step, rho in enumerate([0.0, 0.1, 0.2, 0.2]):
    updates, state = tx.update(grads, state, params, objective=objective)
    g = regression.grad(regression.w)
    expected = g + (rho * regression.a @ g / np.linalg.norm(g) if rho else 0.0)
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)
    assert int(state.count) == step + 1


def test_sam_under_jit_equals_eager(logistic):
  tx = samx.sam(0.1, adaptive=True)
  objective = logistic.objective()
  params = jnp.asarray(logistic.w, jnp.float32)
  eager, _ = apply_once(tx, objective, params)
  jitted, _ = jax.jit(lambda p, o: apply_once(tx, o, p))(params, objective)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("group_size", [None, 4])
def test_zero_gradient_gives_finite_updates(regression, adaptive, group_size):
  # At the least-squares minimum the gradient is exactly zero; eps must not be 0/0.
  x = jnp.eye(4, dtype=jnp.float32)
  objective = samx.Objective(lambda w, inputs: inputs @ w, lambda o, t: (o - t) ** 2, x,
                             jnp.zeros(4, jnp.float32))
  tx = samx.sam(0.1, adaptive=adaptive, group_size=group_size)
  updates, _ = apply_once(tx, objective, jnp.zeros(4))
  np.testing.assert_array_equal(updates, np.zeros(4))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_incoming_gradient_gives_a_nan_update_and_keeps_the_state(regression, bad):
  """samx's one rule (tests/transforms/test_contract.py checks it for every transform)."""
  objective = regression.objective()
  params = jnp.asarray(regression.w, jnp.float32)
  grads = objective.grad(params).at[0].set(bad)
  updates, state = apply_once(samx.sam(0.1), objective, params, grads=grads)
  assert np.all(np.isnan(updates))
  assert int(state.count) == 0


def test_bfloat16_params_keep_their_dtype(regression):
  params = jnp.asarray(regression.w, jnp.bfloat16)
  objective = samx.Objective(lambda w, x: x @ w, lambda o, t: (o - t) ** 2,
                             jnp.asarray(regression.x, jnp.bfloat16),
                             jnp.asarray(regression.y, jnp.bfloat16))
  tx = samx.sam(0.1)
  updates, _ = tx.update(objective.grad(params), tx.init(params), params, objective=objective)
  assert updates.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(updates, np.float32)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": "0.1"}, "rho"),
        ({"rho": 0.1, "eta": -1.0}, "eta"),
        ({"rho": 0.1, "group_size": 0}, "group_size"),
        ({"rho": 0.1, "group_size": 2.5}, "group_size"),
        ({"rho": 0.1, "adaptive": 1}, "adaptive"),
        ({"rho": 0.1, "groups_in_parallel": 2}, "groups_in_parallel"),
        ({"rho": 0.1, "group_size": 2, "groups_in_parallel": 0}, "groups_in_parallel"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    samx.sam(**kwargs)


def test_group_size_must_divide_the_batch(regression):
  with pytest.raises(ValueError, match=r"group_size must be a positive integer that divides"):
    apply_once(samx.sam(0.1, group_size=5), regression.objective(), regression.w)


def test_update_without_objective_or_params_explains_the_call(regression):
  tx = samx.sam(0.1)
  params = jnp.asarray(regression.w, jnp.float32)
  with pytest.raises(ValueError, match="needs the objective"):
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, tx.init(params), objective=regression.objective())
  with pytest.raises(ValueError, match=r"must be a samx\.Objective"):
    tx.update(params, tx.init(params), params, objective=lambda w: w)
