"""samx.looksam and samx.ae_sam in float64 against their algorithms written out step by step.

The problem is a tanh regression, f(x) = tanh(x W + b), whose gradient numpy computes by hand;
the parameters move between steps (SGD), so a direction LookSAM reuses and AE-SAM's running
statistics are those of earlier points. Also: the special cases (k=1 is SAM, alpha=0, AE-SAM
always or never SAM), the compositions (jit, optax.chain, optax.MultiSteps, nnx.Optimizer), and
that the steps that skip the second gradient really do not evaluate it.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx
from samx.transforms import ArgumentError

BATCH, INPUTS, OUTPUTS = 8, 3, 2
SIZE = OUTPUTS + INPUTS * OUTPUTS  # the leaves in jax.tree.leaves order: "b", then "w"
WEIGHT = np.arange(SIZE) >= OUTPUTS
EVERYTHING = np.ones(SIZE, bool)
STEPS, LR = 7, 0.5
TIGHT = {"rtol": 1e-11, "atol": 1e-13}


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def squared_error(outputs, targets):
  return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)


def tanh_apply(params, x):
  return jnp.tanh(x @ params["w"] + params["b"])


class TanhRegression:
  """L(b, W) = mean_i 0.5 ||tanh(x_i W + b) - y_i||^2, parameters as one flat vector [b, W]."""

  def __init__(self, seed=3):
    rng = np.random.default_rng(seed)
    self.x = rng.normal(size=(BATCH, INPUTS))
    self.y = rng.normal(size=(BATCH, OUTPUTS)) * 0.8
    self.w = rng.normal(size=SIZE)

  @staticmethod
  def unpack(v):
    return v[:OUTPUTS], v[OUTPUTS:].reshape(INPUTS, OUTPUTS)

  def grad(self, v, rows=slice(None)):
    b, w = self.unpack(v)
    out = np.tanh(self.x[rows] @ w + b)
    r = (out - self.y[rows]) / len(out) * (1.0 - out**2)
    return np.concatenate([r.sum(0), (self.x[rows].T @ r).ravel()])

  def objective(self, apply_fn=tanh_apply):
    return samx.Objective(apply_fn, squared_error, jnp.asarray(self.x), jnp.asarray(self.y))


def to_tree(v):
  b, w = TanhRegression.unpack(v)
  return {"b": jnp.asarray(b, jnp.float64), "w": jnp.asarray(w, jnp.float64)}


def to_vector(tree):
  return np.concatenate([np.asarray(tree["b"]).ravel(), np.asarray(tree["w"]).ravel()])


@pytest.fixture
def problem():
  return TanhRegression()


# ----------------------------------------------------------------- the algorithms, by hand


def sam_gradient(problem, v, g, rho, *, group_size=None, adaptive=False, eta=0.01,
                 perturbed=EVERYTHING):
  """grad L(v + eps), eps = rho T^2 g / ||T g|| on the perturbed components (T = |v| + eta for
  ASAM, 1 for SAM); with groups, the mean of each group's own such gradient."""

  def at(rows, g_rows):
    t = np.abs(v) + eta if adaptive else np.ones_like(v)
    tg = np.where(perturbed, t * g_rows, 0.0)
    return problem.grad(v + np.where(perturbed, rho * t * tg / np.linalg.norm(tg), 0.0), rows)

  if group_size is None:
    return at(slice(None), g)
  groups = [slice(k, k + group_size) for k in range(0, BATCH, group_size)]
  return np.mean([at(rows, problem.grad(v, rows)) for rows in groups], axis=0)


class LookSAMRule:
  """Liu et al.'s Algorithm 1: ``rule(t, v)`` is the update at step t from the point v; ``kept``
  is g_v after each step."""

  def __init__(self, problem, *, rho, k, alpha, **sam_options):
    self.problem, self.rho, self.k, self.alpha, self.options = problem, rho, k, alpha, sam_options
    self.g_v, self.kept = np.zeros(SIZE), []

  def __call__(self, t, v):
    g = self.problem.grad(v)
    if t % self.k == 0:
      g_s = sam_gradient(self.problem, v, g, self.rho, **self.options)
      self.g_v = g_s - (g @ g_s) / (g @ g) * g
      update = g_s
    else:
      update = g + self.alpha * np.linalg.norm(g) / np.linalg.norm(self.g_v) * self.g_v
    self.kept.append(self.g_v)
    return update


