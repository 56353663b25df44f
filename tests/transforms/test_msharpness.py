"""m-sharpness: per-group ascent steps, checked against SAM computed group by group by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import apply_once, asam_reference, sam_reference

import samx


def grouped_reference(problem, rho, group_size, reference=sam_reference, **kwargs):
  """The mean over groups of each group's own SAM gradient, one group at a time, in float64."""
  n = len(problem.y)
  per_group = [
      reference(lambda w, rows=slice(k, k + group_size): problem.grad(w, rows), problem.w, rho,
                **kwargs)
      for k in range(0, n, group_size)
  ]
  return np.mean(per_group, axis=0)


def test_group_size_equal_to_batch_is_plain_sam(logistic):
  objective = logistic.objective()
  plain, _ = apply_once(samx.sam(0.2), objective, logistic.w)
  grouped, _ = apply_once(samx.sam(0.2, group_size=len(logistic.y)), objective, logistic.w)
  np.testing.assert_allclose(grouped, plain, rtol=1e-5, atol=1e-6)


def test_group_size_one_is_the_mean_of_single_example_sam(logistic):
  rho = 0.3
  objective = logistic.objective()
  updates, _ = apply_once(samx.sam(rho, group_size=1), objective, logistic.w)
  np.testing.assert_allclose(updates, grouped_reference(logistic, rho, 1), rtol=1e-5, atol=1e-6)

  # ...and the same computed one example at a time with samx.sam on batches of one.
  one_by_one = [apply_once(samx.sam(rho), logistic.objective(slice(i, i + 1)), logistic.w)[0]
                for i in range(len(logistic.y))]
  np.testing.assert_allclose(updates, np.mean(one_by_one, axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_groups_of_m_match_the_reference(regression, group_size):
  updates, _ = apply_once(samx.sam(0.1, group_size=group_size), regression.objective(),
                          regression.w)
  np.testing.assert_allclose(updates, grouped_reference(regression, 0.1, group_size),
                             rtol=1e-5, atol=1e-6)


def test_adaptive_groups_match_the_reference(logistic):
  updates, _ = apply_once(samx.sam(0.2, adaptive=True, eta=0.05, group_size=4),
                          logistic.objective(), logistic.w)
  expected = grouped_reference(logistic, 0.2, 4, reference=asam_reference, eta=0.05)
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups_in_parallel", [1, 2, 8, 16])
def test_groups_in_parallel_changes_memory_not_the_result(logistic, groups_in_parallel):
  objective = logistic.objective()
  full, _ = apply_once(samx.sam(0.2, group_size=1), objective, logistic.w)
  chunked, _ = jax.jit(lambda o: apply_once(
      samx.sam(0.2, group_size=1, groups_in_parallel=groups_in_parallel), o, logistic.w))(
          objective)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)


def test_groups_in_parallel_must_divide_the_number_of_groups(logistic):
  with pytest.raises(ValueError, match="groups_in_parallel=3 must divide"):
    apply_once(samx.sam(0.2, group_size=2, groups_in_parallel=3), logistic.objective(),
               logistic.w)


def test_grouped_step_ignores_the_incoming_gradient(logistic):
  # With groups, every group's gradient is computed by the transform; the caller's is unused.
  objective = logistic.objective()
  params = jnp.asarray(logistic.w, jnp.float32)
  real, _ = apply_once(samx.sam(0.2, group_size=4), objective, params)
  junk, _ = apply_once(samx.sam(0.2, group_size=4), objective, params,
                       grads=jnp.full_like(params, jnp.nan))
  np.testing.assert_array_equal(real, junk)
