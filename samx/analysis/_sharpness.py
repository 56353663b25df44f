"""Sharpness: the m-sharpness of the loss and the top eigenvalue of its Hessian."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from samx.transforms import _tree
from samx.transforms._objective import Objective

PyTree = Any


def _project_to_ball(eps: PyTree, rho: float) -> PyTree:
  norm = _tree.global_norm(eps)
  return _tree.scale(jnp.minimum(1.0, rho / jnp.maximum(norm, 1e-30)), eps)


def _sharpness_of_group(objective: Objective, params: PyTree, rho: float,
                        ascent_steps: int) -> jax.Array:
  """``max_{||eps|| <= rho} L(w + eps) - L(w)``, estimated by normalised gradient ascent."""
  base = objective.loss(params)
  inverse, _ = _tree.safe_reciprocal(_tree.global_norm(objective.grad(params)))
  eps = _tree.scale(rho * inverse, objective.grad(params))  # the first-order maximiser
  step = rho / max(ascent_steps, 1)

  def ascend(eps, _):
    g = objective.grad(_tree.add(params, eps))
    inverse, _ = _tree.safe_reciprocal(_tree.global_norm(g))
    return _project_to_ball(_tree.add(eps, _tree.scale(step * inverse, g)), rho), None

  eps, _ = jax.lax.scan(ascend, eps, None, length=ascent_steps)
  return objective.loss(_tree.add(params, eps)) - base


def m_sharpness(objective: Objective, params: PyTree, rho: float, *, group_size: int | None = None,
                ascent_steps: int = 0) -> jax.Array:
  r"""m-sharpness (Foret et al.): the mean over groups of ``max_{|eps|<=rho} L_k(w+eps) - L_k(w)``.

  With ``ascent_steps=0`` the maximiser is its first-order estimate
  :math:`\epsilon = \rho g_k / \lVert g_k \rVert` (what SAM uses); with more, that point is
  improved by normalised gradient ascent projected on the ball. ``group_size=None`` takes the
  whole batch as one group. Pure and jittable.

  Args:
    objective: the model, the loss and the batch.
    params: the parameters :math:`w`.
    rho: the radius of the ball, a number >= 0.
    group_size: ``None`` (the whole batch) or the examples per group (``m``).
    ascent_steps: projected normalised ascent steps after the first-order estimate.

  Returns:
    The mean sharpness over groups, a scalar.
  """
  if group_size is None:
    return _sharpness_of_group(objective, params, rho, ascent_steps)
  groups = objective.split_into_groups(group_size)
  return jnp.mean(jax.vmap(lambda g: _sharpness_of_group(g, params, rho, ascent_steps))(groups))


def hessian_top_eigenvalue(objective: Objective, params: PyTree, *, key: jax.Array,
                           iterations: int = 50) -> jax.Array:
  r"""The largest-magnitude eigenvalue of the Hessian of the mean loss, by power iteration.

  Each iteration is one Hessian-vector product (forward-over-reverse differentiation, the cost
  of about two gradients); the estimate is the Rayleigh quotient :math:`v^\top H v` of the final
  unit vector. Pure and jittable.

  Args:
    objective: the model, the loss and the batch.
    params: the parameters at which the Hessian is taken.
    key: a PRNG key for the random starting vector.
    iterations: power-iteration steps.

  Returns:
    The eigenvalue estimate, a scalar.
  """
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  start = jax.tree.unflatten(treedef, [jax.random.normal(k, leaf.shape, leaf.dtype)
                                       for k, leaf in zip(keys, leaves, strict=True)])

  def hvp(vector):
    return jax.jvp(objective.grad, (params,), (vector,))[1]

  def normalise(vector):
    inverse, _ = _tree.safe_reciprocal(_tree.global_norm(vector))
    return _tree.scale(inverse, vector)

  def iterate(vector, _):
    return normalise(hvp(vector)), None

  vector, _ = jax.lax.scan(iterate, normalise(start), None, length=iterations)
  return _tree.vdot(vector, hvp(vector))
