"""Every SAM-family transform on bfloat16 parameters: finite bfloat16 updates, within a few
percent of the float32 ones (the norms, inner products and eps are formed in float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samx

TRANSFORMS = {
    "sam": lambda: samx.sam(0.05),
    "asam": lambda: samx.sam(0.5, adaptive=True),
    "m-sam": lambda: samx.sam(0.05, group_size=4),
    "1-sam": lambda: samx.sam(0.01, group_size=1),
    "gsam": lambda: samx.gsam(0.05, 0.3),
    "saner": lambda: samx.saner(0.05, alpha=0.5, warmup_steps=0),
    "lsam": lambda: samx.logit_sam(0.05),
    "jsam": lambda: samx.jacobian_sam(0.05),
}


def mlp(params, x):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return hidden @ params["w2"]


def xent(logits, y):
  logits = logits.astype(jnp.float32)
  return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_bfloat16_updates_are_finite_and_close_to_float32(name):
  rng = np.random.default_rng(0)
  params = {"w1": rng.normal(size=(8, 16)) / 3, "b1": rng.normal(size=16) / 10,
            "w2": rng.normal(size=(16, 3)) / 4}
  x, y = rng.normal(size=(16, 8)), rng.integers(0, 3, 16)
  updates = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    p = jax.tree.map(lambda a, d=dtype: jnp.asarray(a, d), params)
    objective = samx.Objective(mlp, xent, jnp.asarray(x, dtype), jnp.asarray(y))
    tx = TRANSFORMS[name]()
    grads = objective.grad(p)
    update = jax.jit(lambda g, s, p, o, tx=tx: tx.update(g, s, p, objective=o))
    updates[dtype], _ = update(grads, tx.init(p), p, objective)
  low, high = updates[jnp.bfloat16], updates[jnp.float32]
  for leaf in jax.tree.leaves(low):
    assert leaf.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(leaf)))
  flat_low = np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(low)])
  flat_high = np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(high)])
  assert np.linalg.norm(flat_low - flat_high) <= 0.05 * np.linalg.norm(flat_high)
