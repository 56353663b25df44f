"""The layers of a model, read from its jaxpr: where a weight multiplies an activation.

A dense layer computes ``dot_general(x, W)`` and a convolution ``conv_general_dilated(x, W)``.
For both, the gradient of a loss in ``W`` is ``A^T D``: ``A`` (``rows x fan_in``) holds the
layer's inputs as rows (a dense layer's rows are its input's free dimensions; a convolution's
are the input patches at every output position), and ``D`` (``rows x fan_out``) the gradients
of the loss with respect to the layer's outputs, one row per output position. That product, its
norm and the layer's output at ``W + c A^T D`` never need a per-example copy of ``W``, which is
what makes exact 1-SAM cheap (``_structured_groups``).

The layers are found by tracing the model's ``apply_fn`` to a jaxpr (as kfac-jax does to find
its layers), so any pure JAX function is covered, Flax or not: a parameter leaf is a *layer
weight* if its only use is as the weight operand of one ``dot_general`` (without batch
dimensions on the weight's side) or one ungrouped ``conv_general_dilated``, possibly after a
dtype cast and inside nested ``jit`` calls. Every other leaf, and the reason, is reported, so
the caller can treat it another way.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

PyTree = Any
Key = tuple[int, ...]  # indices of an equation through the nested calls that contain it

CALLS = ("jit", "pjit", "closed_call")
_VIEWS = ("convert_element_type",)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer weight's use: ``dot_general`` (kind ``"dense"``) or ``conv_general_dilated``
  (``"conv"``) at equation ``key``, with the weight as operand ``weight_operand``.

  ``rows``, ``fan_in`` and ``fan_out`` are the sizes of ``A`` and ``D`` for one evaluation of
  the traced function (one group of examples).
  """

  key: Key
  kind: str
  leaf: int
  weight_operand: int
  params: Any  # the equation's parameters (dimension numbers, strides, ...)
  weight_shape: tuple[int, ...]
  activation_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  output_dtype: Any
  rows: int
  fan_in: int
  fan_out: int


@dataclasses.dataclass(frozen=True)
class ModelStructure:
  """What :func:`find_layers` read from a model.

  Attributes:
    jaxpr: the traced ``apply_fn(params, inputs)``.
    num_leaves: how many leading inputs of ``jaxpr`` are parameter leaves.
    layers: the layer weights' uses, one per leaf at most.
    other_uses: for each parameter leaf that is not a layer weight, why not.
    output_tree: the structure of ``apply_fn``'s output.
  """

  jaxpr: jex_core.ClosedJaxpr
  num_leaves: int
  layers: tuple[Layer, ...]
  other_uses: dict[int, str]
  output_tree: Any


def sub_jaxpr(eqn: Any) -> jex_core.ClosedJaxpr:
  return eqn.params["jaxpr"] if "jaxpr" in eqn.params else eqn.params["call_jaxpr"]


