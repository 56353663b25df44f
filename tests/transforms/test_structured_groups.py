"""Exact m-sharpness from the layers' structure (``group_path="layers"``, the default).

Every group result is checked in float64 against a per-group loop written from the definitions
(each group's gradient, its ascent step, and the gradient at the perturbed point, one group at a
time in Python; J-SAM's and L-SAM's products as explicit vector-Jacobian products), for every
layer kind found (dense on either side of ``dot_general``, several contracting dimensions,
sequences, convolutions in any layout with strides, padding and both dilations, 1-D), for models
that mix layer weights with leaves the structure does not cover, and for Flax NNX models with
BatchNorm. The multi-device checks (pmap, shard_map, a Mesh) are in ``multidevice_checks.py``.
"""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx
import samx.models
from samx.transforms._layer_structure import activation_rows, find_layers, output_rows

TIGHT = {"rtol": 1e-10, "atol": 1e-12}
xent = optax.softmax_cross_entropy_with_integer_labels


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def normal(key, shape, scale=0.3):
  return scale * jax.random.normal(jax.random.key(key), shape, jnp.float64)


# ---------------------------------------------------------------- the reference: a group loop


def group_loop(apply_fn, params, x, y, rho, group_size, *, variant="sam", adaptive=False,
               eta=0.01, perturbed=None, scaled=None):
  """``(g, g_sam)``: means over groups, each group computed on its own from the definitions
  (one jit-compiled function called once per group in a Python loop)."""
  leaves, treedef = jax.tree.flatten(params)
  perturbed = perturbed or [True] * len(leaves)
  scaled = scaled or [True] * len(leaves)

  @jax.jit
  def one_group(xs, ys):
    def loss(p):
      return jnp.mean(xent(apply_fn(p, xs), ys))

    g = jax.tree.leaves(jax.grad(loss)(params))
    scale = [(jnp.abs(w) + eta) if (adaptive and s) else jnp.ones_like(w)
             for w, s in zip(leaves, scaled, strict=True)]
    norm = jnp.sqrt(sum(jnp.sum((t * gi) ** 2)
                        for t, gi, keep in zip(scale, g, perturbed, strict=True) if keep))
    eps = [rho * t * t * gi / norm if keep else jnp.zeros_like(gi)
           for t, gi, keep in zip(scale, g, perturbed, strict=True)]
    shifted = jax.tree.unflatten(treedef, [w + e for w, e in zip(leaves, eps, strict=True)])
    if variant == "sam":
      return jax.tree.unflatten(treedef, g), jax.grad(loss)(shifted)
    # r: d group-loss / d outputs; J-SAM: J(w + eps)^T r(w); L-SAM: J(w)^T r(w + eps).
    residual_at = shifted if variant == "lsam" else params
    residual = jax.grad(lambda out: jnp.mean(xent(out, ys)))(apply_fn(residual_at, xs))
    jacobian_at = shifted if variant == "jsam" else params
    _, vjp = jax.vjp(lambda p: apply_fn(p, xs), jacobian_at)
    return jax.tree.unflatten(treedef, g), vjp(residual)[0]

  results = [one_group(x[start:start + group_size], y[start:start + group_size])
             for start in range(0, x.shape[0], group_size)]
  return jax.tree.map(lambda *values: sum(values) / len(values), *results)


def transform_gradients(tx, apply_fn, params, x, y):
  """The transform's update (g_sam) under jit; the transforms here return g_sam as is."""
  @jax.jit
  def update(p, inputs, targets):
    objective = samx.Objective(apply_fn, xent, inputs, targets)
    updates, _ = tx.update(objective.grad(p), tx.init(p), p, objective=objective)
    return updates

  return update(params, x, y)


