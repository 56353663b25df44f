"""Sharpness, Hessian eigenvalue, linear probes and SANER's group split, against direct math."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samx
from samx import analysis


def _quadratic(seed=0, n=20, d=6):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jnp.asarray(rng.normal(size=n), jnp.float32)
  objective = samx.Objective(lambda w, inputs: inputs @ w, lambda o, t: 0.5 * (o - t) ** 2, x, y)
  return objective, jnp.asarray(rng.normal(size=d), jnp.float32), np.asarray(x, np.float64)


@pytest.mark.slow  # a dense Hessian (the suite's time budget)
def test_hessian_top_eigenvalue_matches_eigvalsh_of_the_dense_hessian():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
  apply = lambda p, inputs: jnp.tanh(inputs @ p["a"]) @ p["b"]
  objective = samx.Objective(apply, optax.softmax_cross_entropy_with_integer_labels, x, labels)
  params = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  dense = jax.hessian(lambda w: objective.loss(unravel(w)))(flat)
  eigenvalues = np.linalg.eigvalsh(np.asarray(dense, np.float64))
  top = eigenvalues[np.argmax(np.abs(eigenvalues))]
  estimate = jax.jit(lambda p: analysis.hessian_top_eigenvalue(
      objective, p, key=jax.random.key(0), iterations=300))(params)
  assert float(estimate) == pytest.approx(top, rel=1e-3)


def test_m_sharpness_on_a_quadratic():
  # L(w + eps) - L(w) = g.eps + eps'A eps / 2. The first-order point gives
  # rho ||g|| + rho^2 g'Ag / (2 ||g||^2); ascent can only increase it, up to the true maximum.
  objective, w, x = _quadratic()
  rho = 0.5
  a = x.T @ x / len(x)
  g = np.asarray(objective.grad(w), np.float64)
  first_order = rho * np.linalg.norm(g) + rho**2 * g @ a @ g / (2 * g @ g)
  assert float(analysis.m_sharpness(objective, w, rho)) == pytest.approx(first_order, rel=1e-4)
  improved = float(analysis.m_sharpness(objective, w, rho, ascent_steps=20))
  # The exact maximum over the ball, by dense search over directions in the top eigenbasis.
  assert improved >= first_order - 1e-5
  upper = rho * np.linalg.norm(g) + rho**2 * np.linalg.eigvalsh(a).max() / 2
  assert improved <= upper + 1e-5


def test_m_sharpness_per_group_is_the_mean_of_the_groups():
  objective, w, _ = _quadratic()
  groups = [samx.Objective(objective.apply_fn, objective.loss_fn, objective.inputs[i:i + 5],
                           objective.targets[i:i + 5]) for i in range(0, 20, 5)]
  expected = np.mean([float(analysis.m_sharpness(g, w, 0.2)) for g in groups])
  assert float(analysis.m_sharpness(objective, w, 0.2, group_size=5)) == pytest.approx(
      expected, rel=1e-5)


def test_linear_probe_is_at_chance_on_noise_and_perfect_on_a_planted_feature():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 4000)
  noise = rng.normal(size=(4000, 32))
  planted = noise.copy()
  planted[:, :4] += 8.0 * np.eye(4)[labels]
  train, test = slice(0, 3000), slice(3000, 4000)
  chance = analysis.linear_probe_accuracy(noise[train], labels[train], noise[test],
                                          labels[test], num_classes=4)
  good = analysis.linear_probe_accuracy(planted[train], labels[train], planted[test],
                                        labels[test], num_classes=4)
  assert abs(float(chance) - 0.25) < 0.05
  assert float(good) > 0.99


def test_saner_group_split_against_a_direct_computation():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(24, 8)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, 24), jnp.float32)
  objective = samx.Objective(lambda w, inputs: jnp.tanh(inputs @ w) * 3.0,
                             lambda f, y: jnp.logaddexp(0.0, f) - y * f, x, labels)
  w = jnp.asarray(rng.normal(size=8), jnp.float32)
  noisy = np.arange(24) < 8
  split = analysis.saner_group_split(objective, w, 0.5, noisy)
  # Direct: per-example gradients, split by the mask; groups from the ratio by division.
  per_example = np.asarray(jax.vmap(lambda xi, yi: jax.grad(
      lambda p: objective.loss_fn(objective.apply_fn(p, xi[None]), yi[None])[0])(w))(x, labels))
  g_noisy = per_example[noisy].sum(0) / 24
  g_clean = per_example[~noisy].sum(0) / 24
  g = g_noisy + g_clean
  g_sam = np.asarray(objective.grad(w + 0.5 * g / np.linalg.norm(g)))
  r = g_sam / g
  groups = [~((r > 0) & (r < 1)) & ~(r <= 0), (r > 0) & (r < 1), r <= 0]
  np.testing.assert_allclose(split.fractions, [m.mean() for m in groups], atol=1e-6)
  for got, mask in zip(split.noisy_share, groups, strict=True):
    if mask.any():
      expected = np.abs(g_noisy[mask]).sum() / (np.abs(g_noisy[mask]) + np.abs(g_clean[mask])).sum()
      assert float(got) == pytest.approx(expected, rel=1e-4)
    else:
      assert np.isnan(float(got))


def test_linear_probe_dual_form_fits_the_same_ridge_probe_as_a_direct_solve():
  rng = np.random.default_rng(7)
  for n, d in ((40, 300), (300, 40)):  # dual (d > n) and primal forms
    features = rng.normal(size=(n + 200, d)).astype(np.float32)
    labels = rng.integers(0, 3, n + 200)
    l2 = 0.05
    train_x, test_x = features[:n].astype(np.float64), features[n:].astype(np.float64)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, x_test = (np.concatenate([(f - mean) / std, np.ones((len(f), 1))], 1)
                 for f in (train_x, test_x))
    weights = np.linalg.solve(x.T @ x + l2 * n * np.eye(d + 1), x.T @ np.eye(3)[labels[:n]])
    expected = np.mean(np.argmax(x_test @ weights, 1) == labels[n:])
    got = analysis.linear_probe_accuracy(features[:n], labels[:n], features[n:], labels[n:],
                                         num_classes=3, l2=l2)
    assert float(got) == pytest.approx(expected, abs=1.5 / 200)