def _dense_layer(eqn: Any, key: Key, leaf: int, weight_operand: int) -> Layer | str:
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
  if lhs_batch or rhs_batch:
    return "dot_general with batch dimensions"
  weight, activation = eqn.invars[weight_operand].aval, eqn.invars[1 - weight_operand].aval
  weight_contract = (lhs_contract, rhs_contract)[weight_operand]
  activation_contract = (lhs_contract, rhs_contract)[1 - weight_operand]
  fan_in = math.prod(weight.shape[d] for d in weight_contract)
  return Layer(
      key=key, kind="dense", leaf=leaf, weight_operand=weight_operand, params=eqn.params,
      weight_shape=tuple(weight.shape), activation_shape=tuple(activation.shape),
      output_shape=tuple(eqn.outvars[0].aval.shape), output_dtype=eqn.outvars[0].aval.dtype,
      rows=math.prod(size for d, size in enumerate(activation.shape)
                     if d not in activation_contract),
      fan_in=fan_in, fan_out=math.prod(weight.shape) // fan_in)


def _conv_layer(eqn: Any, key: Key, leaf: int) -> Layer | str:
  if eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1:
    return "grouped convolution"
  weight, activation = eqn.invars[1].aval, eqn.invars[0].aval
  output = eqn.outvars[0].aval
  out_spec = eqn.params["dimension_numbers"].out_spec
  fan_out = weight.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
  return Layer(
      key=key, kind="conv", leaf=leaf, weight_operand=1, params=eqn.params,
      weight_shape=tuple(weight.shape), activation_shape=tuple(activation.shape),
      output_shape=tuple(output.shape), output_dtype=output.dtype,
      rows=math.prod(output.shape) // output.shape[out_spec[1]],
      fan_in=math.prod(weight.shape) // fan_out, fan_out=fan_out)


def _walk(jaxpr: Any, views: dict[Any, int], prefix: Key, layers: dict[int, list],
          other: dict[int, str]) -> None:
  """Records every use of a parameter leaf (``views`` maps variables to the leaf they hold)."""
  def refuse(leaf: int, reason: str) -> None:
    other.setdefault(leaf, reason)

  for index, eqn in enumerate(jaxpr.eqns):
    key = (*prefix, index)
    held = [None if isinstance(v, jex_core.Literal) else views.get(v) for v in eqn.invars]
    if all(leaf is None for leaf in held):
      continue
    name = eqn.primitive.name
    if name in _VIEWS:
      if held[0] is not None:
        views[eqn.outvars[0]] = held[0]
    elif name in CALLS:
      sub = sub_jaxpr(eqn).jaxpr
      sub_views = {var: leaf for var, leaf in zip(sub.invars, held, strict=True)
                   if leaf is not None}
      _walk(sub, sub_views, key, layers, other)
    elif name == "dot_general" and sum(leaf is not None for leaf in held) == 1:
      operand = 0 if held[0] is not None else 1
      leaf = cast(int, held[operand])  # the one operand that holds a leaf
      found = _dense_layer(eqn, key, leaf, operand)
      (layers.setdefault(leaf, []).append(found) if isinstance(found, Layer)
       else refuse(leaf, found))
    elif name == "conv_general_dilated" and held[0] is None:
      leaf = cast(int, held[1])  # the kernel: the input holds none, and one of them does
      found = _conv_layer(eqn, key, leaf)
      (layers.setdefault(leaf, []).append(found) if isinstance(found, Layer)
       else refuse(leaf, found))
    else:
      for leaf in held:
        if leaf is not None:
          refuse(leaf, f"used by {name}")
  for var in jaxpr.outvars:
    if not isinstance(var, jex_core.Literal) and var in views:
      refuse(views[var], "returned without passing through a layer")


def find_layers(apply_fn: Callable[[PyTree, PyTree], PyTree], params: PyTree,
                inputs: PyTree) -> ModelStructure:
  """Traces ``apply_fn(params, inputs)`` and finds its layer weights (see the module doc)."""
  closed, output_shape = jax.make_jaxpr(apply_fn, return_shape=True)(params, inputs)
  num_leaves = len(jax.tree.leaves(params))
  jaxpr = closed.jaxpr
  views = {var: leaf for leaf, var in enumerate(jaxpr.invars[:num_leaves])}
  found: dict[int, list[Layer]] = {}
  other: dict[int, str] = {}
  _walk(jaxpr, views, (), found, other)
  layers = []
  for leaf in range(num_leaves):
    uses = found.get(leaf, [])
    if leaf in other:
      continue
    if not uses:
      other[leaf] = "not used by the model"
    elif len(uses) > 1:
      other[leaf] = f"used by {len(uses)} operations"
    else:
      layers.append(uses[0])
  return ModelStructure(closed, num_leaves, tuple(layers), other,
                        jax.tree.structure(output_shape))


def bind_equation(eqn: Any, values: Sequence[Any]) -> list[Any]:
  bind_params = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(bind_params, tuple):  # JAX releases that return (subfuns, params)
    subfuns, bind_params = bind_params
    values = [*subfuns, *values]
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*values, **bind_params)
  return list(out) if eqn.primitive.multiple_results else [out]


LayerHook = Callable[[Layer, jax.Array, jax.Array], jax.Array]
# (equation, its key, its input values) -> its outputs, or None to bind it as it is.
EquationRule = Callable[[Any, Key, list[Any]], list[Any] | None]


def interpret(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], rule: EquationRule,
              prefix: Key = ()) -> list[Any]:
  """Evaluates ``jaxpr`` equation by equation; ``rule`` may compute an equation's outputs
  itself (and recurse with :func:`interpret` into a call's jaxpr), else it is bound as it is."""
  env: dict[Any, Any] = {}

  def read(var: Any) -> Any:
    return var.val if isinstance(var, jex_core.Literal) else env[var]

  for var, value in zip(jaxpr.constvars, consts, strict=True):
    env[var] = value
  for var, value in zip(jaxpr.invars, args, strict=True):
    env[var] = value
  for index, eqn in enumerate(jaxpr.eqns):
    key = (*prefix, index)
    values = [read(var) for var in eqn.invars]
    outs = rule(eqn, key, values)
    if outs is None:
      outs = bind_equation(eqn, values)
    for var, value in zip(eqn.outvars, outs, strict=True):
      env[var] = value
  return [read(var) for var in jaxpr.outvars]


