"""BatchNorm statistics held fixed in the perturbed passes (``samx.models.statistics``).

The reference is written from the definition, in float64: the batch statistics of every
BatchNorm are recovered from Flax's own running-average update (``(new - m old) / (1 - m)``, not
the momentum-0 read the helper uses), each example's loss is the model in evaluation mode with
those statistics, and 1-SAM is a Python loop over examples: ``eps_i = rho g_i / ||g_i||``, the
update the mean of ``grad L_i(w + eps_i)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx

xent = optax.softmax_cross_entropy_with_integer_labels
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _norm(channels, rngs):
  norm = nnx.BatchNorm(channels, momentum=0.9, dtype=jnp.float64, param_dtype=jnp.float64,
                       rngs=rngs)
  for stat in (norm.mean, norm.var):  # Flax keeps them float32; float64 for a float64 model
    stat.set_value(stat[...].astype(jnp.float64) + 0.1)
  return norm


class TinyResNet(nnx.Module):
  """A BatchNorm ResNet in miniature: stem conv-BN-ReLU, one basic block (conv-BN-ReLU-conv-BN
  plus the identity, ReLU), one block with a strided projection shortcut, pool, dense head."""

  def __init__(self, rngs):
    kw = {"dtype": jnp.float64, "param_dtype": jnp.float64, "rngs": rngs, "use_bias": False}
    self.stem = nnx.Conv(2, 4, (3, 3), **kw)
    self.stem_norm = _norm(4, rngs)
    self.conv1, self.norm1 = nnx.Conv(4, 4, (3, 3), **kw), _norm(4, rngs)
    self.conv2, self.norm2 = nnx.Conv(4, 4, (3, 3), **kw), _norm(4, rngs)
    self.conv3, self.norm3 = nnx.Conv(4, 6, (3, 3), strides=(2, 2), **kw), _norm(6, rngs)
    self.project, self.project_norm = nnx.Conv(4, 6, (1, 1), strides=(2, 2), **kw), _norm(6, rngs)
    self.head = nnx.Linear(6, 3, dtype=jnp.float64, param_dtype=jnp.float64, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_norm(self.stem(x)))
    y = self.norm2(self.conv2(nnx.relu(self.norm1(self.conv1(x)))))
    x = nnx.relu(x + y)
    x = nnx.relu(self.norm3(self.conv3(x)) + self.project_norm(self.project(x)))
    return self.head(jnp.mean(x, axis=(1, 2)))


def _batch():
  x = jax.random.normal(jax.random.key(1), (6, 6, 6, 2), jnp.float64) + 0.5
  return x, jnp.arange(6) % 3


def _statistics_by_definition(model, x):
  """Every BatchNorm's batch mean and variance, from Flax's own momentum update in float64."""
  before = nnx.clone(nnx.state(model, nnx.BatchStat))
  trained = nnx.clone(model)
  trained(x)
  after = nnx.state(trained, nnx.BatchStat)
  return jax.tree.map(lambda new, old: (new - 0.9 * old) / (1 - 0.9), after, before)


def test_batch_statistics_are_the_batch_mean_and_variance():
  model = TinyResNet(nnx.Rngs(0))
  x, _ = _batch()
  expected_model = nnx.clone(model)
  expected_logits = expected_model(x)  # Flax alone: the running averages it writes
  logits, stats = samx.models.batch_statistics(model, lambda m: m(x))
  np.testing.assert_array_equal(logits, expected_logits)
  stem = np.asarray(nnx.clone(model).stem(x))
  np.testing.assert_allclose(stats["stem_norm"]["mean"][...], stem.mean(axis=(0, 1, 2)), **TIGHT)
  np.testing.assert_allclose(stats["stem_norm"]["var"][...], stem.var(axis=(0, 1, 2)), **TIGHT)
  jax.tree.map(np.testing.assert_allclose, nnx.state(model, nnx.BatchStat),
               nnx.state(expected_model, nnx.BatchStat))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13),
               stats, _statistics_by_definition(TinyResNet(nnx.Rngs(0)), x))


def test_normalizing_with_the_batch_statistics_is_the_training_function_per_example():
  model = TinyResNet(nnx.Rngs(0))
  x, _ = _batch()
  logits, stats = samx.models.batch_statistics(nnx.clone(model), lambda m: m(x))
  fixed = samx.models.normalizing_with(model, stats)
  np.testing.assert_allclose(fixed(x), logits, **TIGHT)
  for i in range(2):  # one example alone: its output as inside the batch
    np.testing.assert_allclose(fixed(x[i:i + 1]), logits[i:i + 1], **TIGHT)
  # The original model is untouched: still in training mode with its own running averages.
  assert not model.stem_norm.use_running_average
  np.testing.assert_allclose(model.stem_norm.mean[...], 0.1)
  # Without statistics: the running averages, as in evaluation.
  running = samx.models.normalizing_with(model)
  evaluation = nnx.clone(model)
  evaluation.eval()
  np.testing.assert_allclose(running(x), evaluation(x), **TIGHT)


def test_a_model_without_batchnorm_is_copied_as_it_is():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  out, stats = samx.models.batch_statistics(model, lambda m: m(jnp.ones((1, 2))))
  assert out.shape == (1, 3) and not jax.tree.leaves(stats)
  np.testing.assert_array_equal(samx.models.normalizing_with(model).kernel[...],
                                model.kernel[...])


def _one_sam_by_definition(model, statistics, x, y, rho):
  """The means over examples of grad L_i(w + eps_i) and of grad L_i(w), each example alone in a
  Python loop."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  evaluation = nnx.merge(graphdef, params, rest, copy=True)
  evaluation.eval()
  nnx.update(evaluation, statistics)
  eval_graphdef, _, eval_rest = nnx.split(evaluation, nnx.Param, ...)

  def loss(p, xi, yi):
    return xent(nnx.merge(eval_graphdef, p, eval_rest, copy=True)(xi[None]), yi[None])[0]

  grad = jax.jit(jax.grad(loss))
  perturbed, clean = [], []
  for i in range(x.shape[0]):
    g = grad(params, x[i], y[i])
    norm = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g)))
    shifted = jax.tree.map(lambda w, gi, n=norm: w + rho * gi / n, params, g)
    perturbed.append(grad(shifted, x[i], y[i]))
    clean.append(g)
  mean = lambda trees: jax.tree.map(lambda *u: sum(u) / len(u), *trees)
  return mean(perturbed), mean(clean)


