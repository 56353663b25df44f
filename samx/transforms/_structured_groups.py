r"""Exact m-sharpness (1-SAM included) without per-example weights, from the layers' structure.

For a layer weight ``W`` (``_layer_structure``: a dense or convolutional layer's kernel) the
gradient of group ``k``'s loss is :math:`G_k = A_k^\top D_k`, with :math:`A_k` the layer's input
rows and :math:`D_k` the gradient of the group loss with respect to the layer's output. So:

* the clean pass is one forward and backward pass over the batch (vmapped over groups with
  ``W`` shared): zero *probes* added to every layer's output give :math:`D_k` as their
  gradients, and the layers' inputs give :math:`A_k`;
* the group gradient's norm is :math:`\lVert A_k^\top D_k \rVert^2 = \langle A_k A_k^\top,
  D_k D_k^\top \rangle` (the "ghost norm" of differentially private training; for one example
  of a dense layer, :math:`\lVert a \rVert^2 \lVert d \rVert^2`), or :math:`G_k` is formed
  explicitly when that is cheaper (``2 rows^2 > fan_in * fan_out``, the rule of Bu et al.'s
  mixed ghost clipping), and always for ASAM's scaled leaves (:math:`T \odot G_k` has no
  factored norm);
* the perturbed pass evaluates the layer at :math:`W + c_k G_k` as
  :math:`\tilde A W + c_k (\tilde A A_k^\top) D_k` (or :math:`\tilde A (c_k G_k)`), with
  :math:`\tilde A` the layer's input rows there and :math:`A_k, D_k, c_k` constants, and one
  backward pass through it gives :math:`\sum_k \nabla L_k(w + \epsilon_k)`.

Every other perturbed leaf (biases, normalization scales, weights used twice or inside
``scan``/``cond``/custom rules, ...) gets a per-group copy, as the vmap path gives every leaf:
small leaves cost nothing that way. The result is the vmap path's, to rounding.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from samx.transforms import _tree
from samx.transforms._layer_structure import (
    Layer,
    ModelStructure,
    activation_rows,
    apply_layer,
    evaluate,
    find_layers,
    output_rows,
    rows_to_output,
    weight_matrix,
)
from samx.transforms._objective import Objective, as_varying

PyTree = Any
# (objective, params, apply_perturbed) -> a scalar whose gradient in params is the perturbed
# gradient; apply_perturbed(params, inputs) is the model at params + eps (see _perturbed_gradient).
PerturbedLoss = Callable[[Objective, PyTree, Callable[[PyTree, PyTree], PyTree]], jax.Array]

logger = logging.getLogger("samx")

GROUP_PATHS = ("layers", "vmap")


class AscentRule(NamedTuple):
  """The ascent step of SAM or ASAM, leaf by leaf: which leaves are perturbed and which are
  scaled by ``T = |w| + eta`` (``None``: all; ``scaled=None`` with ``adaptive=False``: none)."""

  perturbed: list[bool] | None
  scaled: list[bool] | None
  adaptive: bool
  eta: float

  def is_perturbed(self, leaf: int) -> bool:
    return self.perturbed is None or self.perturbed[leaf]

  def is_scaled(self, leaf: int) -> bool:
    return self.adaptive and (self.scaled is None or self.scaled[leaf])


class LeafPath(NamedTuple):
  """How a transform with ``group_size`` forms one parameter leaf's group gradients.

  Attributes:
    leaf: the leaf's path in the parameters (``jax.tree_util.keystr``).
    path: ``"dense"`` or ``"conv"`` (a layer weight: factored, no per-group copy),
      ``"vmap"`` (a per-group copy of the leaf), or ``"not perturbed"`` (outside
      ``perturb_mask``: no per-group gradient needed).
    detail: for a layer weight, ``"ghost norm"`` or ``"explicit G_k"`` and the sizes; for
      ``"vmap"``, why the leaf is not a layer weight.
  """

  leaf: str
  path: str
  detail: str


@dataclasses.dataclass(frozen=True)
class GroupPlan:
  """What a transform with ``group_size`` does for each parameter leaf (see
  :func:`samx.group_plan`). ``str(plan)`` is a table."""

  leaves: tuple[LeafPath, ...]
  group_size: int

  @property
  def vmapped(self) -> tuple[LeafPath, ...]:
    """The leaves that get a per-group copy."""
    return tuple(leaf for leaf in self.leaves if leaf.path == "vmap")

  @property
  def layers(self) -> tuple[LeafPath, ...]:
    """The leaves handled as layer weights."""
    return tuple(leaf for leaf in self.leaves if leaf.path in ("dense", "conv"))

  def __str__(self) -> str:
    width = max([len(leaf.leaf) for leaf in self.leaves] + [4])
    lines = [f"group_size={self.group_size}: {len(self.layers)} layer weights, "
             f"{len(self.vmapped)} leaves by vmap"]
    lines += [f"  {leaf.leaf:<{width}}  {leaf.path:<13} {leaf.detail}" for leaf in self.leaves]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class StructuredPlan:
  """The computation's plan: the model's structure, the perturbed layer weights (with whether
  each uses the ghost norm) and the perturbed leaves that get per-group copies."""

  structure: ModelStructure
  layers: tuple[Layer, ...]
  ghost: tuple[bool, ...]
  copied: tuple[int, ...]
  reasons: dict[int, str]
  rule: AscentRule


def uses_ghost_norm(layer: Layer) -> bool:
  """Bu et al.'s rule: the Gram matrices (``rows^2`` each) when cheaper than ``G`` itself."""
  return 2 * layer.rows * layer.rows <= layer.fan_in * layer.fan_out


