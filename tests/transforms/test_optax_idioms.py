"""optax's own idioms around samx transforms: ``optax.inject_hyperparams`` over every float
hyperparameter of every transform, under ``jax.jit``, with no recompilation when a value
changes, and the integer options static."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samx

PARAMS = {"w": jnp.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]]), "b": jnp.array([0.1, -0.1])}
X = jnp.asarray([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.0, 1.0], [2.0, 1.0, 0.0]])
Y = jnp.asarray([0, 1, 1, 0])
OBJECTIVE = samx.Objective(lambda p, x: jnp.tanh(x @ p["w"] + p["b"]),
                           optax.softmax_cross_entropy_with_integer_labels, X, Y)

# transform, its arguments, the integer ones (static), and a new value of each float one.
CASES = {
    "sam": (samx.sam, {"rho": 0.05}, (), {"rho": 0.2}),
    "asam": (samx.sam, {"rho": 0.5, "adaptive": True, "eta": 0.01}, (),
             {"rho": 1.0, "eta": 0.1}),
    "1-sam": (samx.sam, {"rho": 0.05, "group_size": 1}, ("group_size",), {"rho": 0.2}),
    "gsam": (samx.gsam, {"rho": 0.05, "alpha": 0.1}, (), {"rho": 0.2, "alpha": 0.5}),
    "saner": (samx.saner, {"rho": 0.05, "alpha": 0.5, "warmup_steps": 0, "gsam_alpha": 0.1},
              ("warmup_steps",), {"rho": 0.2, "alpha": 0.25, "gsam_alpha": 0.3}),
    "logit_sam": (samx.logit_sam, {"rho": 0.05}, (), {"rho": 0.2}),
    "jacobian_sam": (samx.jacobian_sam, {"rho": 0.05}, (), {"rho": 0.2}),
    "looksam": (samx.looksam, {"rho": 0.05, "k": 1, "alpha": 0.7}, ("k",),
                {"rho": 0.2, "alpha": 0.3}),
    "ae_sam": (samx.ae_sam, {"rho": 0.05, "total_steps": 10, "delta": 0.9,
                             "threshold_start": -10.0, "threshold_end": -10.0},
               ("total_steps",), {"rho": 0.2, "delta": 0.5, "threshold_start": -5.0}),
}


def _direct_update(factory, arguments):
  tx = factory(**arguments)
  return tx.update(OBJECTIVE.grad(PARAMS), tx.init(PARAMS), PARAMS, objective=OBJECTIVE)[0]


@pytest.mark.parametrize("name", list(CASES))
def test_inject_hyperparams_under_jit_without_recompiling(name):
  factory, arguments, static, changes = CASES[name]
  tx = optax.inject_hyperparams(factory, static_args=static)(**arguments)
  traces = []

  @jax.jit
  def step(state):
    traces.append(1)
    return tx.update(OBJECTIVE.grad(PARAMS), state, PARAMS, objective=OBJECTIVE)

  state = tx.init(PARAMS)
  updates, _ = step(state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), updates,
               _direct_update(factory, arguments))
  for key, value in changes.items():  # a new value: the same compiled step, its own update
    state.hyperparams[key] = jnp.asarray(value, state.hyperparams[key].dtype)
    updates, _ = step(state)
    arguments = {**arguments, key: value}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), updates,
                 _direct_update(factory, arguments))
  assert len(traces) == 1, f"{name} traced {len(traces)} times"


@pytest.mark.parametrize(("factory", "arguments", "integer"), [
    (samx.looksam, {"rho": 0.05, "k": 5}, "k"),
    (samx.saner, {"rho": 0.05, "warmup_steps": 2}, "warmup_steps"),
    (samx.sam, {"rho": 0.05, "group_size": 2}, "group_size"),
    (samx.ae_sam, {"rho": 0.05, "total_steps": 10}, "total_steps"),
])
def test_an_integer_option_must_be_static_and_the_error_says_how(factory, arguments, integer):
  with pytest.raises(samx.transforms.ArgumentError,
                     match=rf"`{integer}` is an integer .* static_args=\(\"{integer}\",\)"):
    optax.inject_hyperparams(factory)(**arguments).init(PARAMS)


def test_a_negative_injected_radius_is_caught_at_the_step():
  """Checked where concrete: a radius set in the state under jit makes the step non-finite
  (samx's rule: a NaN update, the state as it was), as a bad schedule value does."""
  tx = optax.inject_hyperparams(samx.sam)(rho=0.05)
  state = tx.init(PARAMS)
  state.hyperparams["rho"] = jnp.asarray(-1.0)
  updates, _ = jax.jit(lambda s: tx.update(OBJECTIVE.grad(PARAMS), s, PARAMS,
                                           objective=OBJECTIVE))(state)
  assert all(bool(jnp.all(jnp.isnan(leaf))) for leaf in jax.tree.leaves(updates))
  with pytest.raises(samx.transforms.ArgumentError, match="rho"):
    optax.inject_hyperparams(samx.sam)(rho=-1.0).init(PARAMS)


@pytest.mark.parametrize("wrap", [
    lambda tx: optax.masked(tx, {"w": True, "b": False}),
    lambda tx: optax.multi_transform({"sharp": tx, "plain": optax.sgd(0.1)},
                                     {"w": "sharp", "b": "plain"}),
])
@pytest.mark.parametrize("factory", [samx.sam, samx.saner, samx.looksam, samx.ae_sam])
def test_masked_and_multi_transform_are_refused_with_the_way_to_do_it(wrap, factory):
  arguments = {samx.saner: {"warmup_steps": 2}, samx.ae_sam: {"total_steps": 10}}.get(factory, {})
  tx = wrap(factory(0.05, **arguments))
  with pytest.raises(samx.transforms.ArgumentError, match="perturb_mask=mask.*optax.chain"):
    tx.update(OBJECTIVE.grad(PARAMS), tx.init(PARAMS), PARAMS, objective=OBJECTIVE)


def test_perturb_mask_then_multi_transform_is_the_way():
  """SAM perturbing ``w`` only, then each group its own optimizer: the order that works."""
  tx = optax.chain(samx.sam(0.05, perturb_mask={"w": True, "b": False}),
                   optax.multi_transform({"sgd": optax.sgd(0.1), "adam": optax.adam(0.01)},
                                         {"w": "sgd", "b": "adam"}))
  updates, _ = jax.jit(lambda s: tx.update(OBJECTIVE.grad(PARAMS), s, PARAMS,
                                           objective=OBJECTIVE))(tx.init(PARAMS))
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(updates))


