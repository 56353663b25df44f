"""LookSAM: the perturbed gradient every k steps, its new direction reused in between."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samx.transforms import _tree
from samx.transforms._arguments import check_count, check_number
from samx.transforms._canonical_convolutions import with_canonical_convolutions
from samx.transforms._masks import Mask
from samx.transforms._objective import Objective
from samx.transforms._perturbed_gradient import global_gradient
from samx.transforms._sharpness_aware import (
  SAMOptions,
  ScalarOrSchedule,
  check_options,
  check_update_arguments,
  nonfinite_rule,
  sharpness_aware_gradients,
  valid_radius,
  value_at,
)

PyTree = Any


class LookSAMState(NamedTuple):
  """State of :func:`looksam`.

  Attributes:
    count: the number of updates taken so far (int32); the perturbed gradient is evaluated at
      the steps where ``count % k == 0``.
    orthogonal_gradient: :math:`g_v`, the part of the last perturbed gradient orthogonal to the
      clean gradient of its step (zeros before the first update).
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)
  orthogonal_gradient: PyTree


def negligible_fraction(tree: PyTree) -> float:
  """How small ``||g_v|| / ||g_s||`` must be for ``g_v`` to count as zero: the square root of
  the machine epsilon of the accumulation dtype (3.5e-4 in float32). Below it the direction of
  ``g_v`` is that of rounding errors (two evaluations of the same gradient differ by about
  ``eps ||g||``), not of the loss's curvature."""
  return math.sqrt(float(jnp.finfo(_tree.accumulation_dtype(jax.tree.leaves(tree))).eps))


def orthogonal_part(perturbed: PyTree, clean: PyTree) -> PyTree:
  """``g_s - (<g, g_s> / ||g||^2) g``: the part of ``perturbed`` orthogonal to ``clean`` (all of
  ``perturbed`` if ``clean`` is zero), or zero if it is negligible against ``g_s`` (see
  :func:`negligible_fraction`).

  The projection is formed from both gradients divided by their largest magnitude, so it is
  finite for any finite gradients (``||g||^2`` of a gradient of ``1e30`` per element is not).
  """
  leaves = jax.tree.leaves((clean, perturbed))
  if not leaves:
    return perturbed
  dtype = _tree.accumulation_dtype(leaves)
  inverse_scale, _ = _tree.safe_reciprocal(_tree.max_magnitude(leaves, dtype))
  scaled_clean = _tree.scale(inverse_scale, jax.tree.map(lambda g: g.astype(dtype), clean))
  scaled_perturbed = _tree.scale(inverse_scale,
                                 jax.tree.map(lambda s: s.astype(dtype), perturbed))
  inverse_norm, _ = _tree.safe_reciprocal(_tree.global_norm(scaled_clean))
  projection = _tree.vdot(scaled_clean, scaled_perturbed) * jnp.square(inverse_norm)
  scaled_orthogonal = jax.tree.map(lambda s, g: s - projection * g, scaled_perturbed,
                                   scaled_clean)
  kept = (_tree.global_norm(scaled_orthogonal)
          > negligible_fraction(perturbed) * _tree.global_norm(scaled_perturbed))
  return jax.tree.map(lambda s, g: jnp.where(kept, s - projection * g.astype(dtype), 0.0
                                             ).astype(s.dtype), perturbed, clean)


def reuse_orthogonal_part(clean: PyTree, orthogonal: PyTree, alpha: jax.Array | float
                          ) -> PyTree:
  """``g + alpha (||g|| / ||g_v||) g_v``: LookSAM's update between perturbed gradients (``g``
  if ``g_v`` is zero). The norms are formed without overflow
  (:func:`samx.transforms._tree.stable_global_norm`)."""
  inverse_norm, _ = _tree.safe_reciprocal(_tree.stable_global_norm(orthogonal))
  factor = alpha * _tree.stable_global_norm(clean) * inverse_norm
  return jax.tree.map(lambda g, v: (g + factor * v).astype(g.dtype), clean, orthogonal)