def check_against_loop(apply_fn, params, x, y, *, group_size=1, rho=0.1, variant="sam",
                       expect_paths=None, **options):
  make = {"sam": samx.sam, "jsam": samx.jacobian_sam, "lsam": samx.logit_sam}[variant]
  got = transform_gradients(make(rho, group_size=group_size, **options), apply_fn, params, x, y)
  loop_options = {k: options[k] for k in ("adaptive", "eta") if k in options}
  _, want = group_loop(apply_fn, params, x, y, rho, group_size, variant=variant,
                       **loop_options)
  chex.assert_trees_all_close(got, want, **TIGHT)
  # The vmap path agrees too (the reference the layers path replaces).
  vmapped = transform_gradients(make(rho, group_size=group_size, group_path="vmap", **options),
                                apply_fn, params, x, y)
  chex.assert_trees_all_close(got, vmapped, **TIGHT)
  if expect_paths is not None:
    plan = samx.group_plan(samx.Objective(apply_fn, xent, x, y), params, group_size=group_size,
                           **{k: options[k] for k in ("adaptive",) if k in options})
    assert {leaf.leaf: leaf.path for leaf in plan.leaves} == expect_paths, str(plan)
  return got


# ---------------------------------------------------------------- layer kinds


def dense_params():
  return {"w_in": normal(0, (6, 5)), "b_in": normal(1, (5,)), "w_lhs": normal(2, (4, 5)),
          "w_two": normal(3, (2, 2, 4)), "w_out": normal(4, (4, 3))}


def dense_apply(p, x):
  """Dense layers of every kind: x @ W, W as dot_general's lhs, two contracting dims."""
  h = jnp.tanh(x @ p["w_in"] + p["b_in"])                      # (B, 5)
  h = jnp.tanh(jnp.einsum("oi,bi->bo", p["w_lhs"], h))         # (B, 4): W on the left
  h = h.reshape(h.shape[0], 2, 2)
  h = jnp.tanh(jnp.einsum("bij,ijo->bo", h, p["w_two"]))       # two contracting dims
  return h @ p["w_out"]


@pytest.mark.parametrize(("group_size", "variant"), [
    (1, "sam"), (2, "sam"), (3, "sam"), (1, "jsam"), (1, "lsam"), (3, "jsam")])
def test_dense_layers_match_the_group_loop(group_size, variant):
  x, y = normal(10, (6, 6), 1.0), jnp.arange(6) % 3
  check_against_loop(dense_apply, dense_params(), x, y, group_size=group_size, variant=variant,
                     expect_paths={"['b_in']": "vmap", "['w_in']": "dense",
                                   "['w_lhs']": "dense", "['w_out']": "dense",
                                   "['w_two']": "dense"})


def test_asam_on_layer_weights_matches_the_group_loop():
  x, y = normal(10, (6, 6), 1.0), jnp.arange(6) % 3
  check_against_loop(dense_apply, dense_params(), x, y, group_size=2, adaptive=True, eta=0.05)


def test_dense_layer_on_sequences_uses_both_norm_forms():
  """Per example a (length, features) input: rows = length x group; small layers take the
  explicit G_k, large ones the ghost norm (2 rows^2 <= fan_in fan_out)."""
  params = {"small": normal(0, (3, 2)), "large": normal(1, (2, 80)), "head": normal(2, (80, 3))}

  def apply_fn(p, x):  # x: (B, 4, 3)
    h = jnp.tanh(jnp.tanh(x @ p["small"]) @ p["large"])
    return jnp.mean(h, axis=1) @ p["head"]

  x, y = normal(3, (4, 4, 3), 1.0), jnp.arange(4) % 3
  check_against_loop(apply_fn, params, x, y, group_size=2)
  plan = samx.group_plan(samx.Objective(apply_fn, xent, x, y), params, group_size=2)
  details = {leaf.leaf: leaf.detail for leaf in plan.leaves}
  assert details["['small']"].startswith("explicit G_k; rows=8"), details
  assert details["['large']"].startswith("ghost norm; rows=8"), details