def evaluate(structure: ModelStructure, leaves: Sequence[jax.Array], inputs: PyTree,
             hooks: dict[Key, LayerHook]) -> PyTree:
  """``apply_fn`` at parameter leaves ``leaves``, with the output of each layer whose key is in
  ``hooks`` computed by ``hooks[key](layer, activation, weight)`` instead of by its operation."""
  hooked = {layer.key: layer for layer in structure.layers if layer.key in hooks}
  calls = frozenset(key[:depth] for key in hooked for depth in range(1, len(key)))

  def rule(eqn: Any, key: Key, values: list[Any]) -> list[Any] | None:
    if key in hooked:
      layer = hooked[key]
      return [hooks[key](layer, values[1 - layer.weight_operand], values[layer.weight_operand])]
    if key in calls:
      sub = sub_jaxpr(eqn)
      return interpret(sub.jaxpr, sub.consts, values, rule, key)
    return None

  args = [*leaves, *jax.tree.leaves(inputs)]
  outputs = interpret(structure.jaxpr.jaxpr, structure.jaxpr.consts, args, rule)
  return jax.tree.unflatten(structure.output_tree, outputs)


def apply_layer(layer: Layer, activation: jax.Array, weight: jax.Array) -> jax.Array:
  """The layer's own operation on ``activation`` and ``weight`` (a weight of the traced dtype,
  or another one that is cast to it)."""
  primitive = jax.lax.dot_general_p if layer.kind == "dense" else jax.lax.conv_general_dilated_p
  operands = [activation, weight] if layer.weight_operand == 1 else [weight, activation]
  return primitive.bind(*operands, **layer.params)


# Rows and columns: every layer's gradient in its weight is A^T D in these layouts.


def _dense_dims(layer: Layer) -> tuple[tuple[int, ...], ...]:
  """(activation free dims, activation contracting dims, weight contracting, weight free)."""
  contract = layer.params["dimension_numbers"][0]
  weight_contract = tuple(contract[layer.weight_operand])
  activation_contract = tuple(contract[1 - layer.weight_operand])
  activation_free = tuple(d for d in range(len(layer.activation_shape))
                          if d not in activation_contract)
  weight_free = tuple(d for d in range(len(layer.weight_shape)) if d not in weight_contract)
  return activation_free, activation_contract, weight_contract, weight_free


def _conv_canonical_input(layer: Layer, activation: jax.Array) -> jax.Array:
  lhs_spec = layer.params["dimension_numbers"].lhs_spec
  return jnp.transpose(activation, lhs_spec)  # (N, C, spatial...)


def activation_rows(layer: Layer, activation: jax.Array) -> jax.Array:
  """``A``: the layer's input as ``(rows, fan_in)``, columns in :func:`weight_matrix`'s order."""
  if layer.kind == "dense":
    free, contract, _, _ = _dense_dims(layer)
    return jnp.transpose(activation, (*free, *contract)).reshape(layer.rows, layer.fan_in)
  return _patches(layer, _conv_canonical_input(layer, activation)).reshape(
      layer.rows, layer.fan_in)


