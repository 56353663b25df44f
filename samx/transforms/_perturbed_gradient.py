"""How the gradient at the perturbed point is formed: whole batch or per group (m-sharpness)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from samx.transforms import _tree
from samx.transforms._objective import Objective, as_varying
from samx.transforms._perturbation import Ascent, Perturbation
from samx.transforms._structured_groups import (
    AscentRule,
    PerturbedLoss,
    describe,
    logger,
    plan_groups,
    structured_group_sums,
)

PyTree = Any
ApplyFn = Callable[[PyTree, PyTree], PyTree]


def loss_at_perturbation(objective: Objective, params: PyTree,
                         apply_perturbed: ApplyFn) -> jax.Array:
  """``L(w + eps)``: its gradient in ``w`` is SAM's ``grad L(w + eps)``."""
  return jnp.mean(objective.losses_from_outputs(apply_perturbed(params,
                                                                objective.model_inputs)))


def _shifted_apply(objective: Objective, eps: PyTree) -> ApplyFn:
  """The model at ``params + eps``."""
  model = objective.model
  return lambda params, inputs: model(_tree.add(params, eps), inputs)


def _sum_over_chunks(
    chunk_fn: Callable[[Objective], PyTree], grouped: Objective, groups_in_parallel: int | None,
    unroll: int | bool,
) -> PyTree:
  """``chunk_fn`` (which sums over the groups it is given) summed over all groups of ``grouped``.

  All groups in one chunk is one batched computation; fewer at a time runs a ``lax.scan`` over
  chunks of ``groups_in_parallel`` groups with a running sum in at least float32, bounding
  memory.
  ``unroll`` is the scan's: XLA:CPU runs convolutions in a rolled loop many times slower than
  unrolled ones (20x for ResNet-18), so the default unrolls fully.
  """
  num_groups = jax.tree.leaves(grouped)[0].shape[0]
  if groups_in_parallel is None or groups_in_parallel >= num_groups:
    return chunk_fn(grouped)
  if num_groups % groups_in_parallel:
    raise ValueError(
        f"groups_in_parallel={groups_in_parallel} must divide the number of groups "
        f"({num_groups} = batch / group_size).")
  num_chunks = num_groups // groups_in_parallel
  chunked = jax.tree.map(
      lambda x: jnp.reshape(x, (num_chunks, groups_in_parallel, *x.shape[1:])), grouped)
  result_shape = jax.eval_shape(chunk_fn, jax.tree.map(lambda x: x[0], chunked))

  def add_chunk(total, chunk):
    return jax.tree.map(lambda t, r: t + r.astype(t.dtype), total, chunk_fn(chunk)), None

  # At least float32 (bfloat16 sums lose the groups' small terms), float64 for float64 leaves.
  zeros = jax.tree.map(
      lambda leaf: jnp.zeros(leaf.shape, _tree.accumulation_dtype([leaf])), result_shape)
  total, _ = jax.lax.scan(add_chunk, zeros, chunked, unroll=unroll)
  return optax.tree_utils.tree_cast_like(total, result_shape)


def global_gradient(grads: PyTree, axis_name: Hashable | None) -> PyTree:
  """``grads`` averaged over the mapped ``axis_name`` (as they are if ``None``)."""
  return grads if axis_name is None else jax.lax.pmean(grads, axis_name)