CONVS = {
    # name: (input shape per example, kernel shape, conv keyword arguments)
    "nhwc": ((7, 7, 2), (3, 3, 2, 4), {"window_strides": (1, 1), "padding": "SAME",
                                       "dimension_numbers": ("NHWC", "HWIO", "NHWC")}),
    "nchw_stride": ((2, 8, 8), (4, 2, 3, 3), {"window_strides": (2, 2),
                                              "padding": ((1, 0), (0, 2)),
                                              "dimension_numbers": ("NCHW", "OIHW", "NCHW")}),
    "mixed_layouts": ((2, 6, 6), (3, 3, 2, 4), {"window_strides": (1, 2), "padding": "VALID",
                                                "dimension_numbers": ("NCHW", "HWIO", "NHWC")}),
    "rhs_dilation": ((9, 9, 2), (3, 3, 2, 3), {"window_strides": (1, 1), "padding": "SAME",
                                               "rhs_dilation": (2, 2),
                                               "dimension_numbers": ("NHWC", "HWIO", "NHWC")}),
    "lhs_dilation": ((4, 4, 2), (3, 3, 2, 3), {"window_strides": (1, 1),
                                               "padding": ((1, 1), (2, 1)),
                                               "lhs_dilation": (2, 2),
                                               "dimension_numbers": ("NHWC", "HWIO", "NHWC")}),
    "one_d": ((9, 2), (3, 2, 4), {"window_strides": (2,), "padding": "SAME",
                                  "dimension_numbers": ("NWC", "WIO", "NWC")}),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_convolutions_match_the_group_loop(name, slow=False):
  shape, kernel_shape, conv_args = CONVS[name]
  out_spec = conv_args["dimension_numbers"][2]

  def apply_fn(p, x):
    h = jnp.tanh(jax.lax.conv_general_dilated(x, p["kernel"], **conv_args))
    features = jnp.mean(h, axis=tuple(i for i, c in enumerate(out_spec) if c not in "NC"))
    return features @ p["head"]

  out_channels = kernel_shape[conv_args["dimension_numbers"][1].index("O")]
  params = {"kernel": normal(0, kernel_shape), "head": normal(1, (out_channels, 3))}
  x, y = normal(2, (4, *shape), 1.0), jnp.arange(4) % 3
  check_against_loop(apply_fn, params, x, y, group_size=1,
                     expect_paths={"['head']": "dense", "['kernel']": "conv"})
  if name == "nchw_stride" and slow:  # groups of several examples, J-SAM and L-SAM
    check_against_loop(apply_fn, params, x, y, group_size=2)
    check_against_loop(apply_fn, params, x, y, group_size=1, variant="jsam")
    check_against_loop(apply_fn, params, x, y, group_size=2, variant="lsam")


@pytest.mark.slow  # three more compilations of each path
def test_convolution_groups_and_decompositions_match_the_group_loop():
  test_convolutions_match_the_group_loop("nchw_stride", slow=True)


def test_activation_and_output_rows_give_the_weight_gradient():
  """A^T D is the gradient in the kernel (checked for a strided, padded, dilated NCHW conv)."""
  conv_args = {"window_strides": (2, 1), "padding": ((1, 2), (0, 1)), "rhs_dilation": (1, 2),
               "dimension_numbers": ("NCHW", "OIHW", "NCHW")}
  kernel, x = normal(0, (3, 2, 3, 2)), normal(1, (1, 2, 7, 6), 1.0)
  structure = find_layers(lambda k, inputs: jax.lax.conv_general_dilated(inputs, k, **conv_args),
                          kernel, x)
  (layer,) = structure.layers
  out = jax.lax.conv_general_dilated(x, kernel, **conv_args)
  cotangent = normal(2, out.shape, 1.0)
  want = jax.vjp(lambda k: jax.lax.conv_general_dilated(x, k, **conv_args), kernel)[1](
      cotangent)[0]
  gradient = activation_rows(layer, x).T @ output_rows(layer, cotangent)
  from samx.transforms._layer_structure import matrix_to_weight
  np.testing.assert_allclose(matrix_to_weight(layer, gradient), want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- what the structure does not cover


@pytest.mark.slow
def test_mixed_models_fall_back_per_leaf_and_say_why():
  """A weight used twice, one inside lax.scan, a depthwise convolution, a custom_vjp and a
  multiplicative scale get per-group copies; the layer weights around them do not."""

  @jax.custom_vjp
  def custom_dense(h, w):
    return h @ w

  custom_dense.defvjp(lambda h, w: (h @ w, (h, w)), lambda res, g: (g @ res[1].T, res[0].T @ g))

  def apply_fn(p, x):  # x: (B, 6, 6, 2)
    h = jax.lax.conv_general_dilated(x, p["depthwise"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=2)
    h = jnp.tanh(jax.lax.conv_general_dilated(h, p["conv"], (2, 2), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")))
    h = jnp.mean(h, axis=(1, 2)) * p["scale"]                   # (B, 4)
    h = jnp.tanh(h @ p["tied"])
    h = jnp.tanh(h @ p["tied"])                                 # the same weight again
    h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ p["in_scan"]), None), h, None, length=2)
    return jnp.tanh(custom_dense(h, p["custom"])) @ p["head"]

  params = {"depthwise": normal(0, (3, 3, 1, 2)), "conv": normal(1, (3, 3, 2, 4)),
            "scale": 1.0 + normal(2, (4,)), "tied": normal(3, (4, 4)),
            "in_scan": normal(4, (4, 4)), "custom": normal(5, (4, 4)), "head": normal(6, (4, 3))}
  x, y = normal(7, (4, 6, 6, 2), 1.0), jnp.arange(4) % 3
  check_against_loop(apply_fn, params, x, y, group_size=1)
  check_against_loop(apply_fn, params, x, y, group_size=2, variant="lsam")
  plan = samx.group_plan(samx.Objective(apply_fn, xent, x, y), params, group_size=1)
  paths = {leaf.leaf: (leaf.path, leaf.detail) for leaf in plan.leaves}
  assert paths["['conv']"][0] == "conv" and paths["['head']"][0] == "dense"
  assert paths["['depthwise']"] == ("vmap", "grouped convolution")
  assert paths["['tied']"] == ("vmap", "used by 2 operations")
  assert paths["['in_scan']"] == ("vmap", "used by scan")
  assert paths["['custom']"][0] == "vmap" and "custom_vjp" in paths["['custom']"][1]
  assert paths["['scale']"][0] == "vmap"
  assert len(plan.vmapped) == 5 and len(plan.layers) == 2


def test_weights_inside_nested_jit_are_found():
  inner = jax.jit(lambda w, h: jnp.tanh(h @ w))

  def apply_fn(p, x):
    return inner(p["w2"], inner(p["w1"], x)) @ p["head"]

  params = {"w1": normal(0, (5, 4)), "w2": normal(1, (4, 4)), "head": normal(2, (4, 3))}
  x, y = normal(3, (4, 5), 1.0), jnp.arange(4) % 3
  check_against_loop(apply_fn, params, x, y,
                     expect_paths={"['w1']": "dense", "['w2']": "dense", "['head']": "dense"})


def test_masks_and_unperturbed_leaves():
  x, y = normal(10, (6, 6), 1.0), jnp.arange(6) % 3
  params = dense_params()
  mask = {"w_in": True, "b_in": False, "w_lhs": False, "w_two": True, "w_out": True}
  got = transform_gradients(samx.sam(0.1, group_size=1, perturb_mask=mask), dense_apply,
                            params, x, y)
  flags = jax.tree.leaves(mask)
  _, want = group_loop(dense_apply, params, x, y, 0.1, 1, perturbed=flags)
  chex.assert_trees_all_close(got, want, **TIGHT)
  adaptive_mask = {"w_in": False, "b_in": True, "w_lhs": True, "w_two": False, "w_out": True}
  got = transform_gradients(samx.sam(0.3, group_size=2, adaptive=True,
                                     adaptive_mask=adaptive_mask),
                            dense_apply, params, x, y)
  _, want = group_loop(dense_apply, params, x, y, 0.3, 2, adaptive=True,
                       scaled=jax.tree.leaves(adaptive_mask))
  chex.assert_trees_all_close(got, want, **TIGHT)
  plan = samx.group_plan(samx.Objective(dense_apply, xent, x, y), params, group_size=1,
                         perturb_mask=mask)
  assert {leaf.leaf: leaf.path for leaf in plan.leaves}["['w_lhs']"] == "not perturbed"


def test_groups_in_parallel_chunks_agree():
  x, y = normal(10, (8, 6), 1.0), jnp.arange(8) % 3
  whole = transform_gradients(samx.sam(0.1, group_size=1), dense_apply, dense_params(), x, y)
  for unroll in (True, 1):
    chunked = transform_gradients(
        samx.sam(0.1, group_size=1, groups_in_parallel=2, groups_unroll=unroll),
        dense_apply, dense_params(), x, y)
    chex.assert_trees_all_close(chunked, whole, **TIGHT)


def test_every_sam_family_transform_agrees_with_its_vmap_path():
  x, y = normal(10, (6, 6), 1.0), jnp.arange(6) % 3
  transforms = {
      "gsam": lambda **kw: samx.gsam(0.1, 0.3, group_size=1, **kw),
      "saner": lambda **kw: samx.saner(0.1, warmup_steps=0, group_size=2, **kw),
      "looksam": lambda **kw: samx.looksam(0.1, k=2, group_size=1, **kw),
      "ae_sam": lambda **kw: samx.ae_sam(0.1, threshold=lambda c: -1e9, group_size=1, **kw),
  }
  for name, make in transforms.items():
    layers = transform_gradients(make(), dense_apply, dense_params(), x, y)
    vmapped = transform_gradients(make(group_path="vmap"), dense_apply, dense_params(), x, y)
    chex.assert_trees_all_close(layers, vmapped, **TIGHT, custom_message=name)


# ---------------------------------------------------------------- Flax NNX models


class ConvBatchNormNet(nnx.Module):
  """Conv -> BatchNorm -> ReLU -> Linear, in float64, on (B, 6, 6, 2) images."""

  def __init__(self, rngs):
    kw = {"dtype": jnp.float64, "param_dtype": jnp.float64, "rngs": rngs}
    self.conv = nnx.Conv(2, 4, (3, 3), strides=(2, 2), **kw)
    self.norm = nnx.BatchNorm(4, **kw)
    # Flax keeps BatchNorm's running statistics in float32 whatever param_dtype says; writing
    # float64 batch statistics into them is a scatter that JAX will refuse. Keep them float64.
    for stat in (self.norm.mean, self.norm.var):
      stat.set_value(stat[...].astype(jnp.float64))
    self.head = nnx.Linear(4, 3, **kw)

  def __call__(self, x):
    h = nnx.relu(self.norm(self.conv(x)))
    return self.head(jnp.mean(h, axis=(1, 2)))


@pytest.mark.slow  # compiles a BatchNorm convnet both ways (the suite's time budget)
def test_nnx_model_with_batchnorm_matches_the_group_loop():
  """BatchNorm couples the examples of a group: its statistics are the group's, as on the vmap
  path, and the structure covers the coupling (D_k is the gradient through it)."""
  model = ConvBatchNormNet(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(p, x):
    return nnx.merge(graphdef, p, rest, copy=True)(x)

  x, y = normal(1, (4, 6, 6, 2), 1.0), jnp.arange(4) % 3
  for group_size in (1, 2):
    got = check_against_loop(apply_fn, params, x, y, group_size=group_size)
  plan = samx.group_plan(samx.Objective(apply_fn, xent, x, y), params, group_size=1)
  paths = {leaf.leaf.replace(".value", ""): leaf.path for leaf in plan.leaves}
  assert paths["['conv']['kernel']"] == "conv" and paths["['head']['kernel']"] == "dense", paths
  assert paths["['norm']['scale']"] == "vmap"
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(got))


@pytest.mark.slow  # three compilations of a convnet's 1-SAM step
def test_samx_models_in_bfloat16_stay_as_close_to_float32_as_the_vmap_path():
  """A bfloat16 SmallCNN: the layers path's 1-SAM update is finite, float32, and as far from
  the float32 model's as the vmap path's bfloat16 update is (bfloat16 rounding, ~5% here)."""
  x = jax.random.normal(jax.random.key(1), (4, 12, 12, 1), jnp.float32)
  y = jnp.arange(4) % 3
  results = {}
  for dtype, path in [(jnp.float32, "layers"), (jnp.bfloat16, "layers"), (jnp.bfloat16, "vmap")]:
    network = samx.models.SmallCNN((12, 12, 1), 3, width=0.25, dtype=dtype, rngs=nnx.Rngs(0))
    params = nnx.state(network, nnx.Param)
    objective = samx.Objective.from_nnx(network, xent, x, y)
    tx = samx.sam(0.05, group_size=1, group_path=path)
    updates, _ = jax.jit(lambda p, o, tx=tx: tx.update(o.grad(p), tx.init(p), p, objective=o))(
        params, objective)
    results[jnp.dtype(dtype).name, path] = jax.tree.leaves(updates)
  reference = results["float32", "layers"]
  for full, layers, vmapped in zip(reference, results["bfloat16", "layers"],
                                   results["bfloat16", "vmap"], strict=True):
    assert layers.dtype == jnp.float32 and np.all(np.isfinite(layers))
    error, vmap_error = (float(jnp.linalg.norm(full - other)) for other in (layers, vmapped))
    assert error <= 1.5 * vmap_error + 0.01 * float(jnp.linalg.norm(full)) + 1e-6
    assert error <= 0.1 * float(jnp.linalg.norm(full)) + 1e-6


# ---------------------------------------------------------------- no per-example weights


def _largest_intermediate(tx, apply_fn, params, x, y):
  def update(p, inputs, targets):
    objective = samx.Objective(apply_fn, xent, inputs, targets)
    return tx.update(objective.grad(p), tx.init(p), p, objective=objective)[0]

  jaxpr = jax.make_jaxpr(update)(params, x, y)
  sizes = []

  def visit(inner):
    for eqn in inner.eqns:
      sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
      for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
        visit(sub)
      for value in eqn.params.values():
        if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
          visit(value.jaxpr)
        elif hasattr(value, "eqns"):
          visit(value)

  visit(jaxpr.jaxpr)
  return max(sizes)


def test_layers_path_never_forms_per_example_weights():
  """1-SAM on an MLP: no intermediate as large as batch x the largest weight on the layers path
  (the vmap path has several)."""
  params = {"w1": normal(0, (64, 48)), "w2": normal(1, (48, 3))}

  def apply_fn(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  x, y = normal(2, (16, 64), 1.0), jnp.arange(16) % 3
  per_example_weights = 16 * 64 * 48
  vmapped = _largest_intermediate(samx.sam(0.1, group_size=1, group_path="vmap"), apply_fn,
                                  params, x, y)
  layers = _largest_intermediate(samx.sam(0.1, group_size=1), apply_fn, params, x, y)
  assert vmapped >= per_example_weights
  assert layers <= 64 * 48, layers


# ---------------------------------------------------------------- the plan, its log, refusals


def test_the_transform_logs_its_plan(caplog):
  x, y = normal(10, (6, 6), 1.0), jnp.arange(6) % 3
  with caplog.at_level(logging.INFO, logger="samx"):
    transform_gradients(samx.sam(0.1, group_size=1), dense_apply, dense_params(), x, y)
  text = caplog.text
  assert "group_size=1: 4 layer weights, 1 leaves by vmap" in text, text
  assert "['b_in']" in text and "used by" in text


def test_bad_group_path_is_refused():
  with pytest.raises(samx.transforms.ArgumentError, match="group_path") as error:
    samx.sam(0.1, group_size=1, group_path="fast")
  assert error.value.argument == "group_path"
  with pytest.raises(ValueError, match="group_size"):
    samx.group_plan(samx.Objective(dense_apply, xent, jnp.ones((6, 6)), jnp.zeros(6, int)),
                    dense_params(), group_size=4)
