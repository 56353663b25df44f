"""Convolutions rewritten to the canonical layout (``_canonical_convolutions``): the same values
as ``lax.conv_general_dilated`` in every layout, and inside a ``lax.cond`` branch only convolutions
in the order of XLA:CPU's fast kernels (LookSAM's and AE-SAM's perturbed steps)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx
from samx.transforms._canonical_convolutions import (
    canonical_convolution,
    with_canonical_convolutions,
)

CANONICAL = "b01f_01io->b01f"


def _labels(compiled_text):
  return sorted({line.split("dim_labels=")[1].split(",")[0]
                 for line in compiled_text.splitlines() if "dim_labels=" in line})


@pytest.mark.parametrize("numbers, lhs_shape, rhs_shape, options", [
    (("NHWC", "HWIO", "NHWC"), (2, 7, 6, 3), (3, 3, 3, 4), {"window_strides": (1, 1),
                                                            "padding": "SAME"}),
    (("NCHW", "OIHW", "NCHW"), (2, 3, 7, 6), (4, 3, 3, 2), {"window_strides": (2, 1),
                                                            "padding": ((1, 0), (2, 1))}),
    (("NHWC", "HWIO", "NCHW"), (2, 9, 8, 2), (3, 2, 2, 4), {
        "window_strides": (1, 2), "padding": ((0, 0), (1, 1)), "lhs_dilation": (2, 1),
        "rhs_dilation": (1, 2)}),
    (("NHC", "HIO", "NHC"), (3, 10, 2), (3, 2, 5), {"window_strides": (2,), "padding": "SAME"}),
    (("NHWC", "HWIO", "NHWC"), (2, 6, 6, 4), (3, 3, 2, 6), {
        "window_strides": (1, 1), "padding": "SAME", "feature_group_count": 2}),
])
def test_the_same_values_in_every_layout(numbers, lhs_shape, rhs_shape, options):
  lhs = jax.random.normal(jax.random.key(0), lhs_shape)
  rhs = jax.random.normal(jax.random.key(1), rhs_shape)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, dimension_numbers=numbers, **options)

  expected = conv(lhs, rhs)
  np.testing.assert_allclose(with_canonical_convolutions(conv)(lhs, rhs), expected, rtol=1e-5,
                             atol=1e-5)
  # The gradients (JAX's transposed convolutions, in other layouts) as well.
  def loss(x, w):
    return jnp.sum(jnp.sin(conv(x, w)))

  got = with_canonical_convolutions(jax.grad(loss, argnums=(0, 1)))(lhs, rhs)
  for a, b in zip(got, jax.grad(loss, argnums=(0, 1))(lhs, rhs), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  closed = jax.make_jaxpr(conv)(lhs, rhs)
  params = next(eqn.params for eqn in closed.jaxpr.eqns
                if eqn.primitive.name == "conv_general_dilated")
  np.testing.assert_allclose(canonical_convolution(lhs, rhs, **params), expected, rtol=1e-5,
                             atol=1e-5)


def test_a_kernel_gradient_in_a_branch_is_canonical():
  x, k = jnp.ones((4, 8, 8, 3)), jnp.ones((3, 3, 3, 3)) / 27

  def kernel_gradient(x, k):
    def loss(k):
      y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(y**2)
    return jax.grad(loss)(k)

  def branch(gradient_fn):
    return jax.jit(lambda flag, x, k: jax.lax.cond(flag, lambda: gradient_fn(x, k), lambda: k))

  plain, rewritten = branch(kernel_gradient), branch(with_canonical_convolutions(kernel_gradient))
  assert _labels(plain.lower(True, x, k).compile().as_text()) != [CANONICAL]  # XLA's own
  assert _labels(rewritten.lower(True, x, k).compile().as_text()) == [CANONICAL]
  np.testing.assert_allclose(rewritten(True, x, k), kernel_gradient(x, k), rtol=1e-5)


@pytest.mark.parametrize("make_tx", [
    lambda: samx.looksam(0.05, k=2),
    pytest.param(lambda: samx.ae_sam(0.05, total_steps=10), marks=pytest.mark.slow)])
def test_the_cheaper_variants_branches_have_only_canonical_convolutions(make_tx):
  model = samx.models.SmallCNN((8, 8, 1), 3, width=0.25, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  xent = optax.softmax_cross_entropy_with_integer_labels
  x, y = jnp.ones((4, 8, 8, 1)), jnp.arange(4) % 3

  def step(params, state):  # the update of one step, its clean gradient outside the branch
    objective = samx.Objective(lambda p, inputs: nnx.merge(graphdef, p)(inputs), xent, x, y)
    return tx.update(objective.grad(params), state, params, objective=objective)

  def clean_only(params):
    return samx.Objective(lambda p, inputs: nnx.merge(graphdef, p)(inputs), xent, x, y).grad(
        params)

  tx = make_tx()
  compiled = jax.jit(step).lower(params, tx.init(params)).compile().as_text()
  # The clean gradient outside the branch is in the layouts XLA chose for it; the branch's
  # convolutions (SAM's gradient) add the canonical one only.
  outside = _labels(jax.jit(clean_only).lower(params).compile().as_text())
  assert set(_labels(compiled)) == {*outside, CANONICAL}, (outside, _labels(compiled))


def test_the_rewritten_branch_under_a_mapped_axis_equals_the_plain_update():
  """LookSAM's perturbed branch (its collectives inside) under ``pmap`` with ``axis_name``, on
  one device: the update of the step without the map."""
  model = samx.models.SmallCNN((8, 8, 1), 3, width=0.25, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  xent = optax.softmax_cross_entropy_with_integer_labels
  x, y = jax.random.normal(jax.random.key(0), (4, 8, 8, 1)), jnp.arange(4) % 3

  def update(params, x, y, axis_name=None):
    objective = samx.Objective(lambda p, inputs: nnx.merge(graphdef, p)(inputs), xent, x, y)
    tx = samx.looksam(0.05, k=2, axis_name=axis_name)
    return tx.update(objective.grad(params), tx.init(params), params, objective=objective)[0]

  plain = jax.jit(update)(params, x, y)
  mapped = jax.pmap(lambda p, a, b: update(p, a, b, axis_name="devices"),
                    axis_name="devices")(*jax.tree.map(lambda v: v[None], (params, x, y)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6), mapped,
               plain)
