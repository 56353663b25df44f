"""The transforms' contract under bad input, the same for every transform: a step whose
gradients (or schedule values) are not finite gives an all-NaN update and leaves the state as
it was; no state aliases buffers; the arguments of ``update`` are checked by samx, naming them."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samx
from samx.transforms import ArgumentError

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 4)), jnp.float32)
Y = jnp.asarray(RNG.normal(size=16), jnp.float32)
W0 = jnp.full(4, 0.3, jnp.float32)


def squared(outputs, targets):
  return 0.5 * (outputs - targets) ** 2


def objective(apply_fn=lambda w, x: jnp.tanh(x @ w), inputs=X, targets=Y):
  return samx.Objective(apply_fn, squared, inputs, targets)


def always(_):
  return jnp.asarray(-1e9)  # AE-SAM's threshold: a SAM step every time


TRANSFORMS = {
    "sam": lambda rho: samx.sam(rho),
    "asam": lambda rho: samx.sam(rho, adaptive=True),
    "sam_m4": lambda rho: samx.sam(rho, group_size=4),
    "saner": lambda rho: samx.saner(rho, warmup_steps=4),
    "saner_per_group": lambda rho: samx.saner(rho, warmup_steps=4, group_size=4,
                                              combine_per_group=True),
    "gsam": lambda rho: samx.gsam(rho, alpha=0.2),
    "lsam": lambda rho: samx.logit_sam(rho),
    "jsam": lambda rho: samx.jacobian_sam(rho),
    "looksam": lambda rho: samx.looksam(rho, k=1),
    "looksam_reuse": lambda rho: samx.looksam(rho, k=3),
    "ae_sam": lambda rho: samx.ae_sam(rho, threshold=always),
}


def run(tx, steps, *, obj=None, bad_gradient_at=None):
  """``steps`` guarded steps of ``chain(tx, sgd)`` (a non-finite update is not applied and the
  transform's returned state is kept, as ``optax.apply_if_finite`` and the engine do); returns
  the updates and the states after each step."""
  obj = objective() if obj is None else obj
  chain = optax.chain(tx, optax.sgd(0.1))
  update = jax.jit(lambda g, s, w: chain.update(g, s, w, objective=obj))
  w, state = W0, chain.init(W0)
  updates, states = [], []
  for step in range(steps):
    g = obj.grad(w)
    if step == bad_gradient_at:
      g = g.at[1].set(jnp.inf)
    u, state = update(g, state, w)
    if bool(jnp.all(jnp.isfinite(u))):
      w = optax.apply_updates(w, u)
    updates.append(u)
    states.append(state)
  return updates, states


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_a_nonfinite_incoming_gradient_is_a_skipped_step(name):
  if name in ("sam_m4", "saner_per_group"):
    pytest.skip("with group_size the transform forms its own gradients; the caller's are unused")
  tx = TRANSFORMS[name](0.1)
  updates, states = run(tx, 8, bad_gradient_at=2)
  assert bool(jnp.all(jnp.isnan(updates[2])))
  assert_trees_equal(states[2][0], states[1][0])  # the transform's state, count included
  for u in updates[:2] + updates[3:]:
    assert bool(jnp.all(jnp.isfinite(u)))
  # the rest of training is the run without the bad step, exactly
  clean_updates, _ = run(TRANSFORMS[name](0.1), 7)
  assert_trees_equal(updates[:2] + updates[3:], clean_updates)


def blows_up_beyond(limit):
  """A model that is finite for ``|w| < limit`` and infinite beyond: the perturbed point of a
  large ``rho`` lands there while ``w`` does not."""
  return lambda w, x: jnp.tanh(x @ w) * jnp.where(jnp.max(jnp.abs(w)) > limit, jnp.inf, 1.0)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_a_nonfinite_perturbed_gradient_and_a_bad_rho_follow_the_same_rule(name):
  spike = lambda count: jnp.where(count == 3, 100.0, 0.1)
  updates, states = run(TRANSFORMS[name](spike), 6, obj=objective(blows_up_beyond(5.0)))
  assert bool(jnp.all(jnp.isnan(updates[3]))), updates[3]
  assert_trees_equal(states[3][0], states[2][0])
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in updates[:3])
  # the count did not advance, so the next step sees rho=100 again (as optax.apply_if_finite
  # leaves its inner state, count included, at a skipped step)
  assert_trees_equal(states[5][0], states[2][0])

  for bad_rho in (jnp.nan, -0.5):
    schedule = lambda count, bad=bad_rho: jnp.where(count == 2, bad, 0.1)
    updates, states = run(TRANSFORMS[name](schedule), 5)
    if name == "looksam_reuse":  # step 2 reuses g_v: rho is not used there
      assert bool(jnp.all(jnp.isfinite(updates[2])))
      continue
    assert bool(jnp.all(jnp.isnan(updates[2])))
    assert_trees_equal(states[2][0], states[1][0])


def test_ae_sam_statistics_survive_a_bad_step():
  tx = optax.chain(samx.ae_sam(0.1, total_steps=12), optax.apply_if_finite(optax.sgd(0.1), 5))
  obj = objective()
  w, state = W0, tx.init(W0)
  for step in range(12):
    g = obj.grad(w)
    if step == 2:
      g = g.at[0].set(jnp.inf)
    u, state = tx.update(g, state, w, objective=obj)
    w = optax.apply_updates(w, u)
  ae_state = state[0]
  assert np.isfinite(float(ae_state.mean)) and np.isfinite(float(ae_state.variance))
  assert int(ae_state.count) == 11 and int(ae_state.sam_steps) > 2


@pytest.mark.parametrize("name", TRANSFORMS)
def test_no_state_shares_a_buffer_and_every_state_can_be_donated(name):
  tx = optax.chain(TRANSFORMS[name](0.1), optax.sgd(0.1))
  obj = objective()
  state = tx.init(W0)  # built eagerly, as users do
  pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state)]
  assert len(set(pointers)) == len(pointers)

  def step(w, state):
    u, state = tx.update(obj.grad(w), state, w, objective=obj)
    return optax.apply_updates(w, u), state

  w, state = jax.jit(step, donate_argnums=(0, 1))(jnp.array(W0), state)
  w, state = jax.jit(step, donate_argnums=(0, 1))(w, state)
  assert bool(jnp.all(jnp.isfinite(w)))


def test_a_batch_mismatch_is_named_before_the_model_or_the_loss_sees_it():
  def loss_fn(outputs, targets):
    raise AssertionError("the loss must not see a mismatched batch")

  def apply_fn(w, x):
    raise AssertionError("the model must not see a mismatched batch")

  bad = samx.Objective(apply_fn, loss_fn, X, Y[:10])
  for tx in (samx.sam(0.1), samx.looksam(0.1), samx.ae_sam(0.1, total_steps=3),
             samx.sam(0.1, group_size=2)):
    with pytest.raises(ValueError, match=r"the objective's .* batch along axis 0 with one common"):
      tx.update(jnp.zeros(4), tx.init(W0), W0, objective=bad)


def test_gradients_that_do_not_match_the_parameters_are_named():
  params = {"w": W0, "b": jnp.zeros(())}
  obj = samx.Objective(lambda p, x: x @ p["w"] + p["b"], squared, X, Y)
  for tx in (samx.sam(0.1), samx.sam(0.1, group_size=4), samx.saner(0.1, warmup_steps=2),
             samx.looksam(0.1), samx.ae_sam(0.1, total_steps=3)):
    with pytest.raises(ArgumentError, match=r"`updates` must have the structure of "
                       r"`params`.*missing \['b'\]"):
      tx.update({"w": W0}, tx.init(params), params, objective=obj)
    with pytest.raises(ArgumentError, match=r"\['w'\] has shape \(3,\), the parameter "
                       r"\(4,\)"):
      tx.update({"w": W0[:3], "b": jnp.zeros(())}, tx.init(params), params, objective=obj)


def test_saner_on_no_parameters_is_a_no_op():
  tx = samx.saner(0.1, warmup_steps=2)
  obj = samx.Objective(lambda p, x: jnp.zeros(x.shape[0]), squared, X, Y)
  updates, state = tx.update({}, tx.init({}), {}, objective=obj)
  assert updates == {} and float(state.group_fractions.b) == 0.0


def test_looksam_at_rho_zero_is_sgd():
  """At rho=0, g_v is rounding noise; LookSAM must not step along it."""
  obj = objective()
  looksam = optax.chain(samx.looksam(0.0, k=5), optax.sgd(0.1))
  sgd = optax.sgd(0.1)

  @jax.jit
  def steps(w_l, s_l, w_s, s_s):
    u, s_l = looksam.update(obj.grad(w_l), s_l, w_l, objective=obj)
    v, s_s = sgd.update(obj.grad(w_s), s_s, w_s)
    return optax.apply_updates(w_l, u), s_l, optax.apply_updates(w_s, v), s_s

  w_l, s_l, w_s, s_s = W0, looksam.init(W0), W0, sgd.init(W0)
  for _ in range(12):
    w_l, s_l, w_s, s_s = steps(w_l, s_l, w_s, s_s)
  np.testing.assert_allclose(w_l, w_s, rtol=1e-6, atol=1e-7)
  assert float(jnp.max(jnp.abs(s_l[0].orthogonal_gradient))) == 0.0


def test_looksam_formula_has_no_overflow_at_huge_gradients():
  from samx.transforms._looksam import orthogonal_part, reuse_orthogonal_part

  g = jnp.asarray([3.0, -1.0, 2.0, 0.5])
  g_s = jnp.asarray([2.0, 1.0, 2.5, -0.5])
  v = orthogonal_part(g_s, g)
  # by hand: g_s - (<g, g_s> / ||g||^2) g
  expected = np.asarray(g_s) - (np.dot(g, g_s) / np.dot(g, g)) * np.asarray(g)
  np.testing.assert_allclose(v, expected, rtol=1e-6)
  huge = 1e30
  np.testing.assert_allclose(orthogonal_part(huge * g_s, huge * g) / huge, expected, rtol=1e-5)
  update = reuse_orthogonal_part(huge * g, huge * v, 0.7)
  assert bool(jnp.all(jnp.isfinite(update)))
  reference = np.asarray(g) + 0.7 * np.linalg.norm(g) / np.linalg.norm(expected) * expected
  np.testing.assert_allclose(update / huge, reference, rtol=1e-5)


def composition_warnings(tx, monkeypatch):
  from samx.transforms import _composition

  monkeypatch.setattr(_composition, "_warned", set())
  obj = objective()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = tx.init(W0)
    step = jax.jit(lambda w, s: tx.update(obj.grad(w), s, w, objective=obj))
    step(W0, state)
    step(W0 + 1.0, state)  # the same trace: no second warning
    jax.jit(lambda w, s: tx.update(obj.grad(w), s, w, objective=obj))(W0, state)  # a new trace
  return [str(w.message) for w in caught if w.category is samx.CompositionWarning]


def test_composition_traps_are_warned_about_once(monkeypatch):
  sgd = optax.sgd(0.1)
  assert composition_warnings(optax.chain(samx.sam(0.1), sgd), monkeypatch) == []
  found = composition_warnings(
      optax.chain(optax.clip_by_global_norm(1.0), samx.sam(0.1), sgd), monkeypatch)
  assert len(found) == 1 and "changes only the direction of eps" in found[0]
  nested = optax.chain(optax.scale(2.0), optax.chain(samx.saner(0.1, warmup_steps=3), sgd))
  assert "samx.saner is not the first" in composition_warnings(nested, monkeypatch)[0]
  outside = optax.chain(samx.looksam(0.1), optax.MultiSteps(sgd, 4).gradient_transformation())
  assert "count micro-batches" in composition_warnings(outside, monkeypatch)[0]
  inside = optax.MultiSteps(optax.chain(samx.gsam(0.1, alpha=0.1), sgd), 4)
  found = composition_warnings(inside.gradient_transformation(), monkeypatch)
  assert len(found) == 1 and "inside optax.MultiSteps" in found[0]
