"""The Vision Transformer: shapes, precision, a re-implementation from the paper's equations,
argument checks, and the layers samx's layer finder reads from it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx
from samx.models import ViT

# Small sizes: 8x8 images in 4x4 patches (4 patch tokens), 2 blocks of width 16 with 2 heads.
SIZES = {"num_classes": 3, "patch_size": 4, "hidden": 16, "depth": 2, "heads": 2, "mlp_dim": 32}
POOLINGS = ("token", "mean")


def build(pooling="token", dtype=jnp.float32, seed=0, **overrides):
  arguments = {**SIZES, "image_size": 8, "pooling": pooling, **overrides}
  return ViT(**arguments, dtype=dtype, rngs=nnx.Rngs(seed))


def images(shape=(2, 8, 8, 3), seed=1):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def params_of(model):
  return [v[...] for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


# ---------------------------------------------------------------- shapes and precision


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(pooling, dtype):
  model, x = build(pooling, dtype), images()
  logits, features = model(x), model.features(x)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  assert features.shape == (2, 16) and features.dtype == dtype
  assert model.head(features).dtype == jnp.float32
  assert {p.dtype for p in params_of(model)} == {jnp.dtype(jnp.float32)}
  assert bool(jnp.all(jnp.isfinite(logits)))
  tokens = 4 + (pooling == "token")
  assert model.position_embedding[...].shape == (1, tokens, 16)
  assert (model.class_token is None) == (pooling == "mean")


def test_rectangular_images_and_other_channels():
  model = build(image_size=(8, 12), in_channels=1)
  assert model(images((3, 8, 12, 1))).shape == (3, 3)
  assert model.position_embedding[...].shape == (1, 2 * 3 + 1, 16)
  with pytest.raises(ValueError, match=r"image_size and in_channels.*\(3, 8, 8, 1\)"):
    model(images((3, 8, 8, 1)))


def test_the_model_is_deterministic():
  model, x = build(), images()
  model.train()
  trained = model(x)
  model.eval()
  np.testing.assert_array_equal(model(x), trained)


def test_initialisation():
  model = build()
  block = model.blocks[0]
  for layer in (block.attention.query, block.attention.key, block.attention.value,
                block.attention.out, block.mlp_in, block.mlp_out):
    fan_in, fan_out = layer.kernel[...].shape
    bound = math.sqrt(6 / (fan_in + fan_out))  # Xavier-uniform
    assert float(jnp.max(jnp.abs(layer.kernel[...]))) <= bound
    assert float(jnp.max(jnp.abs(layer.kernel[...]))) > 0.5 * bound
    assert not bool(jnp.any(layer.bias[...]))
  assert not bool(jnp.any(model.class_token[...]))
  position = build(hidden=64, heads=4).position_embedding[...]
  assert 0.015 < float(jnp.std(position)) < 0.025
  for norm in (block.norm1, block.norm2, model.norm):
    assert bool(jnp.all(norm.scale[...] == 1)) and not bool(jnp.any(norm.bias[...]))
    assert norm.epsilon == 1e-6


@pytest.mark.parametrize("pooling", POOLINGS)
def test_bfloat16_runs_its_convolution_and_dots_in_bfloat16_and_stays_close(pooling):
  low, full, x = build(pooling, jnp.bfloat16), build(pooling, jnp.float32), images()
  # The compute dtype does not change the initialization.
  for a, b in zip(params_of(low), params_of(full), strict=True):
    np.testing.assert_array_equal(a, b)
  text = jax.jit(lambda x: low(x)).lower(x).as_text()
  heavy = [line for line in text.splitlines() if "convolution" in line or "dot_general" in line]
  assert any("convolution" in line and "bf16" in line for line in heavy)
  assert sum("dot_general" in line and "bf16" in line for line in heavy) >= 6 * SIZES["depth"]
  head = [line for line in heavy if "dot_general" in line][-1]
  assert "f32" in head and "bf16" not in head
  assert "bf16" not in jax.jit(lambda x: full(x)).lower(x).as_text()
  expected = np.asarray(full(x))
  error = np.max(np.abs(np.asarray(low(x)) - expected)) / np.max(np.abs(expected))
  assert error < 0.05, error


@pytest.mark.slow  # a bfloat16 ViT's gradient compiled: the matrix's slice covers a step
def test_bfloat16_gradients_are_float32():
  model, x = build(dtype=jnp.bfloat16), images()
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
  assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


# ---------------------------------------------------------------- the paper's equations


def layer_norm(x, norm):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(variance + 1e-6) * norm.scale[...] + norm.bias[...]


def affine(x, layer):
  return jnp.einsum("...i,io->...o", x, layer.kernel[...], precision="highest") + layer.bias[...]


def reference_logits(model, x, *, patch_size, heads, pooling):
  """The ViT forward pass written from Dosovitskiy et al.'s equations 1-4 in plain jax.numpy,
  reading the model's parameters."""
  batch, height, width, channels = x.shape
  p = patch_size
  # Eq. 1: x_p^i E for the flattened patches x_p^i (row-major over the patch grid), the class
  # token in front, plus E_pos.
  patches = x.reshape(batch, height // p, p, width // p, p, channels)
  patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, p * p * channels)
  embedding = model.patch_embedding.kernel[...].reshape(p * p * channels, -1)
  z = jnp.einsum("bnk,kd->bnd", patches, embedding, precision="highest")
  z = z + model.patch_embedding.bias[...]
  hidden = z.shape[-1]
  if pooling == "token":
    z = jnp.concatenate([jnp.broadcast_to(model.class_token[...], (batch, 1, hidden)), z], 1)
  z = z + model.position_embedding[...]
  head_dim = hidden // heads
  for block in model.blocks:
    # Eq. 2: z' = MSA(LN(z)) + z, with per-head softmax(q k^T / sqrt(D_h)) v.
    attention = block.attention
    y = layer_norm(z, block.norm1)
    q, k, v = (affine(y, layer).reshape(batch, -1, heads, head_dim)
               for layer in (attention.query, attention.key, attention.value))
    a = jax.nn.softmax(jnp.einsum("bihd,bjhd->bhij", q, k, precision="highest")
                       / math.sqrt(head_dim), axis=-1)
    heads_out = jnp.einsum("bhij,bjhd->bihd", a, v, precision="highest")
    z = z + affine(heads_out.reshape(batch, -1, hidden), attention.out)
    # Eq. 3: z = MLP(LN(z')) + z', the MLP's nonlinearity the GELU x Phi(x).
    u = affine(layer_norm(z, block.norm2), block.mlp_in)
    u = u * 0.5 * (1 + jax.scipy.special.erf(u / math.sqrt(2)))
    z = z + affine(u, block.mlp_out)
  # Eq. 4: y = LN(z_L^0) (or the mean of the patch tokens), then the classification head.
  z = layer_norm(z, model.norm)
  pooled = z[:, 0] if pooling == "token" else jnp.mean(z, axis=1)
  return affine(pooled, model.head)


