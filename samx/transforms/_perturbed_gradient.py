"""How the gradient at the perturbed point is formed: whole batch or per group (m-sharpness)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp

from samx.transforms import _tree
from samx.transforms._objective import Objective, as_varying
from samx.transforms._perturbation import Perturbation

PyTree = Any
# (objective, params, eps) -> the gradient that stands in for grad L(w + eps).
GradientAt = Callable[[Objective, PyTree, PyTree], PyTree]


def full_gradient_at(objective: Objective, params: PyTree, eps: PyTree) -> PyTree:
  """``grad L(w + eps)``: the whole gradient at the perturbed point (SAM, ASAM, GSAM, SANER)."""
  return objective.grad(_tree.add(params, eps))


def _mean_over_groups(
    group_fn: Callable[[Objective], PyTree], grouped: Objective, groups_in_parallel: int | None
) -> PyTree:
  """The mean of ``group_fn`` over axis 0 of ``grouped``, vmapped ``groups_in_parallel`` at a time.

  All groups at once is one batched computation whose memory holds one gradient per group;
  fewer at a time runs a ``lax.scan`` over chunks of groups, holding one gradient per group of
  a chunk and a float32 running sum.
  """
  num_groups = jax.tree.leaves(grouped)[0].shape[0]
  if groups_in_parallel is None or groups_in_parallel >= num_groups:
    return _tree.mean(jax.vmap(group_fn)(grouped))
  if num_groups % groups_in_parallel:
    raise ValueError(
        f"groups_in_parallel={groups_in_parallel} must divide the number of groups "
        f"({num_groups} = batch / group_size).")
  num_chunks = num_groups // groups_in_parallel
  chunked = jax.tree.map(
      lambda x: jnp.reshape(x, (num_chunks, groups_in_parallel, *x.shape[1:])), grouped)
  one_group = jax.eval_shape(group_fn, jax.tree.map(lambda x: x[0], grouped))

  def add_chunk(total, chunk):
    results = jax.vmap(group_fn)(chunk)
    return jax.tree.map(lambda t, r: t + jnp.sum(r.astype(jnp.float32), axis=0), total,
                        results), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), one_group)
  total, _ = jax.lax.scan(add_chunk, zeros, chunked)
  return jax.tree.map(lambda t, s: (t / num_groups).astype(s.dtype), total, one_group)


def clean_and_perturbed_gradients(
    objective: Objective,
    params: PyTree,
    grads: PyTree,
    rho: jax.Array,
    *,
    perturbation: Perturbation,
    gradient_at: GradientAt = full_gradient_at,
    group_size: int | None = None,
    groups_in_parallel: int | None = None,
    axis_name: Hashable | None = None,
) -> tuple[PyTree, PyTree]:
  """The clean gradient ``g`` and the perturbed gradient ``g_sam`` of one sharpness-aware step.

  With ``group_size=None`` the whole batch is one group: ``eps = perturbation(g)`` with ``g``
  the incoming ``grads`` (so the step costs one more gradient evaluation), and
  ``g_sam = gradient_at(objective, params, eps)``. With ``group_size=m`` the batch is split into
  groups of ``m`` examples; each group ``k`` gets its own gradient ``g_k`` and
  ``eps_k = perturbation(g_k)``, and ``g`` and ``g_sam`` are the means over groups of ``g_k`` and
  of ``gradient_at(objective_k, params, eps_k)``. The groups are vmapped, so the cost is that of
  two batched gradient evaluations; the incoming ``grads`` are then not needed (their mean is
  ``g``), and under ``jax.jit`` XLA drops the caller's backward pass if nothing else uses it.

  With ``axis_name``, ``g`` and ``g_sam`` are averaged over that mapped axis (``pmap``,
  ``shard_map``): without groups, ``eps`` then comes from the global-batch gradient; with groups,
  the groups are those of each device's own batch. The incoming ``grads`` may be each device's
  local gradient or already the global one (averaging is then a no-op); under ``shard_map``
  compute them with ``objective.value_and_grad(params, axis_name=...)``.
  """
  if axis_name is None:
    pmean, local_params = (lambda tree: tree), params
  else:
    # Differentiate per device, then average explicitly (see `as_varying`).
    pmean, local_params = (lambda tree: jax.lax.pmean(tree, axis_name)), as_varying(
        params, axis_name)
  if group_size is None:
    clean = pmean(grads)
    eps = perturbation(clean, params, rho)
    return clean, pmean(gradient_at(objective, local_params, eps))

  def group_gradients(group: Objective) -> tuple[PyTree, PyTree]:
    group_clean = group.grad(local_params)
    group_eps = perturbation(group_clean, local_params, rho)
    return group_clean, gradient_at(group, local_params, group_eps)

  clean, perturbed = _mean_over_groups(
      group_gradients, objective.split_into_groups(group_size), groups_in_parallel)
  return pmean(clean), pmean(perturbed)
