"""SANER: SAM with the components it already down-weights down-weighted further."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samx.transforms._arguments import (
    ArgumentError,
    check_count,
    check_flag,
    check_number,
    is_traced,
)
from samx.transforms._combination import GroupFractions, gsam_combination, saner_reweighting
from samx.transforms._masks import Mask
from samx.transforms._sharpness_aware import (
    Combination,
    SAMOptions,
    ScalarOrSchedule,
    sharpness_aware_transform,
    value_at,
)

PyTree = Any


class SANERState(NamedTuple):
  """State of :func:`saner`.

  Attributes:
    count: the number of updates taken so far (int32).
    beta: the weight given to group-B components at the last update (1.0 before the first).
    group_fractions: the fractions of gradient components in groups A, B and C at the last
      update (zeros before the first, and always with ``track_groups=False``); see
      :class:`samx.GroupFractions`.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)
  beta: jax.Array
  group_fractions: GroupFractions


def linear_beta_schedule(alpha: float, warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
  r"""SANER's weight of group B, step by step: linear from 1 at step 0 to ``alpha`` at
  ``warmup_steps``, then ``alpha``:
  :math:`\beta_t = 1 + (\alpha - 1) \min(t / k, 1)`. :func:`samx.saner` uses it unless given
  ``beta_schedule``; :func:`saner_beta_schedule` is the authors' once-per-epoch form.

  Args:
    alpha: the final weight of group B (SANER's default 0.5).
    warmup_steps: :math:`k`, the steps of the ramp (``0``: ``alpha`` from the first step).

  Returns:
    A schedule ``count -> beta`` (float32), usable wherever optax takes a schedule.

  Example:
    >>> import samx
    >>> beta = samx.linear_beta_schedule(0.5, warmup_steps=10)
    >>> [round(float(beta(t)), 2) for t in (0, 5, 10, 20)]
    [1.0, 0.75, 0.5, 0.5]
  """

  def beta(count: jax.Array) -> jax.Array:
    progress = jnp.minimum(count / max(warmup_steps, 1), 1.0) if warmup_steps else 1.0
    return 1.0 + (alpha - 1.0) * jnp.asarray(progress, jnp.float32)

  return beta


def saner_beta_schedule(alpha: float, warmup_epochs: float, steps_per_epoch: int
                        ) -> Callable[[jax.Array], jax.Array]:
  r"""SANER's weight of group B as its authors' code sets it: once per epoch.

  With the 1-based epoch :math:`e = \lfloor t / \text{steps\_per\_epoch} \rfloor + 1` of step
  :math:`t` and :math:`K` = ``warmup_epochs``,

  .. math::
    \beta_t = 1 - (1 - \alpha)\, e / K \quad (e < K), \qquad \beta_t = \alpha \quad (e \ge K),

  so :math:`\beta` is already :math:`1 - (1 - \alpha)/K` in the first epoch and reaches
  ``alpha`` at epoch :math:`K`; ``warmup_epochs=0`` is ``alpha`` from the first step. (The
  per-step ramp of ``warmup_steps`` in :func:`saner` starts at exactly 1 and reaches ``alpha``
  one epoch later.) Values are in the default float dtype (float64 under ``jax_enable_x64``).

  Args:
    alpha: the final weight of group B, a number >= 0 (the paper: 0.5).
    warmup_epochs: :math:`K`, a number >= 0 (the paper: 50 of 200 epochs).
    steps_per_epoch: optimizer steps per epoch, an integer >= 1.

  Returns:
    A schedule of the step count, for ``samx.saner(rho, beta_schedule=...)``.

  Example:
    >>> import samx
    >>> beta = samx.saner_beta_schedule(alpha=0.5, warmup_epochs=4, steps_per_epoch=10)
    >>> [float(beta(t)) for t in (0, 9, 10, 29, 30, 1000)]
    [0.875, 0.875, 0.75, 0.625, 0.5, 0.5]
  """
  name = "samx.saner_beta_schedule"
  check_number("alpha", alpha, allow_schedule=False, transform=name)
  check_number("warmup_epochs", warmup_epochs, allow_schedule=False, transform=name)
  check_count("steps_per_epoch", steps_per_epoch, minimum=1, allow_none=False, transform=name)
  def beta(count: jax.Array) -> jax.Array:
    dtype = jnp.result_type(float)  # at call time: float64 once x64 is on
    final = jnp.asarray(alpha, dtype)
    if not warmup_epochs:
      return final
    epoch = (jnp.asarray(count) // steps_per_epoch + 1).astype(dtype)
    ramp = 1.0 - (1.0 - final) * epoch / jnp.asarray(warmup_epochs, dtype)
    return jnp.where(epoch < warmup_epochs, ramp, final)

  return beta


def saner(
    rho: ScalarOrSchedule,
    *,
    alpha: float = 0.5,
    warmup_steps: int | None = None,
    beta_schedule: Callable[[jax.Array], jax.Array] | None = None,
    gsam_alpha: ScalarOrSchedule = 0.0,
    track_groups: bool = True,
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
  r"""SANER: Sharpness-Aware Noise-Explicit Reweighting of SAM's gradient (Luong et al. 2024).

  With :math:`g = \nabla L(w)` and :math:`g_v` the gradient of the SAM variant in use
  (:math:`\nabla L(w+\epsilon)` for SAM and ASAM, GSAM's combination if ``gsam_alpha > 0``),
  take the elementwise ratio :math:`r = g_v / g` and split the components into

  * group A, :math:`r \ge 1`: SAM keeps or amplifies the component;
  * group B, :math:`0 < r < 1`: SAM shrinks it, in the paper's analysis mostly where the
    gradient of noisy-label examples dominates;
  * group C, :math:`r \le 0`: SAM flips or zeroes it.

  SANER makes SAM's down-weighting of group B explicit:

  .. math::
    \text{update}_j = \begin{cases} \beta_t\, (g_v)_j & 0 < r_j < 1 \\ (g_v)_j & \text{otherwise}
    \end{cases}, \qquad \beta_t = 1 + (\alpha - 1) \min(t / k, 1),

  so :math:`\beta` goes linearly from 1 to ``alpha`` over the first ``k = warmup_steps`` steps
  (the paper: ``alpha=0.5`` and ``k`` = 50 of 200 epochs of steps). ``alpha=1`` is the SAM
  variant itself. Groups are found from signs and magnitudes, without dividing, so zero
  gradients are safe (see :class:`samx.GroupFractions` for :math:`g_j = 0`). The state keeps
  ``beta`` and the group fractions of the last step for logging. With ``group_size``, the groups
  are taken on the means over groups of :math:`g` and :math:`g_v`; with
  ``combine_per_group=True`` they are taken on each group's :math:`g_k` and :math:`g_{v,k}`
  (each device's groups under ``axis_name``), the reweighted gradients are averaged, and the
  recorded fractions are the mean over groups. The extra cost over SAM is a few elementwise
  operations, and holding :math:`g` until :math:`g_v` is known.

  The SANER authors' code sets :math:`\beta` once per epoch (:func:`saner_beta_schedule`):
  ``beta_schedule=samx.saner_beta_schedule(alpha, warmup_epochs, steps_per_epoch)``.

  Args:
    rho: the ascent radius, a number >= 0 or an optax schedule of the step count (paper: 0.1).
    alpha: the final weight of group B, a number >= 0.
    warmup_steps: steps over which ``beta`` goes from 1 to ``alpha`` (0: ``alpha`` at once).
      Required unless ``beta_schedule`` is given.
    beta_schedule: instead of ``alpha`` and ``warmup_steps``, any schedule of the step count
      giving the weight of group B.
    gsam_alpha: combine with GSAM: the mask is then taken on GSAM's gradient
      ``g_sam - gsam_alpha * g_perp`` (see :func:`samx.gsam`); 0 (the default) is plain SAM.
    track_groups: record the group fractions in the state. They cost one more pass over
      ``g`` and ``g_v``, which shows on small, memory-bound models; ``False`` skips it.
    combine_per_group: take the groups A, B, C in each group of ``group_size`` examples before
      averaging (needs ``group_size``).
    adaptive, eta, group_size, groups_in_parallel, groups_unroll, group_path: as in
      :func:`samx.sam`.
    axis_name, perturb_mask, adaptive_mask: as in :func:`samx.sam`.
    ascent_steps, ascent_optimizer: the ascent, as in :func:`samx.sam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``objective=`` in ``update``, with a
    :class:`SANERState`.

  References:
    Luong, Nguyen-Quang, Tran et al., `Understanding SAM's Robustness to Noisy Labels through
    Gradient Down-weighting <https://arxiv.org/abs/2411.17132>`_ (SANER), 2024.

  Example:
    >>> import jax.numpy as jnp, optax, samx
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, inputs: inputs @ w,
    ...     loss_fn=lambda out, targets: 0.5 * (out - targets) ** 2,
    ...     inputs=jnp.array([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0]]), targets=jnp.array([1.0, 0.0]))
    >>> tx = optax.chain(samx.saner(rho=0.1, alpha=0.5, warmup_steps=10), optax.sgd(0.1))
    >>> params = jnp.array([0.5, 0.5, 0.5])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(objective.grad(params), state, params, objective=objective)
    >>> fractions = state[0].group_fractions
    >>> print(round(float(fractions.a + fractions.b + fractions.c), 6))
    1.0
  """
  name = "samx.saner"
  beta_schedule = _checked_beta_schedule(alpha, warmup_steps, beta_schedule, transform=name)
  check_number("gsam_alpha", gsam_alpha, transform=name)
  check_flag("track_groups", track_groups, transform=name)

  def init(count: jax.Array) -> SANERState:
    # One array per leaf: a state whose leaves share a buffer cannot be donated to jax.jit.
    zeros = [jnp.zeros([], jnp.float32) for _ in GroupFractions._fields]
    return SANERState(count=count, beta=jnp.ones([], jnp.float32),
                      group_fractions=GroupFractions(*zeros))

  def rule(clean: PyTree, variant: PyTree, state: SANERState
           ) -> tuple[PyTree, GroupFractions | None]:
    if callable(gsam_alpha) or is_traced(gsam_alpha) or gsam_alpha:
      variant = gsam_combination(clean, variant, value_at(gsam_alpha, state.count))
    beta = value_at(beta_schedule, state.count)
    return saner_reweighting(clean, variant, beta, track_groups=track_groups)

  def record(state: SANERState, fractions: GroupFractions | None) -> SANERState:
    beta = jnp.asarray(value_at(beta_schedule, state.count), jnp.float32)
    return state._replace(beta=beta, group_fractions=(
        state.group_fractions if fractions is None else fractions))

  options = SAMOptions(adaptive, eta, group_size, groups_in_parallel, groups_unroll, axis_name,
                       perturb_mask, adaptive_mask, group_path, ascent_steps,
                       ascent_optimizer)
  return sharpness_aware_transform(name, rho, options,
                                   combination=Combination(init, rule, record),
                                   combine_per_group=combine_per_group)


def _checked_beta_schedule(
    alpha: float, warmup_steps: int | None,
    beta_schedule: Callable[[jax.Array], jax.Array] | None, *, transform: str,
) -> Callable[[jax.Array], jax.Array]:
  """SANER's schedule of ``beta``: ``beta_schedule``, or the linear one of ``alpha`` and
  ``warmup_steps``; raises an :class:`ArgumentError` unless exactly one of them is given."""
  if beta_schedule is None:
    check_number("alpha", alpha, allow_schedule=False, transform=transform)
    if warmup_steps is None:
      raise ArgumentError(
          "warmup_steps",
          f"{transform}: `warmup_steps` is required (steps over which beta goes from 1 to alpha; "
          "0 for alpha at once), unless `beta_schedule` is given.")
    check_count("warmup_steps", warmup_steps, minimum=0, allow_none=False, transform=transform)
    return linear_beta_schedule(alpha, warmup_steps)
  if not callable(beta_schedule):
    raise ArgumentError(
        "beta_schedule",
        f"{transform}: `beta_schedule` must be a callable of the step count; got "
        f"{beta_schedule!r}.")
  if warmup_steps is not None:
    raise ArgumentError(
        "warmup_steps",
        f"{transform}: give either `warmup_steps` (with `alpha`) or `beta_schedule`, not both.")
  return beta_schedule
