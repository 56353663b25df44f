"""SANER's gradient groups, split between the clean and the noisy examples."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from samx.transforms import _tree
from samx.transforms._combination import GroupFractions, group_fractions, saner_groups
from samx.transforms._objective import Objective
from samx.transforms._perturbation import sam_perturbation

PyTree = Any


class GroupSplit(NamedTuple):
  """SANER's groups and whose gradient dominates them.

  Attributes:
    fractions: fractions of components in groups A, B and C.
    noisy_share: per group (A, B, C), the share of the clean gradient's mass in the group that
      comes from the noisy examples: ``sum_j |g_noisy_j| / sum_j (|g_clean_j| + |g_noisy_j|)``
      over the group's components ``j``, where ``g = g_clean + g_noisy`` splits the batch
      gradient by example. NaN for an empty group.
  """

  fractions: GroupFractions
  noisy_share: GroupFractions


def saner_group_split(objective: Objective, params: PyTree, rho: float,
                      noisy_mask: jax.Array) -> GroupSplit:
  """SANER's groups at ``params`` (with SAM's ``g_sam``) and the noisy examples' share of each.

  Luong et al. find that group B (components SAM shrinks) carries much of the noisy examples'
  gradient; this measures it. Pure and jittable.

  Args:
    objective: the model, the loss and the batch.
    params: the parameters :math:`w`.
    rho: SAM's radius, a number >= 0 (``g_sam`` is the gradient at ``w + rho g / ||g||``).
    noisy_mask: booleans, shape ``(batch,)``: which examples have a corrupted label.

  Returns:
    :class:`GroupSplit`: the fractions of components in groups A, B and C, and the noisy
    examples' share of the gradient's magnitude in each (NaN for an empty group).
  """
  weights = jnp.asarray(noisy_mask, jnp.float32)
  n = objective.batch_size

  def part_gradient(example_weights):
    return jax.grad(lambda p: jnp.sum(example_weights * objective.losses(p)) / n)(params)

  g_noisy = part_gradient(weights)
  g_clean = part_gradient(1.0 - weights)
  g = _tree.add(g_clean, g_noisy)
  g_sam = objective.grad(_tree.add(params, sam_perturbation(g, params, jnp.asarray(rho))))
  in_b, in_c = saner_groups(g, g_sam)
  in_a = jax.tree.map(lambda b, c: ~(b | c), in_b, in_c)

  def share(mask):
    noisy = sum(jnp.sum(jnp.where(m, jnp.abs(x), 0.0))
                for m, x in zip(jax.tree.leaves(mask), jax.tree.leaves(g_noisy), strict=True))
    clean = sum(jnp.sum(jnp.where(m, jnp.abs(x), 0.0))
                for m, x in zip(jax.tree.leaves(mask), jax.tree.leaves(g_clean), strict=True))
    total = noisy + clean
    return jnp.where(total > 0, noisy / jnp.where(total > 0, total, 1.0), jnp.nan)

  return GroupSplit(group_fractions(in_b, in_c),
                    GroupFractions(share(in_a), share(in_b), share(in_c)))
