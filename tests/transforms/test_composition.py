"""The transforms inside optax.chain, optax.MultiSteps, flax.nnx.Optimizer and jax.jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import LogisticRegression, apply_once, sam_reference
from flax import nnx

import samx

ALL_TRANSFORMS = {
    "sam": lambda: samx.sam(0.1),
    "asam": lambda: samx.sam(0.1, adaptive=True),
    "msam": lambda: samx.sam(0.1, group_size=4),
    "saner": lambda: samx.saner(0.1, warmup_steps=3),
    "gsam": lambda: samx.gsam(0.1, 0.3),
    "lsam": lambda: samx.logit_sam(0.1),
    "jsam": lambda: samx.jacobian_sam(0.1, group_size=4),
}


@pytest.mark.parametrize("name", sorted(ALL_TRANSFORMS))
def test_chain_with_transforms_after(logistic, name):
  # samx first, then weight decay and momentum SGD: the same as applying them by hand.
  params = jnp.asarray(logistic.w, jnp.float32)
  objective = logistic.objective()
  tx = optax.chain(ALL_TRANSFORMS[name](), optax.add_decayed_weights(5e-4),
                   optax.sgd(0.1, momentum=0.9))
  sharpness_aware = ALL_TRANSFORMS[name]()
  rest = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  state, sa_state, rest_state = tx.init(params), sharpness_aware.init(params), rest.init(params)
  p_chain, p_manual = params, params
  for _ in range(3):
    updates, state = tx.update(objective.grad(p_chain), state, p_chain, objective=objective)
    p_chain = optax.apply_updates(p_chain, updates)
    g_sa, sa_state = sharpness_aware.update(objective.grad(p_manual), sa_state, p_manual,
                                            objective=objective)
    manual, rest_state = rest.update(g_sa, rest_state, p_manual)
    p_manual = optax.apply_updates(p_manual, manual)
  np.testing.assert_allclose(p_chain, p_manual, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore::samx.CompositionWarning")  # on purpose here
def test_chain_with_a_transform_before_shapes_the_ascent_direction(logistic):
  # A positive rescaling before SAM leaves eps (a unit direction) unchanged...
  objective = logistic.objective()
  plain, _ = apply_once(optax.chain(samx.sam(0.2)), objective, logistic.w)
  scaled, _ = apply_once(optax.chain(optax.scale(7.0), samx.sam(0.2)), objective, logistic.w)
  np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-6)
  # ...while a sign flip before it makes the ascent step a descent step.
  flipped, _ = apply_once(optax.chain(optax.scale(-1.0), samx.sam(0.2)), objective, logistic.w)
  descent = logistic.grad(logistic.w - 0.2 * logistic.grad(logistic.w)
                          / np.linalg.norm(logistic.grad(logistic.w)))
  np.testing.assert_allclose(flipped, descent, rtol=1e-5, atol=1e-6)


def test_chain_passes_other_extra_args_through(logistic):
  # optax hands every extra argument to every transform; samx ignores the ones it does not use.
  tx = optax.chain(samx.sam(0.1), optax.sgd(0.1))
  params = jnp.asarray(logistic.w, jnp.float32)
  objective = logistic.objective()
  updates, _ = tx.update(objective.grad(params), tx.init(params), params, objective=objective,
                         value=jnp.float32(1.0))
  assert updates.shape == params.shape


@pytest.mark.filterwarnings("ignore::samx.CompositionWarning")  # on purpose here
def test_multisteps_around_sam_on_repeated_microbatches_is_one_sam_step(logistic):
  objective = logistic.objective()
  params = jnp.asarray(logistic.w, jnp.float32)
  tx = optax.MultiSteps(optax.chain(samx.sam(0.2), optax.sgd(1.0)), every_k_schedule=3)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(objective.grad(params), state, params, objective=objective)
  np.testing.assert_allclose(-updates, sam_reference(logistic.grad, logistic.w, 0.2), rtol=1e-5,
                             atol=1e-6)
  assert int(state.inner_opt_state[0].count) == 1


def test_sam_before_multisteps_is_per_microbatch_sam_accumulated(logistic):
  # The composition for gradient accumulation: each microbatch gets its own SAM step.
  microbatches = [slice(0, 8), slice(8, 16)]
  params = jnp.asarray(logistic.w, jnp.float32)
  tx = optax.chain(samx.sam(0.2), optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2))
  state = tx.init(params)
  for rows in microbatches:
    objective = logistic.objective(rows)
    updates, state = tx.update(objective.grad(params), state, params, objective=objective)
  expected = np.mean([sam_reference(lambda w, s=s: logistic.grad(w, s), logistic.w, 0.2)
                      for s in microbatches], axis=0)
  np.testing.assert_allclose(-updates, expected, rtol=1e-5, atol=1e-6)


class _MLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@pytest.mark.parametrize("name", sorted(ALL_TRANSFORMS))
def test_nnx_optimizer_matches_the_functional_loop(name):
  problem = LogisticRegression(n=16, d=4, seed=5)
  x = jnp.asarray(problem.x, jnp.float32)
  labels = jnp.asarray(problem.y, jnp.int32)
  make_tx = lambda: optax.chain(ALL_TRANSFORMS[name](), optax.sgd(0.1, momentum=0.9))

  model = _MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer):
    objective = samx.Objective.from_nnx(model, _xent, x, labels)
    grads = nnx.grad(lambda m: jnp.mean(_xent(m(x), labels)))(model)
    optimizer.update(model, grads, objective=objective)

  graphdef, params = nnx.split(_MLP(nnx.Rngs(0)), nnx.Param)
  apply = lambda p, inputs: nnx.merge(graphdef, p)(inputs)
  objective = samx.Objective(apply, _xent, x, labels)
  tx = make_tx()
  state = tx.init(params)

  @jax.jit
  def functional_step(params, state):
    updates, state = tx.update(objective.grad(params), state, params, objective=objective)
    return optax.apply_updates(params, updates), state

  for _ in range(4):
    nnx_step(model, optimizer)
    params, state = functional_step(params, state)
  chex.assert_trees_all_close(nnx.state(model, nnx.Param), params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_TRANSFORMS))
def test_jit_of_the_whole_step_equals_eager(logistic, name):
  objective = logistic.objective()
  params = jnp.asarray(logistic.w, jnp.float32)
  tx = ALL_TRANSFORMS[name]()

  def step(p, state, obj):
    return tx.update(obj.grad(p), state, p, objective=obj)

  eager = step(params, tx.init(params), objective)
  jitted = jax.jit(step)(params, tx.init(params), objective)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)