def _training_gradient(model, x, y):
  """The gradient of the batch loss in training mode (through the batch statistics)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return jax.grad(lambda p: jnp.mean(xent(nnx.merge(graphdef, p, rest, copy=True)(x), y)))(
      params)


def _fixed_statistics_setting():
  """The model, a batch, the model normalising with that batch's statistics, the parameters,
  and the training-mode gradient."""
  model = TinyResNet(nnx.Rngs(0))
  x, y = _batch()
  _, stats = samx.models.batch_statistics(nnx.clone(model), lambda m: m(x))
  fixed = samx.models.normalizing_with(model, stats)
  return (model, x, y, fixed, nnx.state(model, nnx.Param),
          _training_gradient(nnx.clone(model), x, y))


@pytest.mark.parametrize(("group_path", "surrogate"), [
    ("layers", True), pytest.param("layers", False, marks=pytest.mark.slow),
    pytest.param("vmap", True, marks=pytest.mark.slow),
    pytest.param("vmap", False, marks=pytest.mark.slow)])
def test_one_sam_with_the_batch_statistics_equals_the_per_example_loop(group_path, surrogate):
  """As a surrogate: the training-mode gradient plus the mean over examples of
  grad L_i(w + eps_i) - grad L_i(w); and without, that mean of grad L_i(w + eps_i) alone."""
  model, x, y, fixed, params, grads = _fixed_statistics_setting()
  tx = samx.sam(0.05, group_size=1, group_path=group_path)
  perturbed, clean = _one_sam_by_definition(
      model, _statistics_by_definition(nnx.clone(model), x), x, y, 0.05)
  objective = samx.Objective.from_nnx(fixed, xent, x, y, surrogate=surrogate)
  updates, _ = jax.jit(lambda g, p, o: tx.update(g, tx.init(p), p, objective=o))(
      grads, params, objective)
  expected = (jax.tree.map(lambda g, p, c: g + p - c, grads, perturbed, clean) if surrogate
              else perturbed)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), updates, expected)
  if group_path == "layers":
    plan = samx.group_plan(objective, params, group_size=1)
    paths = {leaf.leaf.replace(".value", ""): leaf.path for leaf in plan.leaves}
    assert all(paths[f"['{name}']['kernel']"] == "conv"
               for name in ("stem", "conv1", "conv2", "conv3", "project")), paths
    assert paths["['head']['kernel']"] == "dense", paths


@pytest.mark.slow
def test_one_sam_with_each_examples_own_statistics_is_another_function():
  """What ``perturbed_statistics="group"`` computes with group_size=1: every example normalised
  with its own statistics, a different update from the batch statistics'."""
  model = TinyResNet(nnx.Rngs(0))
  x, y = _batch()
  params = nnx.state(model, nnx.Param)
  _, stats = samx.models.batch_statistics(nnx.clone(model), lambda m: m(x))
  tx = samx.sam(0.05, group_size=1)
  results = []
  for objective in (samx.Objective.from_nnx(model, xent, x, y),
                    samx.Objective.from_nnx(samx.models.normalizing_with(model, stats), xent,
                                            x, y)):
    updates, _ = jax.jit(lambda p, o: tx.update(o.grad(p), tx.init(p), p, objective=o))(
        params, objective)
    results.append(updates)
  differences = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True)]
  assert max(differences) > 1e-2, differences


@pytest.mark.parametrize("group_size", [None, pytest.param(1, marks=pytest.mark.slow),
                                        pytest.param(3, marks=pytest.mark.slow)])
def test_a_surrogate_at_radius_zero_is_the_incoming_gradient(group_size):
  """rho = 0: the training-mode gradient exactly, though the fixed-statistics gradient, the
  update of the same objective without ``surrogate``, is another."""
  _, x, y, fixed, params, grads = _fixed_statistics_setting()
  tx = samx.sam(0.0, group_size=group_size)
  results = {}
  for surrogate in (True, False):
    objective = samx.Objective.from_nnx(fixed, xent, x, y, surrogate=surrogate)
    results[surrogate], _ = jax.jit(lambda g, p, o: tx.update(g, tx.init(p), p, objective=o))(
        grads, params, objective)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TIGHT), results[True], grads)
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(results[False]), jax.tree.leaves(grads), strict=True)) > 1e-3
