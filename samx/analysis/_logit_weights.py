"""How SAM re-weights examples: the logit term at the perturbed point relative to SGD's."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from samx.analysis._importance import residual_norms
from samx.transforms import _tree
from samx.transforms._objective import Objective
from samx.transforms._perturbation import sam_perturbation

PyTree = Any


def logit_weights(objective: Objective, params: PyTree, rho: float) -> jax.Array:
  r"""Per-example weight of 1-SAM's logit term relative to SGD's, shape ``(batch,)``.

  For example :math:`i` with its own ascent step :math:`\epsilon_i = \rho g_i / \lVert g_i
  \rVert` (1-SAM), the weight is :math:`\lVert r_i(f_i(w + \epsilon_i)) \rVert / \lVert
  r_i(f_i(w)) \rVert`, the factor by which SAM scales the example's logit term (the
  ``softmax - onehot`` residual for cross-entropy). For linear logistic regression with margin
  :math:`z_i = t_i \langle w, x_i \rangle` it is :math:`\sigma(-z_i + \rho \lVert x_i \rVert) /
  \sigma(-z_i)`, increasing in :math:`z_i`: SAM up-weights the examples it already fits, which
  are mostly the clean ones (Baek et al. 2024, Lemma 3.1). Examples with a zero residual get
  weight 1. Pure and jittable.

  Args:
    objective: the model, the loss and the batch.
    params: the parameters :math:`w`.
    rho: SAM's radius, a number >= 0.

  Returns:
    The weights, shape ``(batch,)``.
  """

  def one_example(example: Objective) -> jax.Array:
    clean_outputs = example.apply(params)
    eps = sam_perturbation(example.grad(params), params, jnp.asarray(rho))
    perturbed_outputs = example.apply(_tree.add(params, eps))
    before = residual_norms(example, clean_outputs)[0]
    after = residual_norms(example, perturbed_outputs)[0]
    return jnp.where(before > 0, after / jnp.where(before > 0, before, 1.0), 1.0)

  return jax.vmap(one_example)(objective.split_into_groups(1))


class SplitSummary(NamedTuple):
  """Mean of a per-example quantity over the clean and over the noisy examples."""

  clean: jax.Array
  noisy: jax.Array


def split_by_mask(values: jax.Array, noisy_mask: jax.Array) -> SplitSummary:
  """Means of ``values`` over ``~noisy_mask`` and over ``noisy_mask`` (NaN for an empty side).

  Args:
    values: a per-example quantity, shape ``(n,)``.
    noisy_mask: booleans, shape ``(n,)``: which examples have a corrupted label.

  Returns:
    :class:`SplitSummary` ``(clean, noisy)``.
  """
  noisy_mask = jnp.asarray(noisy_mask, bool)

  def masked_mean(mask):
    count = jnp.sum(mask)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)

  return SplitSummary(clean=masked_mean(~noisy_mask), noisy=masked_mean(noisy_mask))