def clean_and_perturbed_gradients(
    objective: Objective,
    params: PyTree,
    grads: PyTree,
    rho: jax.Array | float,
    *,
    perturbation: Perturbation,
    perturbed_loss: PerturbedLoss = loss_at_perturbation,
    per_group: Callable[[PyTree, PyTree], PyTree] | None = None,
    group_size: int | None = None,
    groups_in_parallel: int | None = None,
    groups_unroll: int | bool = True,
    axis_name: Hashable | None = None,
    group_path: str = "layers",
    ascent_rule: AscentRule | None = None,
    ascent: Ascent | None = None,
) -> PyTree:
  """The clean gradient ``g`` and the perturbed gradient ``g_sam`` of one sharpness-aware step.

  With ``group_size=None`` the whole batch is one group: ``eps = perturbation(g)`` with ``g``
  the incoming ``grads``, and ``g_sam`` is the gradient in ``w`` of ``perturbed_loss(objective,
  w, apply_perturbed)``, ``apply_perturbed`` the model at ``w + eps`` (one more gradient
  evaluation). With ``group_size=m`` the batch is split into groups
  of ``m`` examples; each group ``k`` gets its own gradient ``g_k`` (one vmapped gradient) and
  ``eps_k = perturbation(g_k)``, and ``g`` and ``g_sam`` are the means over groups of ``g_k``
  and of the gradients of ``perturbed_loss`` on group ``k`` at ``w + eps_k`` (one more vmapped
  gradient). The incoming ``grads`` are then not needed, and under ``jax.jit`` XLA drops the
  caller's backward pass if nothing else uses it. (Differentiating the sum over groups of the
  perturbed losses in one backward pass gives the same sum, but XLA:CPU runs it 4x slower.)

  With ``group_path="layers"`` (and an ``ascent_rule``, the leafwise form of ``perturbation``,
  and no ``per_group``) the group gradients of the model's layer weights are never formed per
  group: ``_structured_groups`` computes the same ``g`` and ``g_sam`` from the layers' inputs
  and output gradients, and only the other perturbed leaves get per-group copies. If the model
  has no layer weight, or with ``group_path="vmap"``, every group gradient is vmapped.

  With ``axis_name``, ``g`` and ``g_sam`` are averaged over that mapped axis (``pmap``,
  ``shard_map``): without groups, ``eps`` then comes from the global-batch gradient; with groups,
  the groups are those of each device's own batch. The incoming ``grads`` may be each device's
  local gradient or already the global one (averaging is then a no-op); under ``shard_map``
  compute them with ``objective.value_and_grad(params, axis_name=...)``.

  ``ascent`` (see ``_perturbation.iterated_ascent``), if given, replaces the single step
  ``eps = perturbation(g)`` by several steps (each with its own gradient at the point reached,
  of the plain loss; the group's own with ``group_size``), or by the steps of an optax ascent
  optimizer. The group gradients then take the vmap path.

  ``per_group`` (with ``group_size`` only) maps each group's ``(g_k, g_sam_k)`` to a pytree of
  floating-point arrays, and the result is that pytree's mean over groups (and devices) instead
  of ``(g, g_sam)``: GSAM's and SANER's rules applied per group.

  With a ``surrogate`` objective (:class:`samx.Objective`), the result is ``(grads, grads +
  g_sam - g)``: the incoming gradient, and it shifted by what the perturbation changes in the
  surrogate's gradient (without groups, ``g`` is one more gradient evaluation of the surrogate).

  With ``objective.microbatches = k > 1`` (gradient accumulation), every gradient evaluated here
  is the mean over the batch's ``k`` slices, one after another; with groups, the groups are
  taken in ``k`` chunks. One ``eps`` serves the whole batch.
  """
  if objective.surrogate and per_group is not None:
    raise ValueError(
        "combine_per_group applies its rule to each group's own gradients, which a surrogate "
        "objective (Objective.surrogate=True) does not give; use combine_per_group=False, or "
        "an exact objective.")
  def pmean(tree: PyTree) -> PyTree:
    return global_gradient(tree, axis_name)

  # Under a mapped axis, differentiate per device and average explicitly (see `as_varying`).
  local_params = params if axis_name is None else as_varying(params, axis_name)
  def perturbed_gradient(group: Objective, at: PyTree, eps: PyTree) -> PyTree:
    return jax.grad(perturbed_loss, argnums=1)(group, at, _shifted_apply(group, eps))

  def eps_of(group: Objective, clean: PyTree, mean: Callable[[PyTree], PyTree],
             at: PyTree) -> PyTree:
    if ascent is None:
      return perturbation(clean, at, rho)
    return ascent(lambda eps: mean(group.grad(_tree.add(local_params, eps))), clean, at, rho)

  if group_size is None:
    clean = pmean(grads)
    eps = eps_of(objective, clean, pmean, params)
    perturbed = pmean(objective.mean_over_microbatches(
        lambda part: perturbed_gradient(part, local_params, eps)))
    if objective.surrogate:
      return anchored_to_incoming(clean, pmean(objective.grad(local_params)), perturbed)
    return clean, perturbed

  grouped = objective.split_into_groups(group_size)
  num_groups = objective.batch_size // group_size
  if objective.microbatches > 1 and groups_in_parallel is None:
    if num_groups % objective.microbatches:
      raise ValueError(
          f"Objective: `microbatches`={objective.microbatches} must divide the number of "
          f"groups ({num_groups} = batch / group_size).")
    groups_in_parallel = num_groups // objective.microbatches
  plan = None
  if group_path == "layers" and per_group is None and ascent_rule is not None and ascent is None:
    plan = plan_groups(objective, local_params, group_size, ascent_rule)
    logger.info("m-sharpness, %s", describe(plan, params, group_size))
    if not plan.layers:
      plan = None

  def chunk_gradients(chunk: Objective) -> PyTree:
    """Sums over the chunk's groups of the clean and the perturbed group gradients (or of what
    ``per_group`` makes of them)."""
    if plan is not None:
      return structured_group_sums(plan, chunk, local_params, rho, perturbed_loss, axis_name)
    clean = jax.vmap(lambda group: group.grad(local_params))(chunk)
    eps = jax.vmap(lambda group, g: eps_of(group, g, lambda tree: tree, local_params))(
        chunk, clean)
    perturbed = jax.vmap(perturbed_gradient, in_axes=(0, None, 0))(chunk, local_params, eps)
    per_group_results = (clean, perturbed) if per_group is None else jax.vmap(per_group)(
        clean, perturbed)
    return _tree.sum_leading_axis(per_group_results)

  sums = _sum_over_chunks(chunk_gradients, grouped, groups_in_parallel, groups_unroll)
  means = pmean(_tree.scale(1.0 / num_groups, sums))
  if objective.surrogate:
    return anchored_to_incoming(pmean(grads), *means)
  return means


def anchored_to_incoming(incoming: PyTree, clean: PyTree, perturbed: PyTree
                         ) -> tuple[PyTree, PyTree]:
  """``(g, g + (g_sam - g_tilde))`` for a surrogate objective: ``incoming`` is ``g``, the
  gradient of the loss itself; ``clean`` and ``perturbed`` are the surrogate's at ``w`` and
  ``w + eps`` (in the incoming gradient's dtypes)."""
  shifted = jax.tree.map(
      lambda g, s, p: (g.astype(p.dtype) + (p - s.astype(p.dtype))).astype(g.dtype),
      incoming, clean, perturbed)
  return incoming, shifted
