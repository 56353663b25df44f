"""The logit/Jacobian decomposition of the perturbed gradient (Baek, Kolter & Raghunathan 2024).

For a per-example loss of the model's outputs, the gradient is ``J(w)^T r(f(w))``: the network
Jacobian ``J`` times the *logit term* ``r = d loss / d outputs`` (for cross-entropy,
``softmax(f) - onehot(y)``). SAM evaluates both at ``w + eps``; L-SAM perturbs only the logit
term, J-SAM only the Jacobian. Both are written as surrogate losses ``<stop_gradient(r), f>``
whose gradient is the wanted product, so they plug into the same machinery as SAM (groups,
devices) through ``PerturbedLoss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from samx.transforms import _tree
from samx.transforms._objective import Objective

PyTree = Any
ApplyFn = Callable[[PyTree, PyTree], PyTree]


def _logit_term(objective: Objective, outputs: PyTree) -> PyTree:
  """``d mean-loss / d outputs`` at ``outputs``, held fixed (the residual of every example)."""
  cotangent = jax.grad(lambda out: objective.losses_from_outputs(out).mean())(outputs)
  return jax.lax.stop_gradient(cotangent)


def logit_perturbed_loss(objective: Objective, params: PyTree, apply_perturbed: ApplyFn
                         ) -> jax.Array:
  """L-SAM's surrogate ``<r(f(w + eps)), f(w)>``: its gradient is ``J(w)^T r(f(w + eps))``.

  ``apply_perturbed(params, inputs)`` is the model at ``params + eps``.
  """
  perturbed_outputs = apply_perturbed(params, objective.model_inputs)
  residual = _logit_term(objective, jax.lax.stop_gradient(perturbed_outputs))
  return _tree.vdot(residual, objective.apply(params))


def jacobian_perturbed_loss(objective: Objective, params: PyTree, apply_perturbed: ApplyFn
                            ) -> jax.Array:
  """J-SAM's surrogate ``<r(f(w)), f(w + eps)>``: its gradient is ``J(w + eps)^T r(f(w))``.

  ``f(w)`` is ``objective.outputs`` when the caller provides it, else one more forward pass.
  """
  clean_outputs = objective.outputs
  if clean_outputs is None:
    clean_outputs = objective.apply(params)
  clean_outputs = jax.lax.stop_gradient(clean_outputs)
  residual = _logit_term(objective, clean_outputs)
  return _tree.vdot(residual, apply_perturbed(params, objective.model_inputs))
