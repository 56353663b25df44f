"""samx.saner against SANER's rule written out with numpy division, and its beta schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import LinearRegression, LogisticRegression, apply_once, sam_reference
from hypothesis import given, settings
from hypothesis import strategies as st

import samx
from samx.transforms._combination import saner_reweighting


def saner_reference(g, g_variant, beta):
  """SANER from its definition: r = g_variant / g; scale group B (0 < r < 1) by beta."""
  with np.errstate(divide="ignore", invalid="ignore"):
    r = g_variant / g
  in_b = (r > 0) & (r < 1)
  in_c = r <= 0
  in_a = ~(in_b | in_c)  # r >= 1, and r = nan where g = g_variant = 0
  fractions = [np.mean(in_a), np.mean(in_b), np.mean(in_c)]
  return np.where(in_b, beta * g_variant, g_variant), fractions


@pytest.fixture
def wide_problem():
  # Enough parameters for all three groups to be populated.
  return LogisticRegression(n=32, d=40, seed=6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_saner_after_warmup_matches_reference(wide_problem, alpha):
  rho = 1.0
  p = wide_problem
  expected, fractions = saner_reference(p.grad(p.w), sam_reference(p.grad, p.w, rho), alpha)
  updates, state = apply_once(samx.saner(rho, alpha=alpha, warmup_steps=0), p.objective(), p.w)
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.group_fractions, fractions, atol=1e-6)
  assert min(fractions) > 0, "the test problem should populate groups A, B and C"
  assert float(state.beta) == pytest.approx(alpha)


def test_alpha_one_is_sam(wide_problem):
  objective = wide_problem.objective()
  sam_updates, _ = apply_once(samx.sam(0.3), objective, wide_problem.w)
  saner_updates, _ = apply_once(samx.saner(0.3, alpha=1.0, warmup_steps=0), objective,
                                wide_problem.w)
  np.testing.assert_allclose(saner_updates, sam_updates, rtol=1e-6, atol=1e-7)


def test_beta_goes_linearly_from_one_to_alpha_over_the_warmup(wide_problem):
  p = wide_problem
  rho, alpha, warmup = 0.5, 0.2, 4
  tx = samx.saner(rho, alpha=alpha, warmup_steps=warmup)
  objective = p.objective()
  params = jnp.asarray(p.w, jnp.float32)
  state = tx.init(params)
  g, g_sam = p.grad(p.w), sam_reference(p.grad, p.w, rho)
  for step in range(7):
    updates, state = tx.update(objective.grad(params), state, params, objective=objective)
    beta = 1.0 + (alpha - 1.0) * min(step / warmup, 1.0)
    assert float(state.beta) == pytest.approx(beta, abs=1e-6)
    np.testing.assert_allclose(updates, saner_reference(g, g_sam, beta)[0], rtol=1e-5,
                               atol=1e-6)


def test_beta_schedule_replaces_the_linear_warmup(wide_problem):
  p = wide_problem
  tx = samx.saner(0.5, beta_schedule=optax.constant_schedule(0.25))
  updates, _ = apply_once(tx, p.objective(), p.w)
  expected, _ = saner_reference(p.grad(p.w), sam_reference(p.grad, p.w, 0.5), 0.25)
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)


def test_saner_with_asam_takes_the_mask_on_the_asam_gradient(wide_problem):
  p = wide_problem
  rho, eta = 0.5, 0.1
  t = np.abs(p.w) + eta
  g = p.grad(p.w)
  g_asam = p.grad(p.w + rho * t * t * g / np.linalg.norm(t * g))
  updates, _ = apply_once(samx.saner(rho, alpha=0.5, warmup_steps=0, adaptive=True, eta=eta),
                          p.objective(), p.w)
  np.testing.assert_allclose(updates, saner_reference(g, g_asam, 0.5)[0], rtol=1e-5, atol=1e-6)


def test_saner_with_gsam_takes_the_mask_on_the_gsam_gradient(wide_problem):
  p = wide_problem
  rho, gsam_alpha = 0.5, 0.4
  g = p.grad(p.w)
  g_sam = sam_reference(p.grad, p.w, rho)
  g_gsam = g_sam - gsam_alpha * (g - (g @ g_sam) / (g_sam @ g_sam) * g_sam)
  tx = samx.saner(rho, alpha=0.5, warmup_steps=0, gsam_alpha=gsam_alpha)
  updates, _ = apply_once(tx, p.objective(), p.w)
  np.testing.assert_allclose(updates, saner_reference(g, g_gsam, 0.5)[0], rtol=1e-5, atol=1e-6)


def test_saner_with_groups_masks_the_mean_over_groups(wide_problem):
  p = wide_problem
  rho, m = 0.5, 8
  groups = [slice(k, k + m) for k in range(0, 32, m)]
  g = p.grad(p.w)
  g_msam = np.mean([sam_reference(lambda w, s=s: p.grad(w, s), p.w, rho) for s in groups], 0)
  updates, _ = apply_once(samx.saner(rho, alpha=0.5, warmup_steps=0, group_size=m),
                          p.objective(), p.w)
  np.testing.assert_allclose(updates, saner_reference(g, g_msam, 0.5)[0], rtol=1e-5, atol=1e-6)


def test_components_with_zero_gradient_are_group_a_and_finite():
  # The third input column is all zeros, so g and g_sam are exactly zero there.
  problem = LinearRegression(n=8, d=3, seed=2)
  problem.x[:, 2] = 0.0
  updates, state = apply_once(samx.saner(0.5, alpha=0.5, warmup_steps=0), problem.objective(),
                              problem.w)
  assert np.all(np.isfinite(updates))
  assert float(updates[2]) == 0.0
  total = sum(float(f) for f in state.group_fractions)
  assert total == pytest.approx(1.0)
  assert float(state.group_fractions.a) >= 1 / 3


def test_untracked_groups_give_the_same_update_and_no_fractions(wide_problem):
  objective = wide_problem.objective()
  tracked, tracked_state = apply_once(samx.saner(1.0, warmup_steps=0), objective, wide_problem.w)
  untracked, state = apply_once(samx.saner(1.0, warmup_steps=0, track_groups=False), objective,
                                wide_problem.w)
  np.testing.assert_array_equal(untracked, tracked)
  assert float(tracked_state.group_fractions.b) > 0
  assert [float(f) for f in state.group_fractions] == [0.0, 0.0, 0.0]


def test_initial_state_reports_no_groups_yet():
  tx = samx.saner(0.1, warmup_steps=5)
  state = tx.init(jnp.zeros(3))
  assert float(state.beta) == 1.0
  assert [float(f) for f in state.group_fractions] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "`warmup_steps` is required"),
        ({"warmup_steps": -1}, "`warmup_steps`"),
        ({"warmup_steps": 1.5}, "`warmup_steps`"),
        ({"warmup_steps": 5, "alpha": -0.1}, "`alpha`"),
        ({"warmup_steps": 5, "beta_schedule": lambda t: 0.5}, "not both"),
        ({"beta_schedule": 0.5}, "`beta_schedule`"),
        ({"warmup_steps": 5, "gsam_alpha": -1.0}, "`gsam_alpha`"),
        ({"warmup_steps": 5, "rho": -1.0}, "`rho`"),
        ({"warmup_steps": 5, "track_groups": "yes"}, "`track_groups`"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
  kwargs = {"rho": 0.1, **kwargs}
  with pytest.raises(ValueError, match=match):
    samx.saner(**kwargs)


# One compilation per list length instead of one per operation and length (eager dispatch).
JITTED_REWEIGHTING = jax.jit(saner_reweighting)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from([0.0, 1.0, -1.0, 0.5, -2.0, 1e-30, 3.0]),
                  st.sampled_from([0.0, 1.0, -1.0, 0.25, -0.5, 2.0, 1e-30])),
        min_size=1, max_size=24),
    beta=st.floats(0.0, 1.0, width=32, allow_subnormal=False),
)
def test_reweighting_rule_matches_the_ratio_definition(pairs, beta):
  # Any pair (g, g_variant), zeros and ties included, against r = g_variant / g by division.
  g = np.array([p[0] for p in pairs], np.float32)
  v = np.array([p[1] for p in pairs], np.float32)
  expected, fractions = saner_reference(g.astype(np.float64), v.astype(np.float64), beta)
  updates, got = JITTED_REWEIGHTING({"w": jnp.asarray(g)}, {"w": jnp.asarray(v)},
                                    jnp.float32(beta))
  # XLA flushes subnormal products to zero, hence the tiny atol.
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-6, atol=1e-37)
  np.testing.assert_allclose(got, fractions, atol=1e-6)
