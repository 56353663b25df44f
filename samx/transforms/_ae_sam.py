"""AE-SAM: SAM on the steps where the gradient is large against its recent history, SGD else."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samx.transforms import _tree
from samx.transforms._arguments import ArgumentError, check_count, check_number, is_traced
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
)

PyTree = Any


class AESAMState(NamedTuple):
  """State of :func:`ae_sam`.

  Attributes:
    count: the number of updates taken so far (int32).
    mean: :math:`\\mu_t`, the running mean of :math:`\\lVert g \\rVert^2` (0 before the first
      update).
    variance: :math:`\\sigma_t^2`, its running variance (0 before the first update).
    sam_steps: how many updates were SAM steps (int32); ``sam_steps / count`` is the fraction.
    last_was_sam: whether the last update was a SAM step.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)
  mean: jax.Array
  variance: jax.Array
  sam_steps: jax.Array
  last_was_sam: jax.Array


def linear_threshold(start: float, end: float, total_steps: int
                     ) -> Callable[[jax.Array], jax.Array]:
  """AE-SAM's threshold ``c_t = start + (end - start) min(t / T, 1)``, ``T = total_steps``.

  In the paper's notation ``c_t = (t/T) lambda_1 + (1 - t/T) lambda_2``: ``start`` is
  ``lambda_2`` and ``end`` is ``lambda_1``.
  """

  def threshold(count: jax.Array) -> jax.Array:
    progress = jnp.minimum(jnp.asarray(count, jnp.result_type(float)) / total_steps, 1.0)
    return start + (end - start) * progress

  return threshold


