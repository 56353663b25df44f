"""Model shapes, the feature/last-layer hooks, and BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from samx import models
from samx.models import MLP, preact_resnet18, resnet18, resnet34, wide_resnet


def parameter_count(model):
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(("builder", "expected"), [(resnet18, 11_173_962), (resnet34, 21_282_122)])
def test_full_width_resnets_have_the_standard_parameter_counts(builder, expected):
  # The CIFAR ResNet-18/34 counts of the reference implementations (10 classes).
  model = nnx.eval_shape(lambda: builder(10, rngs=nnx.Rngs(0)))
  assert parameter_count(model) == expected


def test_resnet_features_feed_the_head():
  model = resnet18(10, width=0.125, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  features = model.features(x)
  assert features.shape == (4, 64)
  np.testing.assert_allclose(model(x), model.head(features), rtol=1e-5, atol=1e-6)


def test_resnet_batchnorm_follows_train_and_eval():
  model = resnet18(10, width=0.125, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 32, 32, 3))
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  model.eval()
  model(x)
  jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model, nnx.BatchStat))
  model.train()
  model(x)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before,
                         nnx.state(model, nnx.BatchStat))
  assert any(jax.tree.leaves(changed))


def test_mlp_flattens_inputs_and_exposes_features():
  model = MLP(12, (8, 6), 3, rngs=nnx.Rngs(0))
  x = jnp.ones((5, 2, 6))
  assert model.features(x).shape == (5, 6)
  assert model(x).shape == (5, 3)
  assert model.head.out_features == 3


@pytest.mark.parametrize(("builder", "expected"), [
    # He et al.'s pre-activation design ends with BN-ReLU before pooling (the widely used CIFAR
    # implementation without it has 1,024 parameters fewer: 11,171,146).
    (lambda: preact_resnet18(10, rngs=nnx.Rngs(0)), 11_172_170),
    (lambda: wide_resnet(28, 10, 10, rngs=nnx.Rngs(0)), 36_479_194),
    (lambda: wide_resnet(16, 4, 10, rngs=nnx.Rngs(0)), 2_748_890),
])
def test_preact_and_wide_resnets_have_the_standard_parameter_counts(builder, expected):
  assert parameter_count(nnx.eval_shape(builder)) == expected


def test_small_wide_resnet_runs_and_exposes_features():
  model = wide_resnet(10, 2, 10, width=0.5, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 32, 32, 3))
  assert model.features(x).shape == (2, 64)
  np.testing.assert_allclose(model(x), model.head(model.features(x)), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="depth must be 6n"):
    wide_resnet(20, 2, 10, rngs=nnx.Rngs(0))


def test_two_layer_relu_cnn_is_chens_formula():
  from samx.models import TwoLayerReLUCNN

  model = TwoLayerReLUCNN(6, 3, init_std=1.0, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2, 6)), jnp.float32)
  w = np.asarray(model.filters[...], np.float64)
  relu = lambda a: np.maximum(a, 0.0)
  xs = np.asarray(x, np.float64)
  f_plus = relu(np.einsum("bpd,rd->bpr", xs, w[:3])).sum((1, 2)) / 3
  f_minus = relu(np.einsum("bpd,rd->bpr", xs, w[3:])).sum((1, 2)) / 3
  f = f_plus - f_minus
  np.testing.assert_allclose(model(x), np.stack([-f / 2, f / 2], 1), rtol=1e-5, atol=1e-6)
  # Only the filters are trained; the second layer is fixed.
  assert [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))] == [("filters",)]
  # Cross-entropy on the two logits is the logistic loss of y f.
  import optax
  labels = jnp.array([1, 0, 1, 1, 0])
  xent = optax.softmax_cross_entropy_with_integer_labels(model(x), labels)
  y = 2.0 * np.asarray(labels) - 1.0
  np.testing.assert_allclose(xent, np.log1p(np.exp(-y * f)), rtol=1e-5, atol=1e-6)


def test_two_layer_linear_network():
  from samx.models import TwoLayerLinear

  model = TwoLayerLinear(4, 3, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 4))
  expected = x @ model.hidden.kernel[...] @ model.head.kernel[...]
  np.testing.assert_allclose(model(x), expected, rtol=1e-6)
  assert model.features(x).shape == (2, 3)


def test_small_cnn_matches_a_direct_convolution_stack():
  # Springer et al.'s small CNN on a dominoes-shaped input: the strides halve (rounding up) the
  # spatial size three times, and the forward pass equals lax.conv_general_dilated by hand.
  model = models.SmallCNN((64, 32, 3), num_classes=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 64, 32, 3))
  assert model.head.kernel.shape == (8 * 4 * 128, 2)

  def conv(layer, inputs, stride, pad):
    out = jax.lax.conv_general_dilated(inputs, layer.kernel[...], (stride, stride),
                                       ((pad, pad), (pad, pad)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(out + layer.bias[...])

  h = conv(model.conv3, conv(model.conv2, conv(model.conv1, x, 2, 2), 2, 1), 2, 1)
  features = h.reshape(3, -1)
  np.testing.assert_allclose(model.features(x), features, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model(x), features @ model.head.kernel[...] + model.head.bias[...],
                             rtol=1e-5, atol=1e-5)
  narrow = models.SmallCNN((28, 28, 1), num_classes=10, width=0.5, rngs=nnx.Rngs(0))
  assert narrow.features(jnp.ones((1, 28, 28, 1))).shape == (1, 4 * 4 * 64)
