"""How the ascent step eps is chosen from a gradient: SAM's and ASAM's, on all or some leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from samx.transforms import _masks, _tree

PyTree = Any
# (grads, params, rho) -> eps, a pytree like params.
Perturbation = Callable[[PyTree, PyTree, jax.Array | float], PyTree]


def _step_of_length(rho: jax.Array | float, direction: PyTree, norm: jax.Array) -> PyTree:
  """``rho * direction / norm``, or zeros where ``norm`` is zero or not finite."""
  inverse, ok = _tree.safe_reciprocal(norm)
  factor = rho * inverse
  return jax.tree.map(lambda d: jnp.where(ok, factor * d, 0.0).astype(d.dtype), direction)


def sam_perturbation(grads: PyTree, params: PyTree, rho: jax.Array | float) -> PyTree:
  """SAM's ascent step ``eps = rho * g / ||g||``; zero if ``||g||`` is 0 or inf."""
  del params
  return _step_of_length(rho, grads, _tree.global_norm(grads))


def asam_perturbation(eta: float, scaled: list[bool] | None = None) -> Perturbation:
  """ASAM's ascent step ``eps = rho * T^2 g / ||T g||``, ``T = |w| + eta`` (Kwon et al. 2021).

  ``scaled`` marks the leaves (in ``jax.tree.leaves`` order) that get that ``T``; the others
  get ``T = 1``, as the ASAM authors' code does for biases. ``None``: every leaf.
  """

  def perturb(grads: PyTree, params: PyTree, rho: jax.Array | float) -> PyTree:
    flags = scaled if scaled is not None else [True] * len(jax.tree.leaves(params))
    grad_leaves, treedef = jax.tree.flatten(grads)
    scale_w = [jnp.abs(w) + eta if flag else None
               for w, flag in zip(jax.tree.leaves(params), flags, strict=True)]
    scaled_grads = [g if t is None else t * g for g, t in zip(grad_leaves, scale_w, strict=True)]
    direction = [g if t is None else t * g for g, t in zip(scaled_grads, scale_w, strict=True)]
    eps = _step_of_length(rho, direction, _tree.global_norm(scaled_grads))
    return jax.tree.unflatten(treedef, eps)

  return perturb


def masked_perturbation(perturbation: Perturbation, perturbed: list[bool] | None
                        ) -> Perturbation:
  """``perturbation`` restricted to the leaves ``perturbed`` marks (``None``: every leaf).

  The ascent step is formed from those leaves alone (they alone count in its norm) and is zero
  on the others, so ``w + eps`` moves only the selected parameters (SAM-ON's rule when they
  are the normalization layers'; Mueller et al. 2023).
  """
  if perturbed is None:
    return perturbation

  def perturb(grads: PyTree, params: PyTree, rho: jax.Array | float) -> PyTree:
    eps = perturbation(_masks.select(grads, perturbed), _masks.select(params, perturbed), rho)
    return _masks.fill(grads, perturbed, eps)

  return perturb


# (gradient_at, grads, params, rho) -> eps: several ascent steps, with gradient_at(eps) the
# gradient of the loss at params + eps and grads the gradient at params.
Ascent = Callable[[Callable[[PyTree], PyTree], PyTree, PyTree, jax.Array | float], PyTree]


def iterated_ascent(perturbation: Perturbation, steps: int = 1,
                    optimizer: Any = None) -> Ascent:
  r"""``steps`` ascent steps, each ``perturbation``'s rule applied at the point reached so far.

  With :math:`g_0 = \nabla L(w)` and :math:`\epsilon_0 = 0`,

  .. math::
    d_i = g_i \ \text{or}\ -u_i, \quad \epsilon_{i+1} = \epsilon_i + P(d_i), \quad
    g_{i+1} = \nabla L(w + \epsilon_{i+1}),

  with :math:`P` the perturbation (SAM's :math:`\rho d / \lVert d \rVert`, ASAM's with
  :math:`T` of :math:`w`, masked), and, with an ``optimizer``, :math:`u_i` its update of
  :math:`g_i` at :math:`w + \epsilon_i` (the descent convention of optax, negated into an
  ascent direction as ``optax.contrib.sam`` does with its ``adv_optimizer``), its state
  initialised afresh at every call. One step without an optimizer is ``perturbation`` itself.
  """

  def ascend(gradient_at: Callable[[PyTree], PyTree], grads: PyTree, params: PyTree,
             rho: jax.Array | float) -> PyTree:
    state = None if optimizer is None else optimizer.init(params)
    eps = None
    for step in range(steps):
      direction = grads
      if optimizer is not None:
        at = params if eps is None else _tree.add(params, eps)
        update, state = optimizer.update(grads, state, at)
        direction = jax.tree.map(lambda u, g: (-u).astype(g.dtype), update, grads)
      move = perturbation(direction, params, rho)
      eps = move if eps is None else jax.tree.map(jnp.add, eps, move)
      if step + 1 < steps:
        grads = gradient_at(eps)
    return eps

  return ascend
