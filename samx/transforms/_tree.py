"""Small pytree arithmetic shared by the SAM-family transforms (norms accumulate in float32).

Where ``optax.tree_utils`` has a function that gives the same results in the same dtypes, the
transforms call it; the helpers here are those whose dtypes differ from optax's, as each says.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def accumulation_dtype(leaves: list[jax.Array]) -> jnp.dtype:
  """float32, or wider if a leaf is wider (float64 under ``jax_enable_x64``)."""
  return jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))


def global_norm(tree: PyTree) -> jax.Array:
  """The Euclidean norm of all leaves of ``tree`` as one vector, in at least float32.

  Not ``optax.tree_utils.tree_norm``, which squares and sums in the leaves' dtype: bfloat16
  leaves would give a bfloat16 norm, summed in bfloat16.
  """
  leaves = jax.tree.leaves(tree)
  dtype = accumulation_dtype(leaves)
  squares = [jnp.sum(jnp.square(leaf.astype(dtype))) for leaf in leaves]
  return jnp.sqrt(sum(squares, jnp.zeros((), dtype)))


def stable_global_norm(tree: PyTree) -> jax.Array:
  """:func:`global_norm` computed as ``s * ||tree / s||`` with ``s`` the largest magnitude, so
  that it is finite whenever the norm itself is representable (a gradient of ``1e30`` per
  element squares to ``inf`` in float32, its norm does not). One more pass over the leaves."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  dtype = accumulation_dtype(leaves)
  largest = max_magnitude(leaves, dtype)
  inverse = jnp.where(largest > 0, 1.0 / jnp.where(largest > 0, largest, 1.0), 0.0)
  return largest * global_norm([leaf.astype(dtype) * inverse for leaf in leaves])


def max_magnitude(leaves: list[jax.Array], dtype: jnp.dtype) -> jax.Array:
  """The largest ``|x|`` over all ``leaves``, as ``dtype`` (0 for no elements)."""
  return functools.reduce(jnp.maximum, [jnp.max(jnp.abs(leaf), initial=0).astype(dtype)
                                        for leaf in leaves], jnp.zeros((), dtype))


def all_finite(tree: PyTree) -> jax.Array:
  """Whether every element of every leaf of ``tree`` is finite (a boolean scalar)."""
  flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
  return functools.reduce(jnp.logical_and, flags, jnp.asarray(True))


def vdot(a: PyTree, b: PyTree) -> jax.Array:
  """The inner product of two pytrees of the same structure, in at least float32.

  Not ``optax.tree_utils.tree_vdot``, which multiplies and sums in the leaves' dtype (bfloat16
  for bfloat16 leaves), nor ``jnp.vdot``, which flattens each leaf: under sharded parameters
  XLA gathers a leaf whole to flatten it, an all-gather that the SGD step does not have. An
  elementwise product summed over all axes needs none.
  """
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  dtype = accumulation_dtype(leaves_a + leaves_b)
  products = [jnp.sum(x.astype(dtype) * y.astype(dtype))
              for x, y in zip(leaves_a, leaves_b, strict=True)]
  return sum(products, jnp.zeros((), dtype))


def add(a: PyTree, b: PyTree) -> PyTree:
  """``a + b`` leafwise, keeping the dtype of ``a``.

  Not ``optax.tree_utils.tree_add``, which promotes: bfloat16 parameters plus a float32
  perturbation would give float32 parameters.
  """
  return jax.tree.map(lambda x, y: x + y.astype(x.dtype), a, b)


def scale(factor: jax.Array | float, tree: PyTree) -> PyTree:
  """``factor * tree`` leafwise, keeping each leaf's dtype.

  Not ``optax.tree_utils.tree_scale``, which promotes: a float32 array ``factor`` times
  bfloat16 leaves gives float32 leaves.
  """
  return jax.tree.map(lambda x: (factor * x).astype(x.dtype), tree)


def safe_reciprocal(norm: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(1 / norm, ok)`` where ``ok`` says the norm is positive and finite; ``1 / norm`` is 0 if not.

  The guard is what keeps a zero or non-finite gradient from becoming a NaN perturbation.
  """
  ok = jnp.isfinite(norm) & (norm > 0)
  return jnp.where(ok, 1.0 / jnp.where(ok, norm, 1.0), 0.0), ok


def sum_leading_axis(tree: PyTree) -> PyTree:
  """Leafwise sum over axis 0, by repeatedly adding the two halves of the axis.

  Same sum as ``jnp.sum(x, axis=0)``, but XLA:CPU lays a reduction over the leading axis of a
  vmapped gradient out so badly that the gradient's own matmuls become several times slower;
  adding contiguous halves keeps the default layout (measured in benchmarks/step_cost.py).
  """

  def halving_sum(x: jax.Array) -> jax.Array:
    while x.shape[0] > 1:
      half = x.shape[0] // 2
      odd_one = x[2 * half:]
      x = x[:half] + x[half:2 * half]
      if odd_one.shape[0]:
        x = x.at[0].add(odd_one[0])
    return x[0]

  return jax.tree.map(halving_sum, tree)