def _patches(layer: Layer, canonical: jax.Array) -> jax.Array:
  """The input windows of every output position, ``(N, *out_spatial, C * prod(window))`` with
  the channel major, from ``(N, C, *spatial)``: strided slices of the padded (and, for
  ``lhs_dilation``, dilated) input, one per window offset, so no arithmetic at all (unlike
  ``lax.conv_general_dilated_patches``, a convolution with an identity kernel)."""
  params, dims = layer.params, layer.params["dimension_numbers"]
  window = [layer.weight_shape[d] for d in dims.rhs_spec[2:]]
  out_spatial = [layer.output_shape[d] for d in dims.out_spec[2:]]
  padded = jax.lax.pad(canonical, jnp.zeros((), canonical.dtype), [
      (0, 0, 0), (0, 0, 0),
      *[(low, high, dilation - 1) for (low, high), dilation in zip(
          params["padding"], params["lhs_dilation"], strict=True)]])
  slices = []
  for offset in itertools.product(*[range(size) for size in window]):
    start = [0, 0, *[o * d for o, d in zip(offset, params["rhs_dilation"], strict=True)]]
    limit = [*padded.shape[:2], *[s + (n - 1) * stride + 1 for s, n, stride in zip(
        start[2:], out_spatial, params["window_strides"], strict=True)]]
    slices.append(jax.lax.slice(padded, start, limit, [1, 1, *params["window_strides"]]))
  stacked = jnp.stack(slices, axis=2)  # (N, C, window positions, *out_spatial)
  stacked = stacked.reshape(stacked.shape[0], -1, *out_spatial)
  return jnp.moveaxis(stacked, 1, -1)


def output_rows(layer: Layer, output: jax.Array) -> jax.Array:
  """``D``-shaped view of an array shaped like the layer's output: ``(rows, fan_out)``."""
  if layer.kind == "dense":
    if layer.weight_operand == 1:
      return output.reshape(layer.rows, layer.fan_out)
    return output.reshape(layer.fan_out, layer.rows).T
  out_spec = layer.params["dimension_numbers"].out_spec
  canonical = jnp.transpose(output, (out_spec[0], *out_spec[2:], out_spec[1]))
  return canonical.reshape(layer.rows, layer.fan_out)


def rows_to_output(layer: Layer, rows: jax.Array) -> jax.Array:
  """The inverse of :func:`output_rows`."""
  if layer.kind == "dense":
    if layer.weight_operand == 1:
      return rows.reshape(layer.output_shape)
    return rows.T.reshape(layer.output_shape)
  out_spec = layer.params["dimension_numbers"].out_spec
  order = (out_spec[0], *out_spec[2:], out_spec[1])
  canonical = rows.reshape([layer.output_shape[d] for d in order])
  return jnp.transpose(canonical, tuple(np.argsort(order).tolist()))


def _weight_order(layer: Layer) -> tuple[int, ...]:
  if layer.kind == "dense":
    _, _, contract, free = _dense_dims(layer)
    return (*contract, *free)
  rhs_spec = layer.params["dimension_numbers"].rhs_spec
  return (*rhs_spec[1:], rhs_spec[0])  # (in channels, window..., out channels)


def weight_matrix(layer: Layer, weight: jax.Array) -> jax.Array:
  """The weight as ``(fan_in, fan_out)``, so that the layer's output rows are ``A @ it``."""
  return jnp.transpose(weight, _weight_order(layer)).reshape(layer.fan_in, layer.fan_out)


def matrix_to_weight(layer: Layer, matrix: jax.Array) -> jax.Array:
  """The inverse of :func:`weight_matrix`."""
  order = _weight_order(layer)
  return jnp.transpose(matrix.reshape([layer.weight_shape[d] for d in order]),
                       tuple(np.argsort(order).tolist()))
