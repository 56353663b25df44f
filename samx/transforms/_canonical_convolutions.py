"""Convolutions in the layout XLA:CPU's fast kernels take, for code inside ``lax.cond``.

The cheaper variants (LookSAM, AE-SAM) evaluate SAM's second gradient in one branch of a
``jax.lax.cond``, so that the other branch costs one gradient. JAX writes a convolution's
weight gradient as a convolution with its own dimension order (``f01b_i01o->01bf``); outside
control flow XLA:CPU rewrites it to the order its fast convolution kernels take
(``b01f_01io->b01f``), but inside a conditional's branch it does not, and the branch runs many
times slower (31x for four 3x3 convolutions, ``benchmarks/conditional_conv.py``).

:func:`with_canonical_convolutions` rewrites a function's convolutions itself: it traces the
function to a jaxpr and evaluates it with every ``conv_general_dilated`` applied to operands
transposed to ``(batch, spatial..., features)`` and ``(spatial..., in, out)``, the result
transposed back. The values are the same convolutions'; only the layout XLA sees changes. It
is applied on the CPU backend only: the other compilers choose convolution layouts themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samx.transforms._layer_structure import CALLS, interpret, sub_jaxpr


def canonical_convolution(lhs: jax.Array, rhs: jax.Array, *, dimension_numbers: Any,
                          **params: Any) -> jax.Array:
  """``conv_general_dilated`` with ``params`` computed in the canonical layout: input
  ``(N, spatial..., C)``, kernel ``(spatial..., I, O)``, output ``(N, spatial..., C)``; the
  operands and the result are transposed from and to ``dimension_numbers``' order."""
  numbers = dimension_numbers
  spatial = len(numbers.lhs_spec) - 2
  lhs_order = (numbers.lhs_spec[0], *numbers.lhs_spec[2:], numbers.lhs_spec[1])
  rhs_order = (*numbers.rhs_spec[2:], numbers.rhs_spec[1], numbers.rhs_spec[0])
  out_order = (numbers.out_spec[0], *numbers.out_spec[2:], numbers.out_spec[1])
  canonical = jax.lax.ConvDimensionNumbers(
      lhs_spec=(0, spatial + 1, *range(1, spatial + 1)),
      rhs_spec=(spatial + 1, spatial, *range(spatial)),
      out_spec=(0, spatial + 1, *range(1, spatial + 1)))
  output = jax.lax.conv_general_dilated_p.bind(
      jnp.transpose(lhs, lhs_order), jnp.transpose(rhs, rhs_order),
      dimension_numbers=canonical, **params)
  return jnp.transpose(output, tuple(np.argsort(out_order).tolist()))


def _canonical_rule(eqn: Any, key: Any, values: list[Any]) -> list[Any] | None:
  """Every convolution in the canonical layout, in nested calls too; the rest as it is."""
  if eqn.primitive.name == "conv_general_dilated":
    with eqn.ctx.manager:
      return [canonical_convolution(*values, **eqn.params)]
  if eqn.primitive.name in CALLS:
    sub = sub_jaxpr(eqn)
    return interpret(sub.jaxpr, sub.consts, values, _canonical_rule, key)
  return None


def with_canonical_convolutions(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with its convolutions in the canonical layout (see the module doc) on the CPU
  backend; ``fn`` itself elsewhere, and where it has no convolution."""
  if jax.default_backend() != "cpu":
    return fn

  def rewritten(*args: Any) -> Any:
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    if not any(eqn.primitive.name == "conv_general_dilated"
               for eqn in _all_equations(closed.jaxpr)):
      return fn(*args)
    outputs = interpret(closed.jaxpr, closed.consts, jax.tree.leaves(args), _canonical_rule)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

  return rewritten


def _all_equations(jaxpr: Any):
  for eqn in jaxpr.eqns:
    yield eqn
    if eqn.primitive.name in CALLS:
      yield from _all_equations(sub_jaxpr(eqn).jaxpr)