def plan_groups(objective: Objective, params: PyTree, group_size: int,
                rule: AscentRule) -> StructuredPlan:
  """Reads the model's layers (traced on one group of ``group_size`` examples)."""
  one_group = jax.tree.map(lambda x: x[0], objective.split_into_groups(group_size).model_inputs)
  structure = find_layers(objective.model, params, one_group)
  layers = tuple(layer for layer in structure.layers if rule.is_perturbed(layer.leaf))
  ghost = tuple(uses_ghost_norm(layer) and not rule.is_scaled(layer.leaf) for layer in layers)
  claimed = {layer.leaf for layer in layers}
  copied = tuple(leaf for leaf in range(structure.num_leaves)
                 if rule.is_perturbed(leaf) and leaf not in claimed)
  return StructuredPlan(structure, layers, ghost, copied, structure.other_uses, rule)


def describe(plan: StructuredPlan, params: PyTree, group_size: int) -> GroupPlan:
  """The plan leaf by leaf, for people."""
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(
      params)[0]]
  by_leaf = {layer.leaf: (layer, ghost) for layer, ghost in zip(plan.layers, plan.ghost,
                                                                strict=True)}
  leaves = []
  for leaf, name in enumerate(paths):
    if leaf in by_leaf:
      layer, ghost = by_leaf[leaf]
      how = "ghost norm" if ghost else "explicit G_k"
      leaves.append(LeafPath(name, layer.kind, f"{how}; rows={layer.rows}, "
                                                f"fan_in={layer.fan_in}, fan_out={layer.fan_out}"))
    elif leaf in plan.copied:
      leaves.append(LeafPath(name, "vmap", plan.reasons.get(leaf, "")))
    else:
      leaves.append(LeafPath(name, "not perturbed", ""))
  return GroupPlan(tuple(leaves), group_size)


def _matmul(a: jax.Array, b: jax.Array, dtype: Any) -> jax.Array:
  return jnp.matmul(a, b, preferred_element_type=dtype)


