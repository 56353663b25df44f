"""Feature quality: how linearly decodable a label is from frozen features."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def linear_probe_accuracy(
    train_features: jax.Array, train_labels: jax.Array, test_features: jax.Array,
    test_labels: jax.Array, *, num_classes: int, l2: float = 1e-3,
) -> jax.Array:
  r"""Test accuracy of a ridge-regression probe fit on frozen features.

  The probe is the closed-form least-squares fit of one-hot targets on standardised features
  with an intercept, :math:`W = (X^\top X + \lambda n I)^{-1} X^\top Y`, and predicts the
  argmax. Deterministic, cheap, and a standard linear probe (Springer et al. 2024 probe each
  feature of the dominoes this way, one probe per label). With more features than examples it
  solves the same fit in its dual form, :math:`W = X^\top (X X^\top + \lambda n I)^{-1} Y`
  (an ``n x n`` system instead of ``d x d``). Pure and jittable.

  Args:
    train_features: the probe's training features, ``(n, ...)`` (flattened per example).
    train_labels: their integer labels, ``(n,)``.
    test_features: the features it is evaluated on, ``(m, ...)``.
    test_labels: their integer labels, ``(m,)``.
    num_classes: the number of classes.
    l2: the ridge coefficient :math:`\lambda` (scaled by ``n``).

  Returns:
    The probe's test accuracy, a scalar.
  """
  train = jnp.asarray(train_features, jnp.float32).reshape(len(train_labels), -1)
  test = jnp.asarray(test_features, jnp.float32).reshape(len(test_labels), -1)
  mean, std = train.mean(0), train.std(0) + 1e-6

  def design(features: jax.Array) -> jax.Array:
    return jnp.concatenate([(features - mean) / std, jnp.ones((len(features), 1))], axis=1)

  x = design(train)
  targets = jax.nn.one_hot(train_labels, num_classes)
  if x.shape[1] <= x.shape[0]:
    gram = x.T @ x + l2 * len(x) * jnp.eye(x.shape[1])
    weights = jnp.linalg.solve(gram, x.T @ targets)
  else:
    kernel = x @ x.T + l2 * len(x) * jnp.eye(x.shape[0])
    weights = x.T @ jnp.linalg.solve(kernel, targets)
  predictions = jnp.argmax(design(test) @ weights, axis=1)
  return jnp.mean(predictions == test_labels)
