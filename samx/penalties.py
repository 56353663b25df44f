"""The explicit regularisers that J-SAM induces: the cheaper alternative to SAM.

Baek, Kolter & Raghunathan (2024, Proposition 4.1) show that for a two-layer linear network
``f = <v, W x>`` with logistic loss, the 1-SAM J-SAM update is exactly the SGD gradient plus

    rho * s_i / J_i * (||x_i||^2 v  (for v),   z_i x_i^T  (for W)),     z_i = W x_i,

with ``s_i = sigmoid(-t_i f_i)`` the size of the example's logit term and
``J_i = sqrt(||z_i||^2 + ||x_i||^2 ||v||^2)``: pulls toward small last-layer weights and small
hidden activations. That is the gradient of :func:`jsam_penalty` below, so adding it to the
loss gives J-SAM's effect with one forward and backward pass. For deep networks the same two
terms apply to the last layer's kernel and the penultimate features.

Usage with a model that exposes its penultimate features and its last layer (every model in
``samx.models`` does: ``model.features(x)`` and ``model.head``)::

    features = model.features(x)
    logits = model.head(features)
    loss = xent(logits, y).mean() + samx.penalties.feature_and_weight_penalty(
        features, model.head.kernel[...], feature_coef=1e-3, weight_coef=1e-3)

Any Flax model can do the same by computing its features and its last layer in two calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _per_example_sq_norms(features: jax.Array) -> jax.Array:
  return jnp.sum(jnp.square(features.reshape(features.shape[0], -1)), axis=1)


def weight_penalty(kernel: jax.Array) -> jax.Array:
  """``||kernel||^2 / 2``, the last-layer weight norm.

  Args:
    kernel: the last layer's weights ``V``.

  Returns:
    The penalty, a scalar.
  """
  return 0.5 * jnp.sum(jnp.square(kernel))


def feature_penalty(features: jax.Array, example_weights: jax.Array | None = None) -> jax.Array:
  """``mean_i w_i ||features_i||^2 / 2``, the penultimate-feature norm (``w_i = 1`` by default).

  Args:
    features: the penultimate features, ``(batch, ...)``.
    example_weights: optional ``w_i``, ``(batch,)``, held fixed (no gradient flows into them).

  Returns:
    The penalty, a scalar.
  """
  squares = _per_example_sq_norms(features)
  if example_weights is not None:
    squares = jax.lax.stop_gradient(example_weights) * squares
  return 0.5 * jnp.mean(squares)


def feature_and_weight_penalty(features: jax.Array, kernel: jax.Array, *, feature_coef: float,
                               weight_coef: float) -> jax.Array:
  """``feature_coef * feature_penalty(features) + weight_coef * weight_penalty(kernel)``.

  Args:
    features: the penultimate features, ``(batch, ...)``.
    kernel: the last layer's weights ``V``.
    feature_coef: the coefficient of the feature term (>= 0).
    weight_coef: the coefficient of the weight term (>= 0).

  Returns:
    The penalty, a scalar.
  """
  return feature_coef * feature_penalty(features) + weight_coef * weight_penalty(kernel)


def per_example_feature_and_weight_penalty(
    features: jax.Array, kernel_sq_norm: jax.Array, *, feature_coef: float, weight_coef: float
) -> jax.Array:
  """The penalty of :func:`feature_and_weight_penalty` per example, shape ``(batch,)``.

  ``feature_coef * ||features_i||^2 / 2 + weight_coef * kernel_sq_norm / 2``, with
  ``kernel_sq_norm`` the last layer's squared norm ``||V||^2`` (a scalar, or one copy per
  example); its mean over the batch is :func:`feature_and_weight_penalty`. A per-example loss
  with this term added is the regularised objective a :class:`samx.Objective` (and so any
  sharpness-aware transform) can work on.

  Args:
    features: the penultimate features, ``(batch, ...)``.
    kernel_sq_norm: ``||V||^2``, a scalar or ``(batch,)``.
    feature_coef: the coefficient of the feature term (>= 0).
    weight_coef: the coefficient of the weight term (>= 0).

  Returns:
    The per-example penalties, ``(batch,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> features, kernel = jnp.array([[1.0, 2.0], [0.0, 1.0]]), jnp.ones((2, 3))
    >>> per_example_feature_and_weight_penalty(
    ...     features, jnp.sum(kernel**2), feature_coef=0.1, weight_coef=0.01).tolist()
    [0.28, 0.08]
  """
  kernel_term = jnp.broadcast_to(kernel_sq_norm, features.shape[:1])
  return feature_coef * 0.5 * _per_example_sq_norms(features) + weight_coef * 0.5 * kernel_term


def jsam_example_weights(residual_norms: jax.Array, features: jax.Array, kernel: jax.Array,
                         input_norms: jax.Array) -> jax.Array:
  """``s_i / J_i`` of Proposition 4.1, held fixed: ``J_i = sqrt(||z_i||^2 + ||x_i||^2 ||v||^2)``.

  Args:
    residual_norms: ``s_i``, the size of each example's logit term (``sigmoid(-t_i f_i)`` for
      the logistic loss; ``||softmax - onehot||`` for cross-entropy).
    features: the hidden activations ``z_i``, ``(batch, ...)``.
    kernel: the last layer ``v``.
    input_norms: ``||x_i||``, the norms of the inputs to the layer that makes ``z``.

  Returns:
    ``s_i / J_i``, ``(batch,)``, with no gradient (0 where ``J_i = 0``).
  """
  jacobian_norms = jnp.sqrt(_per_example_sq_norms(features)
                            + jnp.square(input_norms) * jnp.sum(jnp.square(kernel)))
  safe = jnp.where(jacobian_norms > 0, jacobian_norms, 1.0)
  return jax.lax.stop_gradient(jnp.where(jacobian_norms > 0, residual_norms / safe, 0.0))


def jsam_penalty(features: jax.Array, kernel: jax.Array, *, rho: float,
                 residual_norms: jax.Array, input_norms: jax.Array) -> jax.Array:
  r"""The regulariser whose gradient is J-SAM's correction (Baek et al. 2024, Prop. 4.1).

  .. math::
    \frac{\rho}{n} \sum_i \frac{s_i}{J_i} \Big( \frac{\lVert x_i \rVert^2 \lVert v \rVert^2}{2}
    + \frac{\lVert z_i \rVert^2}{2} \Big)

  with :math:`s_i / J_i` held fixed (:func:`jsam_example_weights`). Its gradient is
  :math:`\frac{\rho}{n}\sum_i \frac{s_i}{J_i}\lVert x_i\rVert^2 v` for the last layer and
  :math:`\frac{\rho}{n} \frac{s_i}{J_i} z_i` for each hidden activation, so SGD on the loss plus
  this penalty takes exactly the 1-SAM J-SAM step of a two-layer linear network.

  Args:
    features: the hidden activations ``z_i``, ``(batch, ...)``.
    kernel: the last layer ``v``.
    rho: J-SAM's radius.
    residual_norms: ``s_i``, the size of each example's logit term.
    input_norms: ``||x_i||``, the norms of the inputs to the layer that makes ``z``.

  Returns:
    The penalty, a scalar.
  """
  weights = jsam_example_weights(residual_norms, features, kernel, input_norms)
  kernel_term = 0.5 * jnp.square(input_norms) * jnp.sum(jnp.square(kernel))
  return rho * jnp.mean(weights * (kernel_term + 0.5 * _per_example_sq_norms(features)))
