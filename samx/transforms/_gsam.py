"""GSAM: SAM plus a descent step on the surrogate gap, as one optax transform."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samx.transforms._combination import gsam_combination
from samx.transforms._objective import Objective
from samx.transforms._sharpness_aware import (
    ScalarOrSchedule,
    check_number,
    next_count,
    sharpness_aware_gradient,
    value_at,
)

PyTree = Any


class GSAMState(NamedTuple):
  """State of :func:`gsam`.

  Attributes:
    count: the number of updates taken so far (int32); schedules are evaluated at it.
  """

  count: jax.Array


def gsam(
    rho: ScalarOrSchedule,
    alpha: ScalarOrSchedule,
    *,
    adaptive: bool = False,
    eta: float = 0.01,
    group_size: int | None = None,
    groups_in_parallel: int | None = None,
    groups_unroll: int | bool = True,
    axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate Gap Guided SAM: SAM's gradient minus ``alpha`` times the clean gradient's residual.

  GSAM (Zhuang et al. 2022) minimises the perturbed loss :math:`L(w + \epsilon)` and, without
  disturbing that, the surrogate gap :math:`h = L(w + \epsilon) - L(w)`. With
  :math:`g = \nabla L(w)` and :math:`g_{sam} = \nabla L(w + \epsilon)` (``eps`` as in
  :func:`samx.sam`), the clean gradient splits into a part parallel to :math:`g_{sam}` and a
  part orthogonal to it, and the update subtracts the orthogonal part:

  .. math::
    g_\perp = g - \frac{\langle g, g_{sam}\rangle}{\lVert g_{sam}\rVert^2} g_{sam}, \qquad
    \text{update} = g_{sam} - \alpha\, g_\perp.

  ``alpha = 0`` is SAM. The paper schedules ``rho`` with the learning rate; pass an optax
  schedule for that. Same options and costs as :func:`samx.sam`; with ``group_size``, ``g`` and
  ``g_sam`` are the means over groups.

  Args:
    rho: the ascent radius, a number >= 0 or an optax schedule of the step count.
    alpha: the weight of the surrogate-gap descent, a number >= 0 or a schedule.
    adaptive: use ASAM's ascent step (``T = |w| + eta``).
    eta: ASAM's offset.
    group_size: examples per group for m-sharpness (``None``: the whole batch).
    groups_in_parallel: with ``group_size``, how many groups are vmapped at once.
    groups_unroll: the ``unroll`` of the scan over chunks of groups (see :func:`samx.sam`).
    axis_name: the ``pmap``/``shard_map`` axis to average the gradients over.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``objective=`` in ``update``.

  References:
    Zhuang et al., `Surrogate Gap Minimization Improves Sharpness-Aware Training
    <https://arxiv.org/abs/2203.08065>`_, ICLR 2022.

  Example:
    >>> import jax.numpy as jnp, optax, samx
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, inputs: inputs @ w,
    ...     loss_fn=lambda out, targets: 0.5 * (out - targets) ** 2,
    ...     inputs=jnp.array([[1.0, 2.0], [3.0, -1.0]]), targets=jnp.array([1.0, 0.0]))
    >>> tx = samx.gsam(rho=0.1, alpha=0.5)
    >>> params = jnp.array([0.5, 0.5])
    >>> grads = objective.grad(params)
    >>> updates, _ = tx.update(grads, tx.init(params), params, objective=objective)
    >>> updates.shape
    (2,)
  """
  check_number("alpha", alpha, transform="samx.gsam")
  sharpness_aware = sharpness_aware_gradient(
      "samx.gsam", rho, adaptive=adaptive, eta=eta, group_size=group_size,
      groups_in_parallel=groups_in_parallel, groups_unroll=groups_unroll,
      axis_name=axis_name)

  def init_fn(params: PyTree) -> GSAMState:
    del params
    return GSAMState(count=jnp.zeros([], jnp.int32))

  def update_fn(
      updates: PyTree, state: GSAMState, params: PyTree | None = None, *,
      objective: Objective | None = None, **extra_args: Any,
  ) -> tuple[PyTree, GSAMState]:
    del extra_args
    clean, perturbed = sharpness_aware(updates, params, objective, state.count)
    combined = gsam_combination(clean, perturbed, value_at(alpha, state.count))
    return combined, GSAMState(count=next_count(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
