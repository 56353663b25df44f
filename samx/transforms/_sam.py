"""SAM, ASAM and m-sharpness as one optax transform."""

from __future__ import annotations

from collections.abc import Hashable

import optax

from samx.transforms._masks import Mask
from samx.transforms._sharpness_aware import SAMOptions, ScalarOrSchedule, sharpness_aware_transform


def sam(
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
  r"""Sharpness-Aware Minimization: replaces the gradient by the gradient at ``w + eps``.

  Given the gradient :math:`g = \nabla L(w)` as ``updates``, SAM (Foret et al. 2021) takes one
  ascent step of length :math:`\rho` and returns the gradient there:

  .. math::
    \epsilon = \rho \frac{g}{\lVert g \rVert_2}, \qquad
    \text{update} = \nabla L(w + \epsilon).

  ``adaptive=True`` is ASAM (Kwon et al. 2021), with :math:`T = |w| + \eta` elementwise:
  :math:`\epsilon = \rho\, T^2 g / \lVert T g \rVert_2`.

  ``group_size=m`` is m-sharpness: the batch is split into groups of ``m`` examples, group
  :math:`k` gets :math:`\epsilon_k` from its own gradient :math:`g_k`, and the update is
  :math:`\frac1K \sum_k \nabla L_k(w + \epsilon_k)`. ``group_size=1`` is the 1-SAM of Baek et
  al. 2024, and ``group_size`` equal to the per-device batch is the per-device SAM of the
  original implementation. For a layer weight :math:`W` (a ``dot_general`` or convolution
  kernel), group :math:`k`'s gradient is :math:`G_k = A_k^\top D_k` (the layer's input rows and
  the gradients at its output), so its norm is :math:`\langle A_k A_k^\top, D_k D_k^\top
  \rangle` and the layer's output at :math:`W + c_k G_k` is :math:`\tilde A W + c_k (\tilde A
  A_k^\top) D_k`: exact m-sharpness costs about two forward and backward passes and no
  per-example weights (``group_path="layers"``; 1-SAM at about SAM's step time on an MLP,
  3-4.4x SGD's on convnets, see ``benchmarks/README.md``). The groups are evaluated with
  ``jax.vmap`` (``groups_in_parallel`` of them at a time, all by default).

  ``perturb_mask`` restricts the ascent step to some parameters: :math:`\epsilon` is formed from
  the selected leaves of :math:`g` alone (only they count in :math:`\lVert g \rVert`) and is
  zero on the others. Selecting the normalization layers
  (:func:`samx.models.normalization_mask`) is SAM-ON (Mueller et al. 2023). With ``adaptive``,
  ``adaptive_mask`` chooses the leaves scaled by :math:`T = |w| + \eta`; the others get
  :math:`T = 1`. Both masks follow optax's convention (as in ``optax.masked``): a pytree of
  booleans with the parameters' structure or a prefix of it, or a callable from the parameters
  to one.

  ASAM's conventions, reproduced: the ASAM authors' code scales every parameter but the biases
  (PyTorch's ``weight``, which includes BatchNorm's scale) with ``eta=0.01``:
  ``adaptive=True, adaptive_mask=samx.models.weight_mask``. Ports that use :math:`T = |w|` on
  every parameter: ``adaptive=True, eta=0.0``. samx's default is :math:`|w| + \eta` on every
  leaf. big_vision's "adaptive perturbation" is a different rule,
  :math:`\epsilon = \rho |w| g / \lVert g \rVert` (:math:`T` applied once and not in the
  norm), which none of these settings gives.

  The transform must see the raw gradient of ``objective`` at ``params`` (put it first in an
  ``optax.chain``, with weight decay and the optimizer after it). One step evaluates the
  gradient once more, at ``w + eps``. If :math:`\lVert g \rVert` is zero,
  :math:`\epsilon = 0` and the update is the plain gradient.

  Non-finite steps, the rule of every samx transform: if the step's clean gradient (the
  incoming ``updates``; with ``group_size``, the group gradients formed here, the incoming ones
  being unused; also one so large that its norm overflows), its perturbed gradient or the value
  of a schedule (``rho`` < 0 or NaN) is not finite, the update is NaN in every entry and the
  state is returned as it was, count included. Guard the step with ``optax.apply_if_finite``
  placed after this transform (around the whole chain it only sees the incoming gradient); the
  skipped step then leaves no trace.

  Composition: whatever comes before this transform in a chain (``clip_by_global_norm``, a
  scaling) changes only the direction of :math:`\epsilon`, since the update is a gradient
  computed here from ``objective``; clip or scale after it. Under ``optax.MultiSteps`` (or any
  wrapper that calls ``update`` once per micro-batch) the count advances per micro-batch, so
  ``rho`` schedules (and SANER's ``warmup_steps``, LookSAM's ``k``, AE-SAM's ``total_steps``)
  count micro-batches, and each micro-batch gets its own perturbation; for one perturbation
  over an accumulated batch, give the whole batch to one objective with
  ``samx.Objective(..., microbatches=k)``. A transform before samx in a chain is warned about
  once, when traced.

  Args:
    rho: the radius of the ascent step, a number >= 0 or an optax schedule of the transform's
      own step count (which advances on every call of ``update``).
    adaptive: use ASAM's scale-invariant ascent step.
    eta: ASAM's offset in :math:`T = |w| + \eta`.
    group_size: examples per group for m-sharpness; ``None`` is one group, the whole batch.
      Must divide the batch (per device, under ``pmap``/``shard_map``).
    groups_in_parallel: with ``group_size``, how many groups are vmapped at once (``None``: all);
      the chunks of groups then run in a ``lax.scan``. Fewer bounds memory (each vmapped group
      holds a gradient); on CPU, 1 is also the fastest. Must divide the number of groups.
    groups_unroll: the ``unroll`` of that scan; ``True`` (the default) unrolls it fully, which
      XLA:CPU runs far faster (a rolled loop of convolutions is ~20x slower there) at the price
      of compile time growing with the number of chunks.
    axis_name: the ``pmap``/``shard_map`` axis to average the gradients over. Not needed under
      ``jax.jit`` with sharded arrays, where the batch is already global.
    perturb_mask: the parameters to perturb (optax mask convention; ``None``: all). A mask
      that selects nothing is refused.
    adaptive_mask: with ``adaptive=True``, the parameters scaled by ``|w| + eta`` (``None``:
      all); refused without ``adaptive``.
    group_path: with ``group_size``, how the group gradients are formed. ``"layers"`` (the
      default): the model's dense and convolutional weights are found in its jaxpr and their
      group gradients are never formed per group (see below); every other perturbed leaf gets a
      per-group copy under ``jax.vmap``. ``"vmap"``: every leaf by ``jax.vmap``. Both give the
      same updates (to rounding); :func:`samx.group_plan` shows which leaf takes which path.
    ascent_steps: how many ascent steps form :math:`\epsilon` (``None`` or 1: SAM's one step;
      ``None`` keeps ``optax.inject_hyperparams`` from making it an array). Step :math:`i + 1`
      applies the ascent rule (SAM's or ASAM's, masked) to the gradient at
      :math:`w + \epsilon_i` and adds it, so :math:`\lVert \epsilon \rVert` can reach
      ``ascent_steps * rho`` (divide ``rho`` for a ball of radius ``rho``). A step then costs
      ``ascent_steps + 1`` gradient evaluations. The same as ``optax.contrib.sam`` with
      ``sync_period = ascent_steps + 1`` and its default ``adv_optimizer``
      (``chain(normalize(), sgd(rho))``), in one ``update``.
    ascent_optimizer: an optax optimizer whose update, negated, is the ascent direction (the
      convention of ``optax.contrib.sam``'s ``adv_optimizer``, e.g. ``optax.adam(1.0)`` for
      Adam's :math:`\hat m / \sqrt{\hat v}`); each of the ``ascent_steps`` steps is that
      direction scaled by the ascent rule to length ``rho``, and the optimizer's state starts
      afresh at every ``update``. ``None``: the gradient itself. With ``ascent_steps > 1`` or
      an ``ascent_optimizer``, groups take the vmap path.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
    objective)`` takes a :class:`samx.Objective` for the current batch.

  References:
    Foret et al., `Sharpness-Aware Minimization for Efficiently Improving Generalization
    <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.
    Kwon et al., `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of
    Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_, ICML 2021.
    Andriushchenko & Flammarion, `Towards Understanding Sharpness-Aware Minimization
    <https://arxiv.org/abs/2206.06232>`_, ICML 2022 (m-sharpness).
    Mueller et al., `Normalization Layers Are All That Sharpness-Aware Minimization Needs
    <https://arxiv.org/abs/2306.04226>`_, NeurIPS 2023 (SAM-ON).

  Example:
    >>> import jax.numpy as jnp, optax, samx
    >>> x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]])
    >>> y = jnp.array([1.0, 0.0, 1.0, 0.0])
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, inputs: inputs @ w,
    ...     loss_fn=lambda out, targets: 0.5 * (out - targets) ** 2,
    ...     inputs=x, targets=y)
    >>> tx = optax.chain(samx.sam(rho=0.05), optax.sgd(0.1))
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(100):
    ...   loss, grads = objective.value_and_grad(params)
    ...   updates, state = tx.update(grads, state, params, objective=objective)
    ...   params = optax.apply_updates(params, updates)
    >>> print(f"{objective.loss(params):.3f}")
    0.060
  """
  options = SAMOptions(adaptive, eta, group_size, groups_in_parallel, groups_unroll, axis_name,
                       perturb_mask, adaptive_mask, group_path, ascent_steps,
                       ascent_optimizer)
  return sharpness_aware_transform("samx.sam", rho, options)