def test_apply_if_finite_judges_what_it_is_given():
  """A finite gradient at ``w`` whose loss at ``w + eps`` overflows: around the whole chain,
  ``optax.apply_if_finite`` sees only the incoming (finite) gradient and lets the NaN update
  through; placed after samx, it sees samx's NaN update and skips the step."""
  params = jnp.asarray([1.0])
  # exp(40 w) is finite at w = 1 (about 2e17 in float32) and overflows at w + eps = 3.5.
  objective = samx.Objective(lambda w, x: jnp.exp(40.0 * (x @ w)), lambda out, y: out - y,
                             jnp.ones((2, 1)), jnp.zeros(2))
  grads = objective.grad(params)
  assert bool(jnp.all(jnp.isfinite(grads)))
  around = optax.apply_if_finite(optax.chain(samx.sam(2.5), optax.sgd(1e-20)), 3)
  after = optax.chain(samx.sam(2.5), optax.apply_if_finite(optax.sgd(1e-20), 3))
  updates, state = around.update(grads, around.init(params), params, objective=objective)
  assert bool(jnp.all(jnp.isnan(updates))) and int(state.notfinite_count) == 0
  updates, state = after.update(grads, after.init(params), params, objective=objective)
  assert bool(jnp.all(updates == 0)) and int(state[1].notfinite_count) == 1
