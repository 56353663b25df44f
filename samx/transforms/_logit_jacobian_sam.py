"""L-SAM and J-SAM: SAM with only the logit term or only the Jacobian perturbed."""

from __future__ import annotations

from collections.abc import Hashable

import optax

from samx.transforms._decomposition import jacobian_perturbed_loss, logit_perturbed_loss
from samx.transforms._masks import Mask
from samx.transforms._sharpness_aware import SAMOptions, ScalarOrSchedule, sharpness_aware_transform


def logit_sam(
    rho: ScalarOrSchedule,
    *,
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
  r"""L-SAM: SAM's perturbation applied to the logit term only (Baek et al. 2024).

  Write the gradient of the mean loss as :math:`J(w)^\top r(f(w))`, with :math:`f` the model's
  outputs, :math:`J = \partial f / \partial w` and the logit term :math:`r = \partial \ell /
  \partial f` (for cross-entropy, :math:`\mathrm{softmax}(f) - \mathrm{onehot}(y)`, divided by
  the batch). With :math:`\epsilon` as in :func:`samx.sam`, L-SAM's update is

  .. math::
    J(w)^\top\, r\big(f(w + \epsilon)\big),

  the logit term at the perturbed point and the Jacobian at the current one. It is exact for any
  ``loss_fn`` (:math:`r` is computed by differentiating ``loss_fn`` with respect to the outputs)
  and any model. Baek et al. find that it does *not* recover SAM's robustness to label noise,
  unlike :func:`samx.jacobian_sam`.

  Cost: one forward pass at :math:`w + \epsilon` (no backward pass through it) and, since the
  Jacobian is needed at :math:`w` with a new logit term, a second linearisation at :math:`w`: a
  backward pass, and a forward pass that is the same computation as the caller's own, which
  XLA computes once under ``jax.jit`` — so the FLOPs are SAM's (measured in
  ``benchmarks/step_cost.py``). Same options as :func:`samx.sam`; the paper studies
  ``group_size=1`` (1-SAM).

  Args:
    rho: the radius of the ascent step, a number >= 0 or an optax schedule of the transform's
      own step count.
    adaptive: use ASAM's scale-invariant ascent step (:func:`samx.sam`).
    eta: ASAM's offset in :math:`T = |w| + \eta`.
    group_size: examples per group for m-sharpness (``1``: the paper's 1-SAM; ``None``: the
      whole batch). Must divide the batch.
    groups_in_parallel: with ``group_size``, how many groups are vmapped at once (``None``:
      all).
    groups_unroll: the ``unroll`` of the scan over chunks of groups (``True``: fully).
    axis_name: the ``pmap``/``shard_map`` axis to average the gradients over.
    perturb_mask: the parameters to perturb (optax mask convention; ``None``: all).
    adaptive_mask: with ``adaptive=True``, the parameters scaled by ``|w| + eta``.
    group_path: with ``group_size``, ``"layers"`` or ``"vmap"`` (see :func:`samx.sam`).
    ascent_steps, ascent_optimizer: the ascent, as in :func:`samx.sam` (the intermediate
      gradients are those of the plain loss; the last point gets this method's gradient).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
    objective)`` takes a :class:`samx.Objective` for the current batch, with a
    :class:`samx.SAMState`. Non-finite steps follow :func:`samx.sam`'s rule.

  References:
    Baek, Kolter, Raghunathan, `Why is SAM Robust to Label Noise?
    <https://arxiv.org/abs/2405.03676>`_, ICLR 2024.

  Example:
    >>> import jax.numpy as jnp, optax, samx
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, x: jnp.tanh(x @ w),
    ...     loss_fn=lambda out, y: 0.5 * (out - y) ** 2,
    ...     inputs=jnp.array([[1.0, 2.0], [3.0, -1.0]]), targets=jnp.array([1.0, 0.0]))
    >>> tx = samx.logit_sam(rho=0.1, group_size=1)
    >>> params = jnp.array([0.5, 0.5])
    >>> updates, _ = tx.update(objective.grad(params), tx.init(params), params,
    ...                        objective=objective)
    >>> updates.shape
    (2,)
  """
  options = SAMOptions(adaptive, eta, group_size, groups_in_parallel, groups_unroll, axis_name,
                       perturb_mask, adaptive_mask, group_path, ascent_steps,
                       ascent_optimizer)
  return sharpness_aware_transform("samx.logit_sam", rho, options,
                                   perturbed_loss=logit_perturbed_loss)


def jacobian_sam(
    rho: ScalarOrSchedule,
    *,
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
  r"""J-SAM: SAM's perturbation applied to the network Jacobian only (Baek et al. 2024).

  With the notation of :func:`samx.logit_sam`, J-SAM's update is

  .. math::
    J(w + \epsilon)^\top\, r\big(f(w)\big),

  the Jacobian at the perturbed point and the logit term at the current one. Baek et al. show
  that this part carries SAM's robustness to label noise: for a two-layer linear network it is
  SGD plus pulls toward small last-layer weights and small hidden activations (their
  Proposition 4.1), which :mod:`samx.penalties` offers as an explicit regulariser.

  Cost: a forward and a backward pass at :math:`w + \epsilon` — as SAM — plus the outputs at
  :math:`w` for the logit term. Pass them as ``samx.Objective(..., outputs=...)`` (the caller's
  own forward pass has them, e.g. as the aux of its ``value_and_grad``) and J-SAM costs what
  SAM costs; otherwise it runs one more forward pass, which XLA merges with the caller's
  identical one only sometimes (on the MLP of ``benchmarks/step_cost.py``, not on the ResNet).
  Same options as :func:`samx.sam`; the paper studies ``group_size=1`` (1-SAM).

  Args:
    rho: the radius of the ascent step, a number >= 0 or an optax schedule of the transform's
      own step count.
    adaptive, eta, group_size, groups_in_parallel, groups_unroll, group_path: as in
      :func:`samx.logit_sam`.
    axis_name, perturb_mask, adaptive_mask, ascent_steps, ascent_optimizer: as in
      :func:`samx.logit_sam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
    objective)`` takes a :class:`samx.Objective` for the current batch, with a
    :class:`samx.SAMState`. Non-finite steps follow :func:`samx.sam`'s rule.

  References:
    Baek, Kolter, Raghunathan, `Why is SAM Robust to Label Noise?
    <https://arxiv.org/abs/2405.03676>`_, ICLR 2024.

  Example:
    >>> import jax.numpy as jnp, optax, samx
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, x: x @ w,           # linear in w: J does not depend on w
    ...     loss_fn=lambda out, y: 0.5 * (out - y) ** 2,
    ...     inputs=jnp.array([[1.0, 2.0], [3.0, -1.0]]), targets=jnp.array([1.0, 0.0]))
    >>> tx = samx.jacobian_sam(rho=0.1)
    >>> params = jnp.array([0.5, 0.5])
    >>> grads = objective.grad(params)
    >>> updates, _ = tx.update(grads, tx.init(params), params, objective=objective)
    >>> bool(jnp.allclose(updates, grads))     # so J-SAM is plain SGD here
    True
  """
  options = SAMOptions(adaptive, eta, group_size, groups_in_parallel, groups_unroll, axis_name,
                       perturb_mask, adaptive_mask, group_path, ascent_steps,
                       ascent_optimizer)
  return sharpness_aware_transform("samx.jacobian_sam", rho, options,
                                   perturbed_loss=jacobian_perturbed_loss)
