"""How the ascent step eps is chosen from a gradient: SAM's and ASAM's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from samx.transforms import _tree

PyTree = Any
# (grads, params, rho) -> eps, a pytree like params.
Perturbation = Callable[[PyTree, PyTree, jax.Array], PyTree]


def _step_of_length(rho: jax.Array, direction: PyTree, norm: jax.Array) -> PyTree:
  """``rho * direction / norm``, or zeros where ``norm`` is zero or not finite."""
  inverse, ok = _tree.safe_reciprocal(norm)
  factor = rho * inverse
  return jax.tree.map(lambda d: jnp.where(ok, factor * d, 0.0).astype(d.dtype), direction)


def sam_perturbation(grads: PyTree, params: PyTree, rho: jax.Array) -> PyTree:
  """SAM's ascent step ``eps = rho * g / ||g||``; zero if ``||g||`` is 0 or inf."""
  del params
  return _step_of_length(rho, grads, _tree.global_norm(grads))


def asam_perturbation(eta: float) -> Perturbation:
  """ASAM's ascent step ``eps = rho * T^2 g / ||T g||``, ``T = |w| + eta`` (Kwon et al. 2021)."""

  def perturb(grads: PyTree, params: PyTree, rho: jax.Array) -> PyTree:
    scale_w = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
    scaled_grads = optax.tree_utils.tree_mul(scale_w, grads)
    direction = optax.tree_utils.tree_mul(scale_w, scaled_grads)
    return _step_of_length(rho, direction, _tree.global_norm(scaled_grads))

  return perturb