def looksam(
    rho: ScalarOrSchedule,
    *,
    k: int = 5,
    alpha: ScalarOrSchedule = 0.7,
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
  r"""LookSAM: SAM's second gradient once every ``k`` steps (Liu et al. 2022, Algorithm 1).

  On the steps :math:`t` with :math:`t \bmod k = 0` (the first step is one), LookSAM is SAM:
  with :math:`g = \nabla L(w)`, :math:`g_s = \nabla L(w + \rho g / \lVert g \rVert)` is the
  update, and the part of :math:`g_s` orthogonal to :math:`g`,

  .. math::
    g_v = g_s - \frac{\langle g, g_s \rangle}{\lVert g \rVert^2}\, g,

  is kept in the state. On the other steps the second gradient is not evaluated, and the
  update is the clean gradient plus the kept direction, rescaled to the current gradient:

  .. math::
    \text{update} = g + \alpha \frac{\lVert g \rVert}{\lVert g_v \rVert}\, g_v.

  The branch is a ``jax.lax.cond`` on the step count, so XLA runs only the chosen one: over
  ``k`` steps the cost is about ``1 + 1/k`` gradient evaluations per step (under ``jax.vmap``
  of the whole update a ``cond`` becomes a ``select`` and both branches run). Norms are global
  (over all leaves), as in the paper's Algorithm 1; the state holds one gradient-sized tree.
  On the CPU backend the perturbed branch's convolutions are written in the layout of
  XLA:CPU's fast kernels, which it does not choose inside a conditional by itself (a
  convolution's weight gradient in a branch ran 31x slower without it).

  The options are :func:`samx.sam`'s and apply to the perturbed steps: ``adaptive`` (ASAM's
  ascent), ``group_size`` (m-sharpness: :math:`g` and :math:`g_s` are the means over groups),
  ``perturb_mask``, ``axis_name``.

  Args:
    rho: the ascent radius, a number >= 0 or an optax schedule of the step count.
    k: the period: the perturbed gradient is evaluated every ``k`` steps (the paper: 5; ``k=1``
      is SAM).
    alpha: the weight of the reused direction, a number >= 0 or a schedule (the paper: 0.7).
    adaptive, eta, group_size, groups_in_parallel, groups_unroll, group_path: as in
      :func:`samx.sam`.
    axis_name, perturb_mask, adaptive_mask: as in :func:`samx.sam`.
    ascent_steps, ascent_optimizer: the ascent, as in :func:`samx.sam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``objective=`` in ``update``, with a
    :class:`LookSAMState`.

  References:
    Liu, Mai, Chen, Hsieh, You, `Towards Efficient and Scalable Sharpness-Aware Minimization
    <https://arxiv.org/abs/2203.02714>`_, CVPR 2022.

  Example:
    >>> import jax.numpy as jnp, optax, samx
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, x: jnp.tanh(x @ w),
    ...     loss_fn=lambda out, y: 0.5 * (out - y) ** 2,
    ...     inputs=jnp.array([[1.0, 2.0], [3.0, -1.0]]), targets=jnp.array([1.0, 0.0]))
    >>> tx = optax.chain(samx.looksam(rho=0.1, k=5), optax.sgd(0.1))
    >>> params = jnp.array([0.5, 0.5])
    >>> state = tx.init(params)
    >>> for _ in range(10):
    ...   updates, state = tx.update(objective.grad(params), state, params, objective=objective)
    ...   params = optax.apply_updates(params, updates)
    >>> int(state[0].count)
    10
  """
  name = "samx.looksam"
  check_number("rho", rho, transform=name)
  check_count("k", k, minimum=1, allow_none=False, transform=name)
  check_number("alpha", alpha, transform=name)
  options = SAMOptions(adaptive, eta, group_size, groups_in_parallel, groups_unroll, axis_name,
                       perturb_mask, adaptive_mask, group_path, ascent_steps,
                       ascent_optimizer)
  check_options(options, transform=name)

  def init_fn(params: PyTree) -> LookSAMState:
    return LookSAMState(count=jnp.zeros([], jnp.int32),
                        orthogonal_gradient=optax.tree_utils.tree_zeros_like(params))

  def update_fn(
      updates: PyTree, state: Any, params: PyTree | None = None, *,  # a LookSAMState
      objective: Objective | None = None, **extra_args: Any,
  ) -> tuple[PyTree, LookSAMState]:
    del extra_args
    objective = check_update_arguments(name, params, objective, updates)

    def perturbed_step() -> tuple[PyTree, PyTree, jax.Array]:
      clean, perturbed = sharpness_aware_gradients(name, rho, options, objective, params,
                                                   updates, state.count)
      finite = _tree.all_finite((clean, perturbed)) & valid_radius(rho, state.count)
      return perturbed, orthogonal_part(perturbed, clean), finite

    def reusing_step() -> tuple[PyTree, PyTree, jax.Array]:
      clean = global_gradient(updates, axis_name)
      alpha_now = value_at(alpha, state.count)
      update = reuse_orthogonal_part(clean, state.orthogonal_gradient, alpha_now)
      finite = _tree.all_finite(update) & valid_radius(alpha, state.count)
      return update, state.orthogonal_gradient, finite

    def like_state(branch):
      def run(_):
        update, orthogonal, finite = branch()
        return (optax.tree_utils.tree_cast_like(update, updates),
                optax.tree_utils.tree_cast_like(orthogonal, state.orthogonal_gradient),
                jnp.asarray(finite))
      return run

    update, orthogonal, finite = jax.lax.cond(
        state.count % k == 0, like_state(with_canonical_convolutions(perturbed_step)),
        like_state(reusing_step), None)
    new_state = LookSAMState(count=jnp.asarray(optax.safe_increment(state.count)),
                             orthogonal_gradient=orthogonal)
    return nonfinite_rule(finite, update, new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
