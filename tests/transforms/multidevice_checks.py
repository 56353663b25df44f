"""Run in a subprocess with 8 CPU devices: the SAM family under pmap, shard_map and a Mesh.

Each check trains a small MLP for a few steps on a global batch split over 8 devices and
compares the parameters with the same training on one device. Exits non-zero on a mismatch.
"""

import os

from samx.train import virtual_cpu_devices_flags  # importing JAX does not start its backends

os.environ["XLA_FLAGS"] = virtual_cpu_devices_flags(8)
os.environ["JAX_PLATFORMS"] = "cpu"

import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import samx

DEVICES = 8
PER_DEVICE = 4
STEPS = 4


def problem():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(DEVICES * PER_DEVICE, 5)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=DEVICES * PER_DEVICE), jnp.int32)
  params = {"w1": jnp.asarray(rng.normal(size=(5, 16)) / 2, jnp.float32),
            "b1": jnp.asarray(rng.normal(size=(16,)) / 4, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(16, 3)) / 4, jnp.float32)}
  return x, labels, params


def apply_fn(p, inputs):
  return jnp.tanh(inputs @ p["w1"] + p["b1"]) @ p["w2"]


def loss_fn(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def alternating(count):
  """AE-SAM's threshold: SAM on even steps, SGD on odd ones, whatever ||g||^2 does (so that
  float32 rounding between layouts cannot flip a decision)."""
  return jnp.where(count % 2 == 0, -1e9, 1e9)


TRANSFORMS = {
    "sam": lambda **kw: samx.sam(0.1, **kw),
    "asam": lambda **kw: samx.sam(0.5, adaptive=True, **kw),
    "msam": lambda **kw: samx.sam(0.1, group_size=PER_DEVICE, **kw),
    "saner": lambda **kw: samx.saner(0.1, alpha=0.5, warmup_steps=2, **kw),
    "gsam": lambda **kw: samx.gsam(0.1, 0.5, **kw),
    # k=2 over 4 steps: two perturbed steps and two that reuse the kept direction.
    "looksam": lambda **kw: samx.looksam(0.1, k=2, alpha=0.7, **kw),
    "ae_sam": lambda **kw: samx.ae_sam(0.1, threshold=alternating, **kw),
    "sam_perturb_mask": lambda **kw: samx.sam(0.1, perturb_mask={"w1": True, "b1": False,
                                                                "w2": False}, **kw),
    # group_size = the per-device batch: on one device over the global batch, the same groups.
    "gsam_per_group": lambda **kw: samx.gsam(0.1, 0.5, group_size=PER_DEVICE,
                                             combine_per_group=True, **kw),
    "saner_per_group": lambda **kw: samx.saner(0.1, alpha=0.5, warmup_steps=2,
                                               group_size=PER_DEVICE, combine_per_group=True,
                                               **kw),
    # 1-SAM: layer weights factored (the default) and every leaf vmapped; J-SAM and L-SAM.
    "1sam": lambda **kw: samx.sam(0.1, group_size=1, **kw),
    "1sam_vmap": lambda **kw: samx.sam(0.1, group_size=1, group_path="vmap", **kw),
    "jsam_1sam": lambda **kw: samx.jacobian_sam(0.1, group_size=1, **kw),
    "lsam_1sam": lambda **kw: samx.logit_sam(0.1, group_size=1, **kw),
}


def optimizer(name, **kw):
  return optax.chain(TRANSFORMS[name](**kw), optax.sgd(0.5, momentum=0.9))


def one_device(name, x, labels, params):
  tx = optimizer(name)

  @jax.jit
  def step(p, state):
    objective = samx.Objective(apply_fn, loss_fn, x, labels)
    updates, state = tx.update(objective.grad(p), state, p, objective=objective)
    return optax.apply_updates(p, updates), state

  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return params


def with_pmap(name, x, labels, params):
  tx = optimizer(name, axis_name="batch")

  def step(p, state, local_x, local_labels):
    objective = samx.Objective(apply_fn, loss_fn, local_x, local_labels)
    # Local gradients go in; the transform averages them over the axis.
    updates, state = tx.update(objective.grad(p), state, p, objective=objective)
    return optax.apply_updates(p, updates), state

  pstep = jax.pmap(step, axis_name="batch")
  replicate = lambda tree: jax.tree.map(lambda a: jnp.stack([a] * DEVICES), tree)
  p, state = replicate(params), replicate(tx.init(params))
  shard = lambda a: a.reshape(DEVICES, PER_DEVICE, *a.shape[1:])
  for _ in range(STEPS):
    p, state = pstep(p, state, shard(x), shard(labels))
  return jax.tree.map(lambda a: a[0], p)


def with_shard_map(name, x, labels, params):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  tx = optimizer(name, axis_name="data")

  def local_step(p, state, local_x, local_labels):
    objective = samx.Objective(apply_fn, loss_fn, local_x, local_labels)
    # The global-batch gradient (plain jax.grad of the local loss would sum over devices here).
    grads = objective.grad(p, axis_name="data")
    updates, state = tx.update(grads, state, p, objective=objective)
    return optax.apply_updates(p, updates), state

  step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                               out_specs=(P(), P())))
  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state, x, labels)
  return params


def with_mesh(name, x, labels, params):
  # Plain jax.jit over sharded arrays: no axis_name, the batch is global.
  mesh = Mesh(np.array(jax.devices()), ("data",))
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  x, labels = jax.device_put(x, batch_sharding), jax.device_put(labels, batch_sharding)
  params = jax.device_put(params, replicated)
  tx = optimizer(name)

  @jax.jit
  def step(p, state, inputs, targets):
    objective = samx.Objective(apply_fn, loss_fn, inputs, targets)
    updates, state = tx.update(objective.grad(p), state, p, objective=objective)
    return optax.apply_updates(p, updates), state

  state = jax.device_put(tx.init(params), replicated)
  for _ in range(STEPS):
    params, state = step(params, state, x, labels)
  assert len(x.sharding.device_set) == DEVICES
  return params


def main() -> int:
  assert jax.device_count() == DEVICES, jax.devices()
  x, labels, params = problem()
  failures = []
  for name in TRANSFORMS:
    # On one device, m-SAM's groups of PER_DEVICE examples are exactly the devices' batches.
    reference = one_device(name, x, labels, params)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), reference, params)
    assert max(jax.tree.leaves(moved)) > 1e-3, "training should move the parameters"
    for mode, run in [("pmap", with_pmap), ("shard_map", with_shard_map), ("mesh", with_mesh)]:
      try:
        chex.assert_trees_all_close(run(name, x, labels, params), reference, rtol=2e-5,
                                    atol=2e-6)
        print(f"ok {name} {mode}")
      except AssertionError as error:
        failures.append(f"{name} {mode}: {error}")
        print(f"FAIL {name} {mode}: {error}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
