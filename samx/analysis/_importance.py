"""Per-example importance weights at ``w`` and at SAM's phantom point, and how equal they are.

Springer, Nagarajan & Raghunathan (ICLR 2024, "SAM Enhances Feature Quality via Balanced
Learning") write the gradient of a margin loss as a weighted sum of the examples' output
gradients, :math:`\\nabla L(w) = \\frac1n \\sum_i \\lambda_i(w)\\, \\nabla_w f_i(w)` with
:math:`\\lambda_i = -\\ell'(y_i f_i)` (for the logistic loss :math:`\\sigma(-y_i f_i)`), and SAM's
update as the same sum at the *phantom* parameters :math:`\\tilde w = w + \\epsilon`. The
importance weights :math:`\\tilde\\lambda_i = \\lambda_i(\\tilde w)` are more equal than
SGD's: the ascent step suppresses the well-learned (easy) feature, so the examples it fits
keep a weight and the rest of the signal keeps being learned. Their Lorenz curves and Gini
coefficients say how equal a set of weights is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from samx.transforms import _tree
from samx.transforms._objective import Objective
from samx.transforms._perturbation import sam_perturbation

PyTree = Any


def residual_norms(objective: Objective, outputs: PyTree) -> jax.Array:
  """``||d loss_i / d f_i||`` for every example: its weight in the gradient, shape ``(batch,)``.

  For the logistic loss on one output this is :math:`\\sigma(-y_i f_i)`; for softmax
  cross-entropy, :math:`\\lVert \\mathrm{softmax}(f_i) - e_{y_i} \\rVert`.

  Args:
    objective: the loss and the batch (its ``loss_fn`` is differentiated in the outputs).
    outputs: the model's outputs on ``objective.inputs``, batch along axis 0.

  Returns:
    The norms, shape ``(batch,)``.
  """
  residuals = jax.grad(lambda out: objective.losses_from_outputs(out).sum())(outputs)
  squares = sum(jnp.sum(jnp.square(r.reshape(r.shape[0], -1)), axis=1)
                for r in jax.tree.leaves(residuals))
  return jnp.sqrt(squares)


class ImportanceWeights(NamedTuple):
  """Per-example importance weights, each normalised to sum to one over the batch.

  Attributes:
    real: :math:`\\lambda_i(w)`, what an SGD step weights the examples by.
    phantom: :math:`\\lambda_i(w + \\epsilon)`, what a SAM step weights them by.
  """

  real: jax.Array
  phantom: jax.Array


def _normalised(weights: jax.Array) -> jax.Array:
  total = jnp.sum(weights)
  return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 1.0 / weights.size)


def importance_weights(objective: Objective, params: PyTree, rho: float,
                       group_size: int | None = None) -> ImportanceWeights:
  r"""Importance weights of the examples at ``params`` and at SAM's phantom point.

  The weight of example :math:`i` is the norm of its loss's gradient with respect to its
  outputs, :math:`\lambda_i = \lVert \partial \ell_i / \partial f_i \rVert` (for the logistic
  loss, Springer et al.'s :math:`-\ell'(y_i f_i) = \sigma(-y_i f_i)`), evaluated at
  :math:`w` (``real``) and at the phantom parameters :math:`\tilde w = w + \epsilon` with SAM's
  ascent step :math:`\epsilon = \rho\, g / \lVert g \rVert` (``phantom``). ``group_size=None``
  takes :math:`g` over the whole batch (SAM's step); ``group_size=m`` gives every group of
  ``m`` examples its own :math:`\epsilon` (m-sharpness; ``1`` is Springer et al.'s 1-SAM).
  Both are normalised to sum to one, so :func:`gini_coefficient` and :func:`lorenz_curve`
  compare their spread. Pure and jittable (``rho`` and ``group_size`` static).

  Args:
    objective: the model, the loss and the batch.
    params: the parameters :math:`w`.
    rho: SAM's radius, a number >= 0.
    group_size: ``None`` (one ascent step for the batch) or the examples per group.

  Returns:
    :class:`ImportanceWeights` ``(real, phantom)``, each of shape ``(batch,)`` summing to one.

  Example::

    >>> import jax.numpy as jnp, samx
    >>> x = jnp.array([[2.0, 0.0], [0.5, 0.1], [-0.2, 1.0]]); y = jnp.array([1.0, 1.0, -1.0])
    >>> objective = samx.Objective(lambda w, x: x @ w,
    ...                            lambda f, y: jnp.logaddexp(0.0, -y * f), x, y)
    >>> weights = samx.analysis.importance_weights(objective, jnp.array([1.0, -0.5]), 0.5)
    >>> bool(samx.analysis.gini_coefficient(weights.phantom)
    ...      < samx.analysis.gini_coefficient(weights.real))
    True
  """
  real = residual_norms(objective, objective.apply(params))

  def phantom_of(group: Objective) -> jax.Array:
    eps = sam_perturbation(group.grad(params), params, jnp.asarray(rho, jnp.float32))
    outputs = group.apply(_tree.add(params, eps))
    return residual_norms(group, outputs)

  if group_size is None:
    phantom = phantom_of(objective)
  else:
    phantom = jax.vmap(phantom_of)(objective.split_into_groups(group_size)).reshape(-1)
  return ImportanceWeights(_normalised(real), _normalised(phantom))


def lorenz_curve(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Lorenz curve of non-negative ``weights``: ``(population_share, weight_share)``.

  Both have ``n + 1`` points from ``(0, 0)`` to ``(1, 1)``: the examples sorted from the
  smallest weight up, ``weight_share[k]`` is the share of the total held by the ``k``
  smallest. Equal weights give the diagonal; the more unequal, the further below it.

  Args:
    weights: non-negative numbers, shape ``(n,)``.

  Returns:
    ``(population_share, weight_share)``, each of shape ``(n + 1,)``.
  """
  weights = jnp.sort(jnp.ravel(jnp.asarray(weights, jnp.float32)))
  n = weights.size
  cumulative = jnp.concatenate([jnp.zeros(1, weights.dtype), jnp.cumsum(weights)])
  total = cumulative[-1]
  share = jnp.where(total > 0, cumulative / jnp.where(total > 0, total, 1.0),
                    jnp.arange(n + 1) / n)
  return jnp.arange(n + 1, dtype=weights.dtype) / n, share


def gini_coefficient(weights: jax.Array) -> jax.Array:
  r"""The Gini coefficient of non-negative ``weights``: 0 when all are equal, up to ``1 - 1/n``.

  :math:`G = \sum_{i,j} |w_i - w_j| / (2 n^2 \bar w)`, which is one minus twice the area under
  the :func:`lorenz_curve` (trapezoids). All-zero weights count as equal (``0``).

  Args:
    weights: non-negative numbers, shape ``(n,)``.

  Returns:
    The coefficient, a scalar in ``[0, 1 - 1/n]``.
  """
  population, share = lorenz_curve(weights)
  area = jnp.sum((share[1:] + share[:-1]) * jnp.diff(population)) / 2
  return 1.0 - 2.0 * area
