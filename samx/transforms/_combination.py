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


def gsam_combination(clean: PyTree, perturbed: PyTree, alpha: jax.Array) -> PyTree:
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
  """Fractions of components in groups A, B and C from the masks of B and C."""
  total = sum(leaf.size for leaf in jax.tree.leaves(in_b))
  count_b = sum(jnp.sum(mask, dtype=jnp.int32) for mask in jax.tree.leaves(in_b))
  count_c = sum(jnp.sum(mask, dtype=jnp.int32) for mask in jax.tree.leaves(in_c))

  def fraction(count):
    return (count / total).astype(jnp.float32)

  return GroupFractions(
      a=fraction(total - count_b - count_c), b=fraction(count_b), c=fraction(count_c))


def saner_reweighting(
    clean: PyTree, variant: PyTree, beta: jax.Array
) -> tuple[PyTree, GroupFractions]:
  """SANER's update, ``g_variant`` with group B scaled by ``beta``, and the group fractions."""
  in_b, in_c = saner_groups(clean, variant)
  reweighted = jax.tree.map(
      lambda v, b: jnp.where(b, beta * v, v).astype(v.dtype), variant, in_b)
  return reweighted, group_fractions(in_b, in_c)