def threshold_reference(t, start=1.0, end=-1.0, total=10):
  return start + (end - start) * min(t / total, 1.0)


class AESAMRule:
  """Jiang et al.'s AE-SAM; keeps (mean, variance), the decisions and how far ||g||^2 was from
  the cutoff (relative) of every step."""

  def __init__(self, problem, *, rho, delta=0.9, threshold=threshold_reference, **sam_options):
    self.problem, self.rho, self.delta, self.threshold = problem, rho, delta, threshold
    self.options = sam_options
    self.mean = self.variance = 0.0
    self.statistics, self.decisions, self.margins = [], [], []

  def __call__(self, t, v):
    g = self.problem.grad(v)
    s, delta = g @ g, self.delta
    self.mean = delta * self.mean + (1 - delta) * s
    self.variance = delta * self.variance + (1 - delta) * (s - self.mean) ** 2
    cutoff = self.mean + self.threshold(t) * np.sqrt(self.variance)
    use_sam = bool(s >= cutoff)
    self.statistics.append((self.mean, self.variance))
    self.decisions.append(use_sam)
    self.margins.append(abs(s - cutoff) / s)
    return sam_gradient(self.problem, v, g, self.rho, **self.options) if use_sam else g


def follow(problem, rule, *, steps=STEPS, lr=LR, momentum=0.0, weight_decay=0.0):
  """``rule``'s updates followed by add_decayed_weights and SGD with momentum, as optax does
  them: the updates and the points after each step."""
  v, trace = problem.w.copy(), np.zeros(SIZE)
  updates, points = [], []
  for t in range(steps):
    update = rule(t, v)
    trace = update + weight_decay * v + momentum * trace
    v = v - lr * trace
    updates.append(update)
    points.append(v)
  return updates, points


# ------------------------------------------------------------------------ samx, step by step


def run_transform(tx, problem, *, steps=STEPS, lr=LR, objective=None, jit=True):
  """``steps`` updates of ``tx`` with SGD in between; the updates and the states after each."""
  objective = problem.objective() if objective is None else objective
  clean = problem.objective()

  def step(params, state):
    updates, state = tx.update(clean.grad(params), state, params, objective=objective)
    return jax.tree.map(lambda p, u: p - lr * u, params, updates), updates, state

  step = jax.jit(step) if jit else step
  params = to_tree(problem.w)
  state = tx.init(params)
  updates, states = [], []
  for _ in range(steps):
    params, update, state = step(params, state)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(update))
    updates.append(to_vector(update))
    states.append(state)
  return updates, states


