"""Several ascent steps and any optax optimizer as the ascent step, against loops written from the
definition in float64 numpy, and against optax.contrib.sam."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import LinearRegression

import samx
from samx.transforms import ArgumentError

RHO = 0.1


def split(w):
  return {"a": jnp.asarray(w[:3], jnp.float32), "b": jnp.asarray(w[3:], jnp.float32)}


def objective_of(problem, rows=slice(None)):
  x = jnp.asarray(problem.x[rows], jnp.float32)
  y = jnp.asarray(problem.y[rows], jnp.float32)
  return samx.Objective(lambda p, x: x[:, :3] @ p["a"] + x[:, 3:] @ p["b"],
                        lambda out, t: 0.5 * (out - t) ** 2, x, y)


def adam_directions():
  """Adam's ascent direction -u from a fresh state, step by step (optax.adam(1.0)'s update)."""
  b1, b2, eps = 0.9, 0.999, 1e-8
  m = v = 0.0
  t = 0

  def direction(g):
    nonlocal m, v, t
    t += 1
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)

  return direction


def reference(grad, w, *, steps, adam=False, mask=None, eta=None):
  """grad L(w + eps) with eps from ``steps`` ascent steps, as the docstring of samx.sam says."""
  mask = np.ones_like(w, bool) if mask is None else mask
  t = np.ones_like(w) if eta is None else np.abs(w) + eta
  direction_of = adam_directions() if adam else (lambda g: g)
  eps = np.zeros_like(w)
  g = grad(w)
  for _ in range(steps):
    d = np.where(mask, direction_of(g), 0.0)
    eps = eps + RHO * t * t * d / np.linalg.norm(t * d)
    g = grad(w + eps)
  return g


CASES = {
    "sam": ({}, {}),
    "asam": ({"adaptive": True}, {"eta": 0.01}),
    "masked": ({"perturb_mask": {"a": True, "b": False}},
               {"mask": np.array([True] * 3 + [False] * 2)}),
}


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("adam", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_ascent_steps_and_optimizer_match_the_definition(steps, adam, case):
  problem = LinearRegression()
  options, reference_options = CASES[case]
  tx = samx.sam(RHO, ascent_steps=steps, ascent_optimizer=optax.adam(1.0) if adam else None,
                **options)
  params = split(problem.w)
  obj = objective_of(problem)
  updates, _ = jax.jit(lambda p: tx.update(obj.grad(p), tx.init(p), p, objective=obj))(params)
  expected = reference(problem.grad, problem.w, steps=steps, adam=adam, **reference_options)
  got = np.concatenate([updates["a"], updates["b"]])
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("adam", [False, True])
def test_ascent_under_m_sharpness_is_per_group(adam):
  problem = LinearRegression()
  tx = samx.sam(RHO, group_size=4, ascent_steps=2,
                ascent_optimizer=optax.adam(1.0) if adam else None)
  params = split(problem.w)
  obj = objective_of(problem)
  updates, _ = jax.jit(lambda p: tx.update(obj.grad(p), tx.init(p), p, objective=obj))(params)
  groups = [reference(lambda w, k=k: problem.grad(w, slice(4 * k, 4 * k + 4)), problem.w,
                      steps=2, adam=adam) for k in range(4)]
  np.testing.assert_allclose(np.concatenate([updates["a"], updates["b"]]),
                             np.mean(groups, axis=0), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_ascent_steps_equal_optax_contrib_sam(steps):
  problem = LinearRegression()
  obj = objective_of(problem)
  params = split(problem.w)
  outer = optax.sgd(0.05)
  contrib = optax.contrib.sam(outer, optax.chain(optax.contrib.normalize(), optax.sgd(RHO)),
                              sync_period=steps + 1, opaque_mode=True)
  expected, _ = contrib.update(obj.grad(params), contrib.init(params), params,
                               grad_fn=lambda p, _: obj.grad(p))
  ours = optax.chain(samx.sam(RHO, ascent_steps=steps), outer)
  got, _ = ours.update(obj.grad(params), ours.init(params), params, objective=obj)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_every_transform_takes_the_ascent_options():
  problem = LinearRegression()
  obj = objective_of(problem)
  params = split(problem.w)
  # one of each code path: the shared transform (SAM, L-SAM, SANER), LookSAM, AE-SAM
  for make in (samx.sam, samx.logit_sam,
               lambda rho, **kw: samx.saner(rho, warmup_steps=2, **kw),
               lambda rho, **kw: samx.looksam(rho, k=1, **kw),
               lambda rho, **kw: samx.ae_sam(rho, threshold=lambda c: -1e9, **kw)):
    tx = make(RHO, ascent_steps=2, ascent_optimizer=optax.sgd(1.0))
    updates, _ = jax.jit(lambda p, tx=tx: tx.update(obj.grad(p), tx.init(p), p,
                                                    objective=obj))(params)
    # optax.sgd(1.0)'s negated update is the gradient: the same as no optimizer
    plain = make(RHO, ascent_steps=2)
    expected, _ = plain.update(obj.grad(params), plain.init(params), params, objective=obj)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bad_ascent_options_are_named():
  with pytest.raises(ArgumentError, match="ascent_steps"):
    samx.sam(RHO, ascent_steps=0)
  with pytest.raises(ArgumentError, match="ascent_optimizer.*GradientTransformation"):
    samx.sam(RHO, ascent_optimizer="adam")