def structured_group_sums(
    plan: StructuredPlan, chunk: Objective, params: PyTree, rho: jax.Array | float,
    perturbed_loss: PerturbedLoss, axis_name: Hashable | None = None,
) -> tuple[PyTree, PyTree]:
  """Sums over the groups of ``chunk`` (axis 0 of its batch leaves) of the clean group
  gradients ``g_k`` and of the perturbed ones, exactly as the vmap path computes them.

  Under a mapped ``axis_name`` the probes are made varying along it, as the layers' outputs
  are: a replicated probe's gradient would be summed over devices.
  """
  leaves, treedef = jax.tree.flatten(params)
  structure, layers, copied, rule = plan.structure, plan.layers, plan.copied, plan.rule
  num_groups = jax.tree.leaves(chunk.inputs)[0].shape[0]
  shared = [leaf for leaf in range(len(leaves)) if leaf not in copied]
  dtype = _tree.accumulation_dtype(leaves)

  def assemble(shared_values: list, copied_values: list) -> list:
    values = [None] * len(leaves)
    for leaf, value in zip(shared, shared_values, strict=True):
      values[leaf] = value
    for leaf, value in zip(copied, copied_values, strict=True):
      values[leaf] = value
    return values

  # Clean pass: every group's loss, the layers' inputs and (as the probes' gradients) the
  # gradients with respect to the layers' outputs; per-group gradients of the copied leaves.
  def clean_group(shared_values, copied_values, probes, group):
    inputs_seen = [None] * len(layers)

    def probe_hook(index):
      def hook(layer, activation, weight):
        inputs_seen[index] = activation
        return apply_layer(layer, activation, weight) + probes[index]
      return hook

    hooks = {layer.key: probe_hook(index) for index, layer in enumerate(layers)}
    outputs = evaluate(structure, assemble(shared_values, copied_values), group.model_inputs,
                       hooks)
    return jnp.mean(group.losses_from_outputs(outputs)), inputs_seen

  def clean_total(shared_values, copied_values, probes):
    losses, inputs_seen = jax.vmap(clean_group, in_axes=(None, 0, 0, 0))(
        shared_values, copied_values, probes, chunk)
    return jnp.sum(losses), inputs_seen

  probes = [jnp.zeros((num_groups, *layer.output_shape), layer.output_dtype) for layer in layers]
  if axis_name is not None:
    probes = as_varying(probes, axis_name)
  copies = [jnp.broadcast_to(leaves[leaf], (num_groups, *leaves[leaf].shape)) for leaf in copied]
  (_, layer_inputs), (shared_grads, copied_grads, output_grads) = jax.value_and_grad(
      clean_total, argnums=(0, 1, 2), has_aux=True)(
          [leaves[leaf] for leaf in shared], copies, probes)
  clean_sum = assemble(shared_grads, _tree.sum_leading_axis(copied_grads))

  # Each group's ascent step, kept factored for the layer weights.
  def scale_of(leaf: int) -> jax.Array:
    return (jnp.abs(leaves[leaf]) + rule.eta).astype(dtype)

  def ascent(layer_input, output_grad, copied_grad):
    squares, layer_steps, copied_steps = [], [], []
    for layer, ghost, seen, grad_out in zip(layers, plan.ghost, layer_input, output_grad,
                                            strict=True):
      rows_in = activation_rows(layer, seen)
      rows_out = output_rows(layer, grad_out).astype(dtype)
      if ghost:
        gram_in = _matmul(rows_in, rows_in.T, dtype)
        squares.append(jnp.vdot(gram_in, _matmul(rows_out, rows_out.T, dtype)))
        layer_steps.append((rows_in, rows_out))
      else:
        gradient = _matmul(rows_in.T, rows_out, dtype)
        if rule.is_scaled(layer.leaf):
          scale = weight_matrix(layer, scale_of(layer.leaf))
          squares.append(jnp.sum(jnp.square(scale * gradient)))
          gradient = scale * scale * gradient
        else:
          squares.append(jnp.sum(jnp.square(gradient)))
        layer_steps.append(gradient)
    for leaf, gradient in zip(copied, copied_grad, strict=True):
      gradient = gradient.astype(dtype)
      if rule.is_scaled(leaf):
        squares.append(jnp.sum(jnp.square(scale_of(leaf) * gradient)))
        gradient = jnp.square(scale_of(leaf)) * gradient
      else:
        squares.append(jnp.sum(jnp.square(gradient)))
      copied_steps.append(gradient)
    inverse, ok = _tree.safe_reciprocal(jnp.sqrt(sum(squares, jnp.zeros((), dtype))))
    factor = rho * inverse

    def times_factor(x):
      return jnp.where(ok, factor * x, 0.0).astype(dtype)

    layer_steps = [(step[0], times_factor(step[1])) if ghost else times_factor(step)
                   for ghost, step in zip(plan.ghost, layer_steps, strict=True)]
    copied_steps = [times_factor(step).astype(leaves[leaf].dtype)
                    for leaf, step in zip(copied, copied_steps, strict=True)]
    return layer_steps, copied_steps

  layer_steps, copied_steps = jax.vmap(ascent)(layer_inputs, output_grads, copied_grads)

  # Perturbed pass: each layer at W + eps_k written through A_k, D_k (or G_k explicitly).
  def perturbed_group(params_now, group, steps, copied_eps):
    def apply_perturbed(values_tree, inputs):
      values = treedef.flatten_up_to(values_tree)
      for leaf, eps in zip(copied, copied_eps, strict=True):
        values[leaf] = values[leaf] + eps.astype(values[leaf].dtype)

      def shifted_hook(index):
        def hook(layer, activation, weight):
          output = apply_layer(layer, activation, weight)
          rows_now = activation_rows(layer, activation)
          if plan.ghost[index]:
            rows_in, rows_out = steps[index]
            shift = _matmul(_matmul(rows_now, rows_in.T, dtype), rows_out, dtype)
          else:
            shift = _matmul(rows_now, steps[index], dtype)
          return output + rows_to_output(layer, shift).astype(output.dtype)
        return hook

      hooks = {layer.key: shifted_hook(index) for index, layer in enumerate(layers)}
      return evaluate(structure, values, inputs, hooks)

    return perturbed_loss(group, params_now, apply_perturbed)

  def perturbed_total(params_now):
    return jnp.sum(jax.vmap(perturbed_group, in_axes=(None, 0, 0, 0))(
        params_now, chunk, layer_steps, copied_steps))

  perturbed_sum = jax.grad(perturbed_total)(params)
  return jax.tree.unflatten(treedef, clean_sum), perturbed_sum