# Every option that applies to the steps with a second gradient.
OPTIONS = {
    "plain": ({}, {}),
    "adaptive": ({"adaptive": True, "eta": 0.05}, {"adaptive": True, "eta": 0.05}),
    "groups": ({"group_size": 2}, {"group_size": 2}),
    "perturb_mask": ({"perturb_mask": {"b": False, "w": True}}, {"perturbed": WEIGHT}),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_looksam_matches_algorithm_1_step_by_step(problem, option):
  samx_options, reference_options = OPTIONS[option]
  rho, k, alpha = 0.3, 3, 0.7
  rule = LookSAMRule(problem, rho=rho, k=k, alpha=alpha, **reference_options)
  expected, points = follow(problem, rule)
  updates, states = run_transform(samx.looksam(rho, k=k, alpha=alpha, **samx_options), problem)
  for t in range(STEPS):
    np.testing.assert_allclose(updates[t], expected[t], **TIGHT, err_msg=f"step {t}")
    np.testing.assert_allclose(to_vector(states[t].orthogonal_gradient), rule.kept[t],
                               **TIGHT)
    assert int(states[t].count) == t + 1
  # The reused steps are not the gradient: the kept direction changes them noticeably.
  g = problem.grad(points[0])
  assert np.linalg.norm(updates[1] - g) > 0.1 * alpha * np.linalg.norm(g)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_ae_sam_matches_the_adaptive_policy_step_by_step(problem, option):
  samx_options, reference_options = OPTIONS[option]
  rho = 0.2
  rule = AESAMRule(problem, rho=rho, **reference_options)
  expected, _ = follow(problem, rule)
  statistics, decisions = rule.statistics, rule.decisions
  assert any(decisions) and not all(decisions), "the problem should mix SAM and SGD steps"
  assert min(rule.margins) > 1e-6, "no decision should hang on rounding"
  updates, states = run_transform(samx.ae_sam(rho, total_steps=10, **samx_options), problem)
  for t, state in enumerate(states):
    np.testing.assert_allclose(updates[t], expected[t], **TIGHT, err_msg=f"step {t}")
    assert state.mean.dtype == state.variance.dtype == jnp.float64
    np.testing.assert_allclose([float(state.mean), float(state.variance)], statistics[t],
                               rtol=1e-12, atol=0)
    assert bool(state.last_was_sam) == decisions[t]
    assert int(state.sam_steps) == sum(decisions[:t + 1])
    assert int(state.count) == t + 1


def test_ae_sam_initial_state(problem):
  state = samx.ae_sam(0.1, total_steps=5).init(to_tree(problem.w))
  assert (int(state.count), float(state.mean), float(state.variance), int(state.sam_steps),
          bool(state.last_was_sam)) == (0, 0.0, 0.0, 0, False)
  assert state.mean.dtype == jnp.float64


def test_looksam_with_k_1_is_sam(problem):
  looksam, _ = run_transform(samx.looksam(0.3, k=1, alpha=0.7), problem)
  sam, _ = run_transform(samx.sam(0.3), problem)
  np.testing.assert_allclose(looksam, sam, rtol=1e-13, atol=1e-15)
  expected, _ = follow(problem, LookSAMRule(problem, rho=0.3, k=1, alpha=0.7))
  np.testing.assert_allclose(looksam, expected, **TIGHT)


def test_looksam_with_alpha_0_is_the_gradient_between_sam_steps(problem):
  rho, k = 0.3, 3
  updates, _ = run_transform(samx.looksam(rho, k=k, alpha=0.0), problem, jit=False)  # eager
  _, points = follow(problem, LookSAMRule(problem, rho=rho, k=k, alpha=0.0))
  for t, v in enumerate([problem.w, *points[:-1]]):
    g = problem.grad(v)
    expected = sam_gradient(problem, v, g, rho) if t % k == 0 else g
    np.testing.assert_allclose(updates[t], expected, **TIGHT, err_msg=f"step {t}")


def test_ae_sam_with_a_very_low_threshold_is_sam_on_every_step(problem):
  # s >= mu + c sigma holds for c = -1e9 as soon as sigma > 0, which it is from the first step
  # (sigma_0^2 = (1 - delta) (delta s_0)^2).
  updates, states = run_transform(samx.ae_sam(0.3, threshold=lambda t: -1e9), problem)
  sam, _ = run_transform(samx.sam(0.3), problem)
  np.testing.assert_allclose(updates, sam, rtol=1e-13, atol=1e-15)
  assert int(states[-1].sam_steps) == STEPS and bool(states[-1].last_was_sam)


def test_ae_sam_with_a_very_high_threshold_is_sgd_on_every_step(problem):
  # s >= mu + c sigma fails for c = 1e9 whenever sigma > 0, and sigma > 0 from the first step
  # on (sigma_t^2 >= delta^t sigma_0^2): SGD from the very first step, not only after a few.
  updates, states = run_transform(samx.ae_sam(0.3, threshold=lambda t: 1e9), problem)
  v = problem.w.copy()
  for t in range(STEPS):
    g = problem.grad(v)
    np.testing.assert_allclose(updates[t], g, **TIGHT)
    v = v - LR * g
  assert int(states[-1].sam_steps) == 0 and not bool(states[-1].last_was_sam)


@pytest.mark.parametrize(("cutoff", "sam_first"), [(3.1, True), (3.2, False)])
def test_ae_sam_first_step_depends_on_the_threshold_alone(problem, cutoff, sam_first):
  # At t = 0: mu = (1 - delta) s and sigma = sqrt(1 - delta) delta s, so s >= mu + c sigma iff
  # 1 >= c sqrt(1 - delta): c <= 3.162 for delta = 0.9, whatever the gradient.
  _, states = run_transform(samx.ae_sam(0.3, threshold=lambda t: cutoff), problem, steps=1)
  assert bool(states[0].last_was_sam) == sam_first
  s = np.sum(problem.grad(problem.w) ** 2)
  np.testing.assert_allclose([float(states[0].mean), float(states[0].variance)],
                             [0.1 * s, 0.1 * (0.9 * s) ** 2], rtol=1e-13)


def test_ae_sam_takes_the_sam_step_on_a_tie():
  # g = (1, 0) at every point, so s = 1; with delta = 0.75 the first step has mu = 0.25 and
  # sigma^2 = 0.25 (1 - 0.25)^2 = 0.140625, sigma = 0.375, so for c = 2 the cutoff mu + c sigma
  # is 1 = s, exactly in binary floating point: the rule is s >= cutoff, a SAM step.
  objective = samx.Objective(lambda w, x: x @ w, lambda out, y: out - y,
                             jnp.asarray(np.tile([1.0, 0.0], (4, 1))), jnp.zeros(4))
  params = jnp.asarray([0.3, -0.2])
  for cutoff, sam in ((2.0, True), (np.nextafter(2.0, 3.0), False)):
    tx = samx.ae_sam(0.1, delta=0.75, threshold=lambda t, c=cutoff: c)
    _, state = tx.update(objective.grad(params), tx.init(params), params, objective=objective)
    assert (float(state.mean), float(state.variance)) == (0.25, 0.140625)
    assert bool(state.last_was_sam) == sam


def test_ae_sam_linear_threshold_reaches_its_end_and_stays(problem):
  # start -> end over total_steps, then constant: with start = end the schedule is flat.
  flat, _ = run_transform(samx.ae_sam(0.2, total_steps=3, threshold_start=0.4,
                                      threshold_end=0.4), problem)
  custom, _ = run_transform(samx.ae_sam(0.2, threshold=lambda t: 0.4), problem)
  np.testing.assert_allclose(flat, custom, rtol=0, atol=0)
  short, states = run_transform(samx.ae_sam(0.2, total_steps=3, threshold_start=1.0,
                                            threshold_end=-0.5), problem)
  rule = AESAMRule(problem, rho=0.2, threshold=lambda t: threshold_reference(t, 1.0, -0.5, 3))
  expected, _ = follow(problem, rule)
  np.testing.assert_allclose(short, expected, **TIGHT)
  assert int(states[-1].sam_steps) == sum(rule.decisions)


# --------------------------------------------------------------------------- compositions

CHEAPER = {
    "looksam": (lambda **kw: samx.looksam(0.3, k=3, alpha=0.7, **kw),
                lambda problem, **kw: LookSAMRule(problem, rho=0.3, k=3, alpha=0.7, **kw)),
    "ae_sam": (lambda **kw: samx.ae_sam(0.2, total_steps=10, **kw),
               lambda problem, **kw: AESAMRule(problem, rho=0.2, **kw)),
}


@pytest.mark.parametrize("name", sorted(CHEAPER))
def test_first_in_a_chain_with_weight_decay_and_momentum(problem, name):
  lr, momentum, weight_decay = 0.2, 0.9, 1e-2
  tx = optax.chain(CHEAPER[name][0](), optax.add_decayed_weights(weight_decay),
                   optax.sgd(lr, momentum=momentum))
  objective = problem.objective()

  @jax.jit
  def step(params, state):
    updates, state = tx.update(objective.grad(params), state, params, objective=objective)
    return optax.apply_updates(params, updates), state

  params = to_tree(problem.w)
  state = tx.init(params)
  _, expected = follow(problem, CHEAPER[name][1](problem), lr=lr, momentum=momentum,
                       weight_decay=weight_decay)
  for t in range(STEPS):
    params, state = step(params, state)
    np.testing.assert_allclose(to_vector(params), expected[t], **TIGHT, err_msg=f"step {t}")
  assert int(state[0].count) == STEPS


@pytest.mark.filterwarnings("ignore::samx.CompositionWarning")  # on purpose here
@pytest.mark.parametrize("name", sorted(CHEAPER))
def test_inside_multisteps_on_repeated_microbatches(problem, name):
  # Two calls per optimizer step on the same batch: the inner transform sees their mean, the
  # same gradient, once per optimizer step, and its count advances once per step.
  micro = 2
  tx = optax.MultiSteps(optax.chain(CHEAPER[name][0](), optax.sgd(LR)), every_k_schedule=micro,
                        accumulator_dtype=jnp.float64)  # optax accumulates in float32 else
  objective = problem.objective()

  @jax.jit
  def call(params, state):
    updates, state = tx.update(objective.grad(params), state, params, objective=objective)
    return optax.apply_updates(params, updates), state

  params = to_tree(problem.w)
  state = tx.init(params)
  _, expected = follow(problem, CHEAPER[name][1](problem))
  for t in range(STEPS):
    for _ in range(micro):
      params, state = call(params, state)
    np.testing.assert_allclose(to_vector(params), expected[t], **TIGHT, err_msg=f"step {t}")
    assert int(state.inner_opt_state[0].count) == t + 1


class TanhLayer(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(INPUTS, OUTPUTS, param_dtype=jnp.float64, dtype=jnp.float64,
                             rngs=rngs)

  def __call__(self, x):
    return jnp.tanh(self.linear(x))


def kernel_only(params):
  """A callable mask over an nnx.State: the kernels."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "kernel" in jax.tree_util.keystr(path), params)


@pytest.mark.parametrize(("name", "masked"), [("looksam", False), ("ae_sam", False),
                                              ("looksam", True)])
def test_nnx_optimizer_follows_the_reference(problem, name, masked):
  model = TanhLayer(nnx.Rngs(0))
  b, w = TanhRegression.unpack(problem.w)
  model.linear.kernel[...] = jnp.asarray(w)
  model.linear.bias[...] = jnp.asarray(b)
  options = {"perturb_mask": kernel_only} if masked else {}
  optimizer = nnx.Optimizer(model, optax.chain(CHEAPER[name][0](**options), optax.sgd(LR)),
                            wrt=nnx.Param)
  x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)

  @nnx.jit
  def step(model, optimizer):
    objective = samx.Objective.from_nnx(model, squared_error, x, y)
    grads = nnx.grad(lambda m: jnp.mean(squared_error(m(x), y)))(model)
    optimizer.update(model, grads, objective=objective)

  rule = CHEAPER[name][1](problem, **({"perturbed": WEIGHT} if masked else {}))
  _, expected = follow(problem, rule, steps=5)
  for t in range(5):
    step(model, optimizer)
    got = np.concatenate([np.asarray(model.linear.bias[...]).ravel(),
                          np.asarray(model.linear.kernel[...]).ravel()])
    np.testing.assert_allclose(got, expected[t], **TIGHT, err_msg=f"step {t}")


# ---------------------------------------------- the skipped steps skip the second gradient


class CallCounter:
  """An apply_fn that counts its executions at run time (not at trace time: ``lax.cond``
  traces both branches, but under jit runs only the one taken)."""

  def __init__(self):
    self.calls = 0

  def _bump(self):
    self.calls += 1

  def __call__(self, params, x):
    jax.debug.callback(self._bump)
    return tanh_apply(params, x)

  def executions(self, run):
    """How many times ``run()`` executes the model (the callbacks flushed before counting)."""
    jax.effects_barrier()
    self.calls = 0
    result = run()
    jax.effects_barrier()
    return self.calls, result


@pytest.mark.parametrize("group_size", [None, 2])
def test_looksam_evaluates_the_second_gradient_once_every_k_steps(problem, group_size):
  # The caller's gradient comes from a model without the counter: every counted execution is
  # one the transform made.
  k, periods = 3, 2
  counter = CallCounter()
  objective = problem.objective(apply_fn=counter)
  per_sam_step, _ = counter.executions(lambda: run_transform(
      samx.sam(0.3, group_size=group_size), problem, objective=objective, steps=1))
  assert per_sam_step >= 1
  # The counter sees every executed step: SAM on each of k * periods steps runs it that often.
  every_step, _ = counter.executions(lambda: run_transform(
      samx.sam(0.3, group_size=group_size), problem, objective=objective, steps=k * periods))
  assert every_step == k * periods * per_sam_step
  looksam, (updates, _) = counter.executions(lambda: run_transform(
      samx.looksam(0.3, k=k, group_size=group_size), problem, objective=objective,
      steps=k * periods))
  assert looksam == periods * per_sam_step
  # And the counting objective gives the same updates as the plain one.
  expected, _ = follow(problem, LookSAMRule(problem, rho=0.3, k=k, alpha=0.7,
                                            group_size=group_size), steps=k * periods)
  np.testing.assert_allclose(updates, expected, **TIGHT)


def test_ae_sam_evaluates_the_second_gradient_on_its_sam_steps_only(problem):
  counter = CallCounter()
  objective = problem.objective(apply_fn=counter)
  per_sam_step, _ = counter.executions(lambda: run_transform(
      samx.sam(0.2), problem, objective=objective, steps=1))
  calls, (_, states) = counter.executions(lambda: run_transform(
      samx.ae_sam(0.2, total_steps=10), problem, objective=objective))
  sam_steps = int(states[-1].sam_steps)
  assert 0 < sam_steps < STEPS
  assert calls == sam_steps * per_sam_step


def _count(jaxpr, primitive):
  """Equations of ``primitive`` in ``jaxpr`` and in every jaxpr nested in it."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == primitive
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += _count(sub, primitive)
  return total


@pytest.mark.parametrize("name", sorted(CHEAPER))
def test_the_model_runs_only_in_the_sam_branch_of_a_cond(problem, name):
  tx = CHEAPER[name][0]()
  objective = problem.objective()
  params = to_tree(problem.w)
  grads = objective.grad(params)
  jaxpr = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, objective=objective))(
      grads, tx.init(params), params).jaxpr
  conds = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "cond"]
  assert len(conds) == 1
  # branches = (false, true): the step without the second gradient, then the SAM step.
  cheap, sam = (_count(branch.jaxpr, "tanh") for branch in conds[0].params["branches"])
  assert (cheap, sam) == (0, 1)
  assert _count(jaxpr, "tanh") == 1  # the model appears nowhere else


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("transform", "kwargs", "argument"),
    [
        (samx.looksam, {"k": 0}, "k"),
        (samx.looksam, {"k": 2.0}, "k"),
        (samx.looksam, {"k": True}, "k"),
        (samx.looksam, {"alpha": -0.1}, "alpha"),
        (samx.looksam, {"alpha": float("inf")}, "alpha"),
        (samx.looksam, {"rho": -1.0}, "rho"),
        (samx.looksam, {"group_size": 0}, "group_size"),
        (samx.ae_sam, {"total_steps": 10, "delta": 1.0}, "delta"),
        (samx.ae_sam, {"total_steps": 10, "delta": 1.5}, "delta"),
        (samx.ae_sam, {"total_steps": 10, "delta": -0.1}, "delta"),
        (samx.ae_sam, {}, "total_steps"),
        (samx.ae_sam, {"total_steps": 10, "threshold": lambda t: 0.0}, "total_steps"),
        (samx.ae_sam, {"total_steps": 0}, "total_steps"),
        (samx.ae_sam, {"total_steps": 10.0}, "total_steps"),
        (samx.ae_sam, {"threshold": 0.5}, "threshold"),
        (samx.ae_sam, {"total_steps": 10, "threshold_start": float("nan")}, "threshold_start"),
        (samx.ae_sam, {"total_steps": 10, "threshold_end": "low"}, "threshold_end"),
        (samx.ae_sam, {"total_steps": 10, "rho": float("nan")}, "rho"),
        (samx.ae_sam, {"total_steps": 10, "eta": -1.0}, "eta"),
    ],
)
def test_bad_arguments_are_refused(transform, kwargs, argument):
  kwargs = {"rho": 0.1, **kwargs}
  with pytest.raises(ArgumentError) as caught:
    transform(**kwargs)
  assert caught.value.argument == argument
  assert str(caught.value).startswith(f"samx.{transform.__name__}: ")
  assert f"`{argument}`" in str(caught.value)