@pytest.mark.parametrize("pooling", ["token", pytest.param("mean", marks=pytest.mark.slow)])
def test_logits_match_the_papers_equations(pooling):
  model = build(pooling, image_size=(8, 12), in_channels=2, seed=3)
  # Moved away from their initial values (zero biases and class token, unit LN scales), so
  # that every parameter enters the comparison.
  state = nnx.state(model, nnx.Param)
  keys = jax.random.split(jax.random.key(7), len(jax.tree.leaves(state)))
  leaves, treedef = jax.tree.flatten(state)
  shifted = [leaf + 0.1 * jax.random.normal(key, leaf.shape) for leaf, key
             in zip(leaves, keys, strict=True)]
  nnx.update(model, jax.tree.unflatten(treedef, shifted))
  x = images((3, 8, 12, 2))
  want = reference_logits(model, x, patch_size=4, heads=2, pooling=pooling)
  np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(("overrides", "name"), [
    ({"num_classes": 0}, "num_classes"),
    ({"patch_size": -4}, "patch_size"),
    ({"patch_size": 4.0}, "patch_size"),
    ({"hidden": 0}, "hidden"),
    ({"depth": 0}, "depth"),
    ({"heads": True}, "heads"),
    ({"mlp_dim": 0}, "mlp_dim"),
    ({"in_channels": 0}, "in_channels"),
    ({"image_size": 0}, "image_size"),
    ({"image_size": (8, 8, 8)}, "image_size"),
    ({"image_size": (8, 0)}, "image_size"),
    ({"image_size": "8"}, "image_size"),
    ({"hidden": 16, "heads": 3}, "heads"),
    ({"hidden": 15}, "hidden"),
    ({"image_size": 10}, "patch_size"),
    ({"image_size": (8, 10)}, "image_size"),
    ({"pooling": "cls"}, "pooling"),
    ({"pooling": None}, "pooling"),
    ({"dtype": jnp.float16}, "dtype"),
    ({"dtype": jnp.int32}, "dtype"),
])
def test_argument_checks_name_the_argument(overrides, name):
  arguments = {**SIZES, "image_size": 8, "pooling": "token", "dtype": jnp.float32, **overrides}
  with pytest.raises(ValueError, match=name):
    ViT(**arguments, rngs=nnx.Rngs(0))


def test_argument_checks_say_what_is_accepted():
  with pytest.raises(ValueError, match="pooling must be 'token' or 'mean'; got 'cls'"):
    build(pooling="cls")
  with pytest.raises(ValueError, match=r"hidden \(16\) must be divisible by heads \(3\)"):
    build(heads=3)
  with pytest.raises(ValueError, match=r"image_size \(8, 10\) must be divisible by patch_size"):
    build(image_size=(8, 10))
  with pytest.raises(ValueError, match="depth must be a positive integer; got 0"):
    build(depth=0)


# ---------------------------------------------------------------- samx's layer finder


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_layer_finder_claims_every_kernel(pooling, dtype):
  model, x = build(pooling, dtype), images((4, 8, 8, 3))
  objective = samx.Objective.from_nnx(
      model, optax.softmax_cross_entropy_with_integer_labels, x, jnp.arange(4) % 3)
  plan = samx.group_plan(objective, nnx.state(model, nnx.Param), group_size=2)
  paths = {leaf.leaf.replace(".value", ""): leaf.path for leaf in plan.leaves}
  assert len(paths) == len(params_of(model))
  kernels = {leaf: path for leaf, path in paths.items() if leaf.endswith("['kernel']")}
  assert kernels.pop("['patch_embedding']['kernel']") == "conv", str(plan)
  # Per block: query, key, value, output, and the MLP's two; then the head.
  assert len(kernels) == 6 * SIZES["depth"] + 1
  assert set(kernels.values()) == {"dense"}, str(plan)
  others = {leaf: path for leaf, path in paths.items() if leaf not in kernels}
  others.pop("['patch_embedding']['kernel']")
  expected_others = {"['position_embedding']"} | ({"['class_token']"} if pooling == "token"
                                                   else set())
  for leaf in others:
    assert (leaf in expected_others or leaf.endswith("['bias']")
            or (leaf.endswith("['scale']") and "norm" in leaf)), leaf
  assert expected_others <= set(others)
  assert set(others.values()) == {"vmap"}, str(plan)
