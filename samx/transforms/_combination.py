"""How the perturbed gradient is combined with the clean one: GSAM's and SANER's rules."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from samx.transforms import _tree

PyTree = Any


class GroupFractions(NamedTuple):
  """Fractions of gradient components in SANER's groups (Luong et al. 2024).

  With ``r = g_variant / g`` elementwise, ``a`` is the fraction with ``r >= 1`` (SAM up-weights
  or keeps the component), ``b`` the fraction with ``0 < r < 1`` (SAM down-weights it; SANER
  scales it by ``beta``) and ``c`` the fraction with ``r <= 0`` (SAM flips or zeroes it). Where
  ``g = 0``, ``r`` is read as IEEE division gives it: ``+inf`` (A) or ``-inf`` (C) by the sign of
  ``g_variant``; ``0 / 0`` counts as A. ``a + b + c = 1``.
  """

  a: jax.Array
  b: jax.Array
  c: jax.Array


def gsam_combination(clean: PyTree, perturbed: PyTree, alpha: jax.Array | float) -> PyTree:
  """``g_sam - alpha * g_perp`` with ``g_perp`` the part of ``g`` orthogonal to ``g_sam`` (GSAM).

  If ``g_sam`` is zero, all of ``g`` counts as orthogonal to it.
  """
  inverse_norm, _ = _tree.safe_reciprocal(_tree.global_norm(perturbed))
  projection = _tree.vdot(clean, perturbed) * jnp.square(inverse_norm)
  return jax.tree.map(
      lambda g, p: (p - alpha * (g - projection * p)).astype(p.dtype), clean, perturbed)


def saner_groups(clean: PyTree, variant: PyTree) -> tuple[PyTree, PyTree]:
  """Boolean masks ``(in_b, in_c)`` of SANER's groups B and C, from signs and magnitudes.

  ``0 < v / g < 1`` iff ``g`` and ``v`` have the same sign and ``|v| < |g|``; ``v / g <= 0`` iff
  ``g != 0`` and ``v`` is zero or of the other sign, or ``g = 0`` and ``v < 0`` (``r = -inf``).
  No division and no product (which could underflow) is formed.
  """

  def in_b(g: jax.Array, v: jax.Array) -> jax.Array:
    same_sign = ((g > 0) & (v > 0)) | ((g < 0) & (v < 0))
    return same_sign & (jnp.abs(v) < jnp.abs(g))

  def in_c(g: jax.Array, v: jax.Array) -> jax.Array:
    return ((g > 0) & (v <= 0)) | ((g < 0) & (v >= 0)) | ((g == 0) & (v < 0))

  return jax.tree.map(in_b, clean, variant), jax.tree.map(in_c, clean, variant)


def group_fractions(in_b: PyTree, in_c: PyTree) -> GroupFractions:
  """Fractions of components in groups A, B and C from the masks of B and C.

  The masks are summed in float32, which XLA:CPU reduces about twice as fast as int32; the
  fractions are float32 anyway, so nothing is lost that they could show. With no components at
  all (no parameters) the three fractions are 0.
  """
  total = sum(leaf.size for leaf in jax.tree.leaves(in_b))
  if total == 0:
    return GroupFractions(*(jnp.zeros([], jnp.float32) for _ in GroupFractions._fields))

  def count(masks: PyTree) -> jax.Array:
    return sum((jnp.sum(mask, dtype=jnp.float32) for mask in jax.tree.leaves(masks)),
               jnp.zeros([], jnp.float32))

  b, c = count(in_b) / total, count(in_c) / total
  return GroupFractions(a=jnp.maximum(1.0 - b - c, 0.0), b=b, c=c)


def saner_reweighting(
    clean: PyTree, variant: PyTree, beta: jax.Array | float, *, track_groups: bool = True
) -> tuple[PyTree, GroupFractions | None]:
  """SANER's update, ``g_variant`` with group B scaled by ``beta``, and the group fractions.

  The fractions cost one more pass over ``g`` and ``g_variant``; ``track_groups=False`` skips
  them and returns ``None`` in their place.
  """
  in_b, in_c = saner_groups(clean, variant)
  reweighted = jax.tree.map(
      lambda v, b: jnp.where(b, beta * v, v).astype(v.dtype), variant, in_b)
  return reweighted, group_fractions(in_b, in_c) if track_groups else None
