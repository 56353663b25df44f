"""Mixed precision: float32 parameters, BatchNorm statistics and logits; compute in ``dtype``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from samx import models

# name: (builder taking dtype, input shape); small widths and tiny inputs keep these fast. The
# ResNets see 16x16 images in batches of 8: with 8x8 ones their last stage is 1x1, and
# training-mode BatchNorm over 4 values per channel magnifies bfloat16 rounding tenfold.
MODELS = {
    "resnet18": (lambda dtype: models.resnet18(10, width=0.0625, dtype=dtype, rngs=nnx.Rngs(0)),
                 (8, 16, 16, 3)),
    "resnet34": (lambda dtype: models.resnet34(10, width=0.0625, dtype=dtype, rngs=nnx.Rngs(1)),
                 (8, 16, 16, 3)),
    "preact_resnet18": (
        lambda dtype: models.preact_resnet18(10, width=0.0625, dtype=dtype, rngs=nnx.Rngs(2)),
        (8, 16, 16, 3)),
    "wide_resnet": (
        lambda dtype: models.wide_resnet(10, 1, 10, width=0.5, dtype=dtype, rngs=nnx.Rngs(3)),
        (8, 16, 16, 3)),
    "mlp": (lambda dtype: models.MLP(48, (16, 8), 5, dtype=dtype, rngs=nnx.Rngs(4)),
            (4, 4, 4, 3)),
    "small_cnn": (
        lambda dtype: models.SmallCNN((8, 8, 3), 3, width=0.25, dtype=dtype, rngs=nnx.Rngs(5)),
        (4, 8, 8, 3)),
    "two_layer_relu_cnn": (
        lambda dtype: models.TwoLayerReLUCNN(6, 4, init_std=1.0, dtype=dtype, rngs=nnx.Rngs(6)),
        (4, 3, 6)),
    "two_layer_linear": (
        lambda dtype: models.TwoLayerLinear(12, 6, 3, dtype=dtype, rngs=nnx.Rngs(7)),
        (4, 12)),
}

CONSTRUCTORS = {
    "resnet18": lambda dtype: models.resnet18(10, width=0.0625, dtype=dtype, rngs=nnx.Rngs(0)),
    "resnet34": lambda dtype: models.resnet34(10, width=0.0625, dtype=dtype, rngs=nnx.Rngs(0)),
    "ResNet": lambda dtype: models.ResNet((1, 1, 1, 1), 10, width=0.0625, dtype=dtype,
                                          rngs=nnx.Rngs(0)),
    "BasicBlock": lambda dtype: models.BasicBlock(4, 8, 2, dtype=dtype, rngs=nnx.Rngs(0)),
    "preact_resnet18": lambda dtype: models.preact_resnet18(10, width=0.0625, dtype=dtype,
                                                           rngs=nnx.Rngs(0)),
    "wide_resnet": lambda dtype: models.wide_resnet(10, 1, 10, dtype=dtype, rngs=nnx.Rngs(0)),
    "PreActResNet": lambda dtype: models.PreActResNet((1,), (4,), 10, stem_channels=4,
                                                      dtype=dtype, rngs=nnx.Rngs(0)),
    "PreActBlock": lambda dtype: models.PreActBlock(4, 8, 2, dtype=dtype, rngs=nnx.Rngs(0)),
    "MLP": MODELS["mlp"][0],
    "SmallCNN": MODELS["small_cnn"][0],
    "TwoLayerReLUCNN": MODELS["two_layer_relu_cnn"][0],
    "TwoLayerLinear": MODELS["two_layer_linear"][0],
}


def inputs(shape):
  return jax.random.normal(jax.random.key(1), shape, jnp.float32)


def variables(model, kind):
  return [v for _, v in nnx.to_flat_state(nnx.state(model, kind))]


# ResNet-18 is ResNet-34's blocks, fewer of them, and PreAct ResNet-18 is the Wide ResNet's
# blocks: checked in the slow suite only.
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow)
    if name in ("resnet18", "resnet34", "preact_resnet18") else name for name in MODELS])
def test_bfloat16_model_keeps_float32_parameters_statistics_and_logits(name):
  build, shape = MODELS[name]
  model = build(jnp.bfloat16)
  assert model.dtype == jnp.bfloat16
  assert {v[...].dtype for v in variables(model, nnx.Param)} == {jnp.dtype(jnp.float32)}
  x = inputs(shape)
  model.train()
  logits = model(x)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Flax computes the batch statistics in float32 and keeps the running averages in float32.
  stats = variables(model, nnx.BatchStat)
  assert {v[...].dtype for v in stats} <= {jnp.dtype(jnp.float32)}
  if name in ("resnet18", "resnet34", "preact_resnet18", "wide_resnet"):
    assert stats and any(bool(jnp.any(v[...] != 0)) for v in stats)
  features = model.features(x)
  assert features.dtype == jnp.bfloat16
  # The head casts the features to float32 itself: the penalties' features-then-head path.
  assert model.head(features).dtype == jnp.float32
  model.eval()
  assert model(x).dtype == jnp.float32
  grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(x) ** 2)))(model)  # eager: 10x slower
  assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", MODELS)
def test_bfloat16_forward_pass_runs_its_convolutions_or_dots_in_bfloat16(name):
  build, shape = MODELS[name]
  model, x = build(jnp.bfloat16), inputs(shape)
  model.eval()  # jax.jit cannot update the BatchStats of a model it closes over
  text = jax.jit(lambda x: model(x)).lower(x).as_text()
  heavy = [line for line in text.splitlines() if "convolution" in line or "dot_general" in line]
  assert any("bf16" in line for line in heavy)
  # The head is the last dot and takes and returns float32.
  head = [line for line in heavy if "dot_general" in line][-1]
  assert "f32" in head and "bf16" not in head
  reference = build(jnp.float32)
  reference.eval()
  text = jax.jit(lambda x: reference(x)).lower(x).as_text()
  assert "bf16" not in text


@pytest.mark.parametrize("name", MODELS)
def test_bfloat16_outputs_are_close_to_float32_at_the_same_seed(name):
  build, shape = MODELS[name]
  low, full = build(jnp.bfloat16), build(jnp.float32)
  # The compute dtype does not change the initialization.
  for a, b in zip(variables(low, nnx.Param), variables(full, nnx.Param), strict=True):
    np.testing.assert_array_equal(a[...], b[...])
  x = inputs(shape)
  for mode in ("train", "eval"):  # BatchNorm with the batch's statistics, then the running ones
    getattr(low, mode)()
    getattr(full, mode)()
    expected = np.asarray(full(x))
    error = np.max(np.abs(np.asarray(low(x)) - expected)) / np.max(np.abs(expected))
    # Rounding compounds over ResNet-34's 34 layers: with the batch's statistics its float32
    # logits already move by about 2% when the input alone is perturbed by 2^-9 (bfloat16's
    # rounding), and its bfloat16 logits are 3-7% off across seeds.
    assert error < (0.1 if name == "resnet34" and mode == "train" else 0.05), (mode, error)
  for a, b in zip(variables(low, nnx.BatchStat), variables(full, nnx.BatchStat), strict=True):
    np.testing.assert_allclose(a[...], b[...], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_float16_and_other_dtypes_are_refused(name):
  build = CONSTRUCTORS[name]
  with pytest.raises(ValueError, match=r"dtype must be float32 or bfloat16.*loss scaling"):
    build(jnp.float16)
  with pytest.raises(ValueError, match="dtype must be float32 or bfloat16"):
    build(jnp.int8)


def test_compute_dtype_accepts_float32_and_bfloat16_by_any_name():
  from samx.models._layers import compute_dtype

  for dtype in (jnp.bfloat16, "bfloat16", jnp.dtype(jnp.bfloat16)):
    assert compute_dtype(dtype) == jnp.bfloat16
  for dtype in (jnp.float32, "float32", np.float32):
    assert compute_dtype(dtype) == jnp.float32
  for dtype in (jnp.float16, "float16"):
    with pytest.raises(ValueError, match="use bfloat16, which has float32's range"):
      compute_dtype(dtype)
  for dtype in (None, "complex64", np.float64, "not a dtype"):
    with pytest.raises(ValueError, match="dtype must be float32 or bfloat16"):
      compute_dtype(dtype)


@pytest.mark.parametrize("block_class", [models.BasicBlock, models.PreActBlock])
@pytest.mark.parametrize(("channels", "stride"), [(8, 2), (4, 1)])  # projection, identity
def test_blocks_compute_in_their_dtype(block_class, channels, stride):
  x = inputs((2, 8, 8, 4))  # float32, also on the identity shortcut
  block = block_class(4, channels, stride, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  y = block(x)
  assert y.dtype == jnp.bfloat16 and y.shape == (2, 8 // stride, 8 // stride, channels)
  assert {v[...].dtype for v in variables(block, nnx.Param)} == {jnp.dtype(jnp.float32)}
  assert {v[...].dtype for v in variables(block, nnx.BatchStat)} == {jnp.dtype(jnp.float32)}
