"""GSAM: SAM plus a descent step on the surrogate gap, as one optax transform."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import optax

from samx.transforms._arguments import check_number
from samx.transforms._combination import gsam_combination
from samx.transforms._masks import Mask
from samx.transforms._sharpness_aware import (
    Combination,
    SAMOptions,
    SAMState,
    ScalarOrSchedule,
    sharpness_aware_transform,
    value_at,
)

PyTree = Any

#: An alias of :class:`SAMState`, kept for compatibility: :func:`gsam` keeps the same state as
#: :func:`samx.sam` (the step count), so ``samx.GSAMState`` is ``samx.SAMState``.
GSAMState = SAMState


def gsam(
    rho: ScalarOrSchedule,
    alpha: ScalarOrSchedule,
    *,
    combine_per_group: bool = False,
    adaptive: bool = False,
    eta: float = 0.01,
    group_size: int | None = None,
    groups_in_parallel: int | None = None,
    groups_unroll: int | bool = True,
    axis_name: Hashable | None = None,
    perturb_mask: Mask = None,
    adaptive_mask: Mask = None,
    group_path: str = "layers",
    ascent_steps: int | None = None,
    ascent_optimizer: optax.GradientTransformation | None = None,
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
  ``g_sam`` are the means over groups, unless ``combine_per_group=True``: then the rule is
  applied to each group's :math:`g_k` and :math:`g_{sam,k}` and the updates are averaged,
  :math:`\frac1K \sum_k (g_{sam,k} - \alpha\, g_{\perp,k})`. That is the GSAM authors' and
  big_vision's per-device rule when ``group_size`` is the per-device batch (each device's groups
  under ``axis_name``).

  Args:
    rho: the ascent radius, a number >= 0 or an optax schedule of the step count.
    alpha: the weight of the surrogate-gap descent, a number >= 0 or a schedule.
    combine_per_group: apply the rule to each group before averaging (needs ``group_size``).
    adaptive, eta, group_size, groups_in_parallel, groups_unroll, group_path: as in
      :func:`samx.sam`.
    axis_name, perturb_mask, adaptive_mask: as in :func:`samx.sam`.
    ascent_steps, ascent_optimizer: the ascent, as in :func:`samx.sam`.

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
  name = "samx.gsam"
  check_number("alpha", alpha, transform=name)

  def rule(clean: PyTree, perturbed: PyTree, state: SAMState) -> tuple[PyTree, None]:
    return gsam_combination(clean, perturbed, value_at(alpha, state.count)), None

  options = SAMOptions(adaptive, eta, group_size, groups_in_parallel, groups_unroll, axis_name,
                       perturb_mask, adaptive_mask, group_path, ascent_steps,
                       ascent_optimizer)
  return sharpness_aware_transform(name, rho, options, combination=Combination(SAMState, rule),
                                   combine_per_group=combine_per_group)