def ae_sam(
    rho: ScalarOrSchedule,
    *,
    total_steps: int | None = None,
    threshold_start: float = 1.0,
    threshold_end: float = -1.0,
    threshold: Callable[[jax.Array], jax.Array] | None = None,
    delta: float = 0.9,
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
  r"""AE-SAM: SAM where the loss is sharp, SGD elsewhere (Jiang et al. 2023).

  The squared norm of the clean gradient, :math:`s_t = \lVert g_t \rVert^2`, is large where the
  loss is sharp. AE-SAM keeps its running mean and variance,

  .. math::
    \mu_t = \delta \mu_{t-1} + (1 - \delta) s_t, \qquad
    \sigma_t^2 = \delta \sigma_{t-1}^2 + (1 - \delta) (s_t - \mu_t)^2

  (:math:`\mu_{-1} = \sigma_{-1}^2 = 0`), and takes a SAM step, :math:`\nabla L(w + \epsilon)`
  as in :func:`samx.sam`, when :math:`s_t \ge \mu_t + c_t \sigma_t`, and the plain gradient
  :math:`g_t` otherwise. The threshold moves linearly over training,
  :math:`c_t = c_{start} + (c_{end} - c_{start}) \min(t / T, 1)`; the defaults go from 1 to -1,
  so SAM runs rarely at first and on most steps at the end (for a Gaussian :math:`s_t`, on
  16% and 84% of the steps: about half on average). ``threshold`` replaces that schedule.

  The choice is a ``jax.lax.cond`` on a scalar, so a gradient step evaluates one gradient and a
  SAM step two (under ``jax.vmap`` of the whole update both branches run). Under
  ``axis_name`` the decision uses the global gradient, so every device takes the same branch.
  The state counts the SAM steps (:class:`AESAMState`).
  On the CPU backend the perturbed branch's convolutions are written in the layout of
  XLA:CPU's fast kernels, which it does not choose inside a conditional by itself (a
  convolution's weight gradient in a branch ran 31x slower without it).

  Args:
    rho: the ascent radius, a number >= 0 or an optax schedule of the step count.
    total_steps: :math:`T`, the length of the run in steps; required unless ``threshold`` is
      given.
    threshold_start, threshold_end: :math:`c_t` at the first and the last step (the paper's
      :math:`\lambda_2` and :math:`\lambda_1`).
    threshold: instead of those, any schedule of the step count giving :math:`c_t`.
    delta: the forgetting factor of the running mean and variance, in [0, 1).
    adaptive, eta, group_size, groups_in_parallel, groups_unroll, group_path: as in
      :func:`samx.sam`, for the SAM steps.
    axis_name, perturb_mask, adaptive_mask: as in :func:`samx.sam`.
    ascent_steps, ascent_optimizer: the ascent, as in :func:`samx.sam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``objective=`` in ``update``, with an
    :class:`AESAMState`.

  References:
    Jiang, Yang, Zhang, Kwok, `An Adaptive Policy to Employ Sharpness-Aware Minimization
    <https://arxiv.org/abs/2304.14647>`_, ICLR 2023.

  Example:
    >>> import jax.numpy as jnp, optax, samx
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, x: jnp.tanh(x @ w),
    ...     loss_fn=lambda out, y: 0.5 * (out - y) ** 2,
    ...     inputs=jnp.array([[1.0, 2.0], [3.0, -1.0]]), targets=jnp.array([1.0, 0.0]))
    >>> tx = optax.chain(samx.ae_sam(rho=0.1, total_steps=20), optax.sgd(0.1))
    >>> params = jnp.array([0.5, 0.5])
    >>> state = tx.init(params)
    >>> for _ in range(20):
    ...   updates, state = tx.update(objective.grad(params), state, params, objective=objective)
    ...   params = optax.apply_updates(params, updates)
    >>> 0 < int(state[0].sam_steps) < 20
    True
  """
  name = "samx.ae_sam"
  check_number("rho", rho, transform=name)
  check_number("delta", delta, allow_schedule=False, transform=name)
  if not is_traced(delta) and not delta < 1:
    raise ArgumentError("delta", f"{name}: `delta` must be in [0, 1); got {delta!r}.")
  threshold = _checked_threshold(total_steps, threshold_start, threshold_end, threshold,
                                 transform=name)
  options = SAMOptions(adaptive, eta, group_size, groups_in_parallel, groups_unroll, axis_name,
                       perturb_mask, adaptive_mask, group_path, ascent_steps,
                       ascent_optimizer)
  check_options(options, transform=name)

  def init_fn(params: PyTree) -> AESAMState:
    dtype = _tree.accumulation_dtype(jax.tree.leaves(params))
    # One array per leaf: a state whose leaves share a buffer cannot be donated to jax.jit.
    return AESAMState(count=jnp.zeros([], jnp.int32), mean=jnp.zeros([], dtype),
                      variance=jnp.zeros([], dtype), sam_steps=jnp.zeros([], jnp.int32),
                      last_was_sam=jnp.zeros([], bool))

  def update_fn(
      updates: PyTree, state: Any, params: PyTree | None = None, *,  # an AESAMState
      objective: Objective | None = None, **extra_args: Any,
  ) -> tuple[PyTree, AESAMState]:
    del extra_args
    objective = check_update_arguments(name, params, objective, updates)
    clean = global_gradient(updates, axis_name)
    squared_norm = jnp.square(_tree.global_norm(clean)).astype(state.mean.dtype)
    mean = delta * state.mean + (1 - delta) * squared_norm
    variance = delta * state.variance + (1 - delta) * jnp.square(squared_norm - mean)
    cutoff = jnp.asarray(threshold(state.count), mean.dtype)
    use_sam = squared_norm >= mean + cutoff * jnp.sqrt(variance)

    def sam_step(_) -> tuple[PyTree, jax.Array]:
      _, perturbed = sharpness_aware_gradients(name, rho, options, objective, params, updates,
                                               state.count)
      finite = _tree.all_finite(perturbed) & valid_radius(rho, state.count)
      return optax.tree_utils.tree_cast_like(perturbed, updates), jnp.asarray(finite)

    def gradient_step(_) -> tuple[PyTree, jax.Array]:
      return optax.tree_utils.tree_cast_like(clean, updates), jnp.asarray(True)

    update, finite = jax.lax.cond(use_sam, with_canonical_convolutions(sam_step), gradient_step,
                                  None)
    # The clean gradient decides the branch: a non-finite one is refused before its square
    # enters the running statistics (which would stay inf or NaN for the rest of training).
    finite = (finite & _tree.all_finite(clean) & jnp.isfinite(mean)
              & jnp.isfinite(variance))
    new_state = AESAMState(
        count=jnp.asarray(optax.safe_increment(state.count)), mean=mean, variance=variance,
        sam_steps=state.sam_steps + use_sam.astype(jnp.int32), last_was_sam=use_sam)
    return nonfinite_rule(finite, update, new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _checked_threshold(
    total_steps: int | None, start: float, end: float,
    threshold: Callable[[jax.Array], jax.Array] | None, *, transform: str,
) -> Callable[[jax.Array], jax.Array]:
  """``threshold``, or the linear one from ``start`` to ``end`` over ``total_steps``; raises an
  :class:`ArgumentError` unless exactly one way is given."""
  if threshold is not None:
    if not callable(threshold):
      raise ArgumentError(
          "threshold", f"{transform}: `threshold` must be a callable of the step count; got "
          f"{threshold!r}.")
    if total_steps is not None:
      raise ArgumentError(
          "total_steps", f"{transform}: give either `total_steps` (for the linear threshold "
          "from `threshold_start` to `threshold_end`) or `threshold`, not both.")
    return threshold
  if total_steps is None:
    raise ArgumentError(
        "total_steps", f"{transform}: `total_steps` (the run's length in steps, over which the "
        "threshold moves from `threshold_start` to `threshold_end`) is required unless "
        "`threshold` is given.")
  check_count("total_steps", total_steps, minimum=1, allow_none=False, transform=transform)
  for argument, value in (("threshold_start", start), ("threshold_end", end)):
    check_number(argument, value, minimum=-float("inf"), allow_schedule=False,
                 transform=transform)
  return linear_threshold(start, end, total_steps)
