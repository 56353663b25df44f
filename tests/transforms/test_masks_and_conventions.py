"""perturb_mask, adaptive_mask, combine_per_group and saner_beta_schedule, in float64.

Every expected value is written out with numpy on a two-layer tanh network whose gradient is
back-propagated by hand, from the papers' formulas: nothing here calls samx's internals.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samx
from samx.transforms import ArgumentError

BATCH, INPUTS, HIDDEN, OUTPUTS = 16, 4, 6, 2
# The leaves in jax.tree.leaves order of {"layer1": {"b", "w"}, "layer2": {"b", "w"}}.
SHAPES = {("layer1", "b"): (HIDDEN,), ("layer1", "w"): (INPUTS, HIDDEN),
          ("layer2", "b"): (OUTPUTS,), ("layer2", "w"): (HIDDEN, OUTPUTS)}
TIGHT = {"rtol": 1e-11, "atol": 1e-12}


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _slices():
  start, slices = 0, {}
  for key, shape in SHAPES.items():
    size = int(np.prod(shape))
    slices[key] = slice(start, start + size)
    start += size
  return slices


SLICES = _slices()
SIZE = sum(int(np.prod(shape)) for shape in SHAPES.values())


def unpack(vector):
  return {key: vector[SLICES[key]].reshape(shape) for key, shape in SHAPES.items()}


def to_tree(vector):
  """The float64 parameter pytree samx sees, from the reference's flat vector."""
  tree = {"layer1": {}, "layer2": {}}
  for (layer, name), value in unpack(vector).items():
    tree[layer][name] = jnp.asarray(value, jnp.float64)
  return tree


def to_vector(tree):
  return np.concatenate([np.asarray(tree[layer][name], np.float64).ravel()
                         for layer, name in SHAPES])


def component_mask(*keys):
  """A boolean vector over the parameters' components: True on the leaves named."""
  mask = np.zeros(SIZE, bool)
  for key in keys:
    mask[SLICES[key]] = True
  return mask


WEIGHTS = component_mask(("layer1", "w"), ("layer2", "w"))
LAYER1 = component_mask(("layer1", "w"), ("layer1", "b"))
LAYER2 = component_mask(("layer2", "w"), ("layer2", "b"))
EVERYTHING = np.ones(SIZE, bool)


class TwoLayerTanh:
  """f(x) = tanh(x W1 + b1) W2 + b2, loss_i = 0.5 ||f(x_i) - y_i||^2, mean over the batch."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    self.x = rng.normal(size=(BATCH, INPUTS))
    self.y = rng.normal(size=(BATCH, OUTPUTS))
    self.w = rng.normal(size=SIZE) * 0.7  # nonzero biases, so |b| + eta differs from 1

  def _hidden(self, w, rows):
    p = unpack(w)
    return np.tanh(self.x[rows] @ p["layer1", "w"] + p["layer1", "b"])

  def outputs(self, w, rows=slice(None)):
    p = unpack(w)
    return self._hidden(w, rows) @ p["layer2", "w"] + p["layer2", "b"]

  def residual(self, w, rows=slice(None)):
    """d(mean loss)/d(outputs): the logit term."""
    out = self.outputs(w, rows)
    return (out - self.y[rows]) / len(out)

  def vjp(self, w, rows, residual):
    """J(w)^T residual, by back-propagation written out."""
    p, h = unpack(w), self._hidden(w, rows)
    grads = {("layer2", "w"): h.T @ residual, ("layer2", "b"): residual.sum(0)}
    dz = (residual @ p["layer2", "w"].T) * (1.0 - h**2)
    grads["layer1", "w"] = self.x[rows].T @ dz
    grads["layer1", "b"] = dz.sum(0)
    return np.concatenate([grads[key].ravel() for key in SHAPES])

  def grad(self, w, rows=slice(None)):
    return self.vjp(w, rows, self.residual(w, rows))

  def objective(self):
    def apply_fn(p, x):
      return jnp.tanh(x @ p["layer1"]["w"] + p["layer1"]["b"]) @ p["layer2"]["w"] + p[
          "layer2"]["b"]

    return samx.Objective(apply_fn, lambda out, y: 0.5 * jnp.sum((out - y) ** 2, axis=-1),
                          jnp.asarray(self.x), jnp.asarray(self.y))

  def groups(self, size):
    return [slice(k, k + size) for k in range(0, BATCH, size)]


def ascent(g, w, rho, perturbed=EVERYTHING, adaptive=False, eta=0.01, scaled=EVERYTHING):
  """eps = rho T^2 g / ||T g|| over the perturbed components (zero elsewhere), with T = |w| +
  eta on the scaled components under ASAM and T = 1 otherwise (T = 1 everywhere for SAM)."""
  t = np.where(scaled, np.abs(w) + eta, 1.0) if adaptive else np.ones_like(w)
  tg = np.where(perturbed, t * g, 0.0)
  return np.where(perturbed, rho * t * tg / np.linalg.norm(tg), 0.0)


def gsam_rule(g, g_sam, alpha):
  return g_sam - alpha * (g - (g @ g_sam) / (g_sam @ g_sam) * g_sam)


def saner_rule(g, g_variant, beta):
  """SANER by its definition, r = g_variant / g; returns the update and the fractions A, B, C."""
  with np.errstate(divide="ignore", invalid="ignore"):
    r = g_variant / g
  in_b, in_c = (r > 0) & (r < 1), r <= 0
  in_a = ~(in_b | in_c)
  return np.where(in_b, beta * g_variant, g_variant), np.array(
      [in_a.mean(), in_b.mean(), in_c.mean()])


@pytest.fixture
def net():
  return TwoLayerTanh()


def run(tx, net, *, eager=False):
  """One update of ``tx`` at ``net.w`` from a fresh state, under jax.jit unless ``eager``."""
  params = to_tree(net.w)
  objective = net.objective()
  step = lambda p, o: tx.update(o.grad(p), tx.init(p), p, objective=o)
  updates, state = (step if eager else jax.jit(step))(params, objective)
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float64
  return to_vector(updates), state


# ------------------------------------------------------------------------------ perturb_mask

PERTURB_MASKS = {
    # A full tree of booleans: the weight matrices only.
    "full_tree": ({"layer1": {"b": False, "w": True}, "layer2": {"b": False, "w": True}},
                  WEIGHTS),
    # A prefix: True or False for a whole layer.
    "prefix": ({"layer1": True, "layer2": False}, LAYER1),
    "numpy_bools": ({"layer1": np.False_, "layer2": np.True_}, LAYER2),
    # A callable of the parameters, as optax.masked takes.
    "callable": (lambda params: jax.tree.map(lambda leaf: leaf.ndim == 2, params), WEIGHTS),
    "callable_prefix": (lambda params: {name: name == "layer2" for name in params}, LAYER2),
}


@pytest.mark.parametrize("kind", sorted(PERTURB_MASKS))
def test_sam_perturb_mask_perturbs_the_selected_leaves_only(net, kind):
  mask, selected = PERTURB_MASKS[kind]
  rho = 0.4
  g = net.grad(net.w)
  eps = ascent(g, net.w, rho, perturbed=selected)
  assert np.all(eps[~selected] == 0) and np.linalg.norm(eps) == pytest.approx(rho)
  updates, _ = run(samx.sam(rho, perturb_mask=mask), net)
  np.testing.assert_allclose(updates, net.grad(net.w + eps), **TIGHT)
  # Not the unmasked step: the norm runs over the selected leaves only.
  unmasked = net.grad(net.w + ascent(g, net.w, rho))
  assert np.linalg.norm(updates - unmasked) > 1e-3 * np.linalg.norm(unmasked)


def test_perturb_mask_selecting_everything_is_plain_sam(net):
  plain, _ = run(samx.sam(0.3), net, eager=True)
  for mask in ({"layer1": True, "layer2": True}, True, lambda params: True):
    masked, _ = run(samx.sam(0.3, perturb_mask=mask), net, eager=True)
    np.testing.assert_allclose(masked, plain, rtol=0, atol=1e-15)


def _masked_variants(net, rho, selected):
  """The expected updates of the SAM variants with eps on the ``selected`` components."""
  g = net.grad(net.w)
  eps = ascent(g, net.w, rho, perturbed=selected)
  g_sam = net.grad(net.w + eps)
  return {
      "gsam": gsam_rule(g, g_sam, 0.4),
      "saner": saner_rule(g, g_sam, 0.5)[0],
      # J-SAM: the Jacobian at w + eps, the logit term at w; L-SAM the other way round.
      "jsam": net.vjp(net.w + eps, slice(None), net.residual(net.w)),
      "lsam": net.vjp(net.w, slice(None), net.residual(net.w + eps)),
  }


VARIANTS = {
    "gsam": lambda **kw: samx.gsam(0.5, 0.4, **kw),
    "saner": lambda **kw: samx.saner(0.5, alpha=0.5, warmup_steps=0, **kw),
    "jsam": lambda **kw: samx.jacobian_sam(0.5, **kw),
    "lsam": lambda **kw: samx.logit_sam(0.5, **kw),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("kind", ["prefix", "callable"])
def test_variants_take_the_masked_ascent_step(net, name, kind):
  mask, selected = PERTURB_MASKS[kind]
  updates, _ = run(VARIANTS[name](perturb_mask=mask), net)
  np.testing.assert_allclose(updates, _masked_variants(net, 0.5, selected)[name], **TIGHT)


def test_perturb_mask_with_groups_masks_every_groups_step(net):
  rho, m = 0.3, 4
  expected = np.mean([
      net.grad(net.w + ascent(net.grad(net.w, rows), net.w, rho, perturbed=LAYER1), rows)
      for rows in net.groups(m)], axis=0)
  updates, _ = run(samx.sam(rho, group_size=m, perturb_mask={"layer1": True, "layer2": False}),
                   net)
  np.testing.assert_allclose(updates, expected, **TIGHT)


# ----------------------------------------------------------------------------- adaptive_mask


def not_a_bias(params):
  """The ASAM authors' choice (PyTorch's ``weight`` parameters): every leaf but the biases."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key != "b", params)


def test_asam_authors_convention_scales_all_but_the_biases(net):
  rho, eta = 0.5, 0.01
  g = net.grad(net.w)
  eps = ascent(g, net.w, rho, adaptive=True, eta=eta, scaled=WEIGHTS)
  updates, _ = run(samx.sam(rho, adaptive=True, eta=eta, adaptive_mask=not_a_bias), net)
  np.testing.assert_allclose(updates, net.grad(net.w + eps), **TIGHT)
  # T = 1 on the biases: eps there is rho g_b / ||T g||, unscaled by |b| + eta.
  t = np.where(WEIGHTS, np.abs(net.w) + eta, 1.0)
  biases = ~WEIGHTS
  np.testing.assert_allclose(eps[biases], rho * g[biases] / np.linalg.norm(t * g), **TIGHT)
  everywhere, _ = run(samx.sam(rho, adaptive=True, eta=eta), net)
  assert np.linalg.norm(everywhere - updates) > 1e-4


def test_eta_zero_on_every_leaf_is_t_equal_to_abs_w(net):
  rho = 0.5
  g = net.grad(net.w)
  t = np.abs(net.w)
  eps = rho * t**2 * g / np.linalg.norm(t * g)
  updates, _ = run(samx.sam(rho, adaptive=True, eta=0.0), net)
  np.testing.assert_allclose(updates, net.grad(net.w + eps), **TIGHT)
  # The same with a mask that selects every leaf.
  masked, _ = run(samx.sam(rho, adaptive=True, eta=0.0,
                           adaptive_mask={"layer1": True, "layer2": True}), net)
  np.testing.assert_allclose(masked, updates, **TIGHT)


def test_adaptive_mask_as_a_prefix(net):
  rho, eta = 0.5, 0.1
  g = net.grad(net.w)
  eps = ascent(g, net.w, rho, adaptive=True, eta=eta, scaled=LAYER2)
  updates, _ = run(samx.sam(rho, adaptive=True, eta=eta,
                            adaptive_mask={"layer1": False, "layer2": True}), net)
  np.testing.assert_allclose(updates, net.grad(net.w + eps), **TIGHT)


def test_adaptive_mask_within_perturb_mask(net):
  # Perturb layer 1 only; of it, scale the weights by |w| + eta and leave T = 1 on the bias.
  rho, eta = 0.5, 0.05
  g = net.grad(net.w)
  eps = ascent(g, net.w, rho, perturbed=LAYER1, adaptive=True, eta=eta, scaled=WEIGHTS)
  tx = samx.sam(rho, adaptive=True, eta=eta, perturb_mask={"layer1": True, "layer2": False},
                adaptive_mask=not_a_bias)
  updates, _ = run(tx, net)
  np.testing.assert_allclose(updates, net.grad(net.w + eps), **TIGHT)
  # And the same masks in GSAM and with groups.
  updates, _ = run(samx.gsam(rho, 0.3, adaptive=True, eta=eta, adaptive_mask=not_a_bias,
                             perturb_mask={"layer1": True, "layer2": False}), net)
  np.testing.assert_allclose(updates, gsam_rule(g, net.grad(net.w + eps), 0.3), **TIGHT)
  expected = np.mean([
      net.grad(net.w + ascent(net.grad(net.w, rows), net.w, rho, perturbed=LAYER1,
                              adaptive=True, eta=eta, scaled=WEIGHTS), rows)
      for rows in net.groups(8)], axis=0)
  updates, _ = run(samx.sam(rho, adaptive=True, eta=eta, group_size=8, adaptive_mask=not_a_bias,
                            perturb_mask={"layer1": True, "layer2": False}), net)
  np.testing.assert_allclose(updates, expected, **TIGHT)


# ---------------------------------------------------------------------------------- refusals

ALL_TRANSFORMS = {
    "sam": lambda **kw: samx.sam(0.1, **kw),
    "gsam": lambda **kw: samx.gsam(0.1, 0.5, **kw),
    "saner": lambda **kw: samx.saner(0.1, warmup_steps=2, **kw),
    "lsam": lambda **kw: samx.logit_sam(0.1, **kw),
    "jsam": lambda **kw: samx.jacobian_sam(0.1, **kw),
    "looksam": lambda **kw: samx.looksam(0.1, k=2, **kw),
    "ae_sam": lambda **kw: samx.ae_sam(0.1, total_steps=10, **kw),
}

REFUSED_WHEN_BUILT = {
    "adaptive_mask_without_adaptive": ({"adaptive_mask": {"layer1": True, "layer2": False}},
                                       "adaptive_mask"),
    "perturb_mask_int_leaf": ({"perturb_mask": {"layer1": 1, "layer2": True}}, "perturb_mask"),
    "perturb_mask_string_leaf": ({"perturb_mask": {"layer1": "yes", "layer2": True}},
                                 "perturb_mask"),
    "perturb_mask_array_leaf": ({"perturb_mask": {"layer1": np.ones(3, bool), "layer2": True}},
                                "perturb_mask"),
    "perturb_mask_without_leaves": ({"perturb_mask": {}}, "perturb_mask"),
    "adaptive_mask_float_leaf": ({"adaptive": True,
                                  "adaptive_mask": {"layer1": 0.5, "layer2": True}},
                                 "adaptive_mask"),
}


@pytest.mark.parametrize("transform", sorted(ALL_TRANSFORMS))
@pytest.mark.parametrize("case", sorted(REFUSED_WHEN_BUILT))
def test_bad_masks_are_refused_when_the_transform_is_built(transform, case):
  kwargs, argument = REFUSED_WHEN_BUILT[case]
  with pytest.raises(ArgumentError) as caught:
    ALL_TRANSFORMS[transform](**kwargs)
  assert caught.value.argument == argument
  assert f"`{argument}`" in str(caught.value)


REFUSED_AT_UPDATE = {
    "perturb_mask_unknown_key": ({"perturb_mask": {"layer1": True, "layer3": False}},
                                 "perturb_mask"),
    "perturb_mask_missing_leaf": ({"perturb_mask": {"layer1": {"w": True}, "layer2": True}},
                                  "perturb_mask"),
    "perturb_mask_a_list": ({"perturb_mask": [True, False]}, "perturb_mask"),
    "perturb_mask_selects_nothing": ({"perturb_mask": {"layer1": False, "layer2": False}},
                                     "perturb_mask"),
    "callable_selects_nothing": ({"perturb_mask": lambda p: jax.tree.map(lambda _: False, p)},
                                 "perturb_mask"),
    "callable_returns_arrays": ({"perturb_mask": lambda p: jax.tree.map(jnp.isfinite, p)},
                                "perturb_mask"),
    "adaptive_mask_wrong_structure": ({"adaptive": True, "adaptive_mask": {"layer1": True}},
                                      "adaptive_mask"),
}


@pytest.mark.parametrize("transform", ["sam", "saner", "looksam", "ae_sam"])
@pytest.mark.parametrize("case", sorted(REFUSED_AT_UPDATE))
def test_masks_that_do_not_fit_the_parameters_are_refused_at_update(net, transform, case):
  kwargs, argument = REFUSED_AT_UPDATE[case]
  tx = ALL_TRANSFORMS[transform](**kwargs)  # the parameters are not known yet: accepted
  params = to_tree(net.w)
  objective = net.objective()
  for update in (tx.update, jax.jit(tx.update)):
    with pytest.raises(ArgumentError) as caught:
      update(objective.grad(params), tx.init(params), params, objective=objective)
    assert caught.value.argument == argument
    assert f"`{argument}`" in str(caught.value)


@pytest.mark.parametrize(
    ("transform", "kwargs"),
    [
        (samx.gsam, {"rho": 0.1, "alpha": 0.5, "combine_per_group": True}),
        (samx.saner, {"rho": 0.1, "warmup_steps": 0, "combine_per_group": True}),
        (samx.gsam, {"rho": 0.1, "alpha": 0.5, "group_size": 4, "combine_per_group": 1}),
        (samx.saner, {"rho": 0.1, "warmup_steps": 0, "group_size": 4,
                      "combine_per_group": "yes"}),
        (samx.saner, {"rho": 0.1, "warmup_steps": 0, "combine_per_group": None}),
    ],
)
def test_bad_combine_per_group_is_refused(transform, kwargs):
  with pytest.raises(ArgumentError) as caught:
    transform(**kwargs)
  assert caught.value.argument == "combine_per_group"
  assert str(caught.value).startswith(f"samx.{transform.__name__}: `combine_per_group")


# ------------------------------------------------------------------------- combine_per_group


def per_group_reference(net, rho, m, rule):
  """Each group's g_k, eps_k and g_sam_k by hand; the rule applied to each; averaged."""
  results = []
  for rows in net.groups(m):
    g_k = net.grad(net.w, rows)
    g_sam_k = net.grad(net.w + ascent(g_k, net.w, rho), rows)
    results.append(rule(g_k, g_sam_k))
  return results


def rule_on_the_means(net, rho, m, rule):
  pairs = per_group_reference(net, rho, m, lambda g_k, g_sam_k: (g_k, g_sam_k))
  return rule(np.mean([g for g, _ in pairs], 0), np.mean([s for _, s in pairs], 0))


@pytest.mark.parametrize("m", [1, 4])
def test_gsam_combined_per_group_is_the_mean_of_each_groups_gsam(net, m):
  rho, alpha = 0.5, 0.6
  rule = lambda g, g_sam: gsam_rule(g, g_sam, alpha)
  expected = np.mean(per_group_reference(net, rho, m, rule), axis=0)
  updates, state = run(samx.gsam(rho, alpha, group_size=m, combine_per_group=True), net)
  np.testing.assert_allclose(updates, expected, **TIGHT)
  assert int(state.count) == 1
  # combine_per_group=False applies the rule once, to the means over groups: another update.
  on_the_means, _ = run(samx.gsam(rho, alpha, group_size=m), net)
  np.testing.assert_allclose(on_the_means, rule_on_the_means(net, rho, m, rule), **TIGHT)
  assert np.linalg.norm(on_the_means - updates) > 1e-3 * np.linalg.norm(updates)


@pytest.mark.parametrize("gsam_alpha", [0.0, 0.3])
def test_saner_combined_per_group_reweights_each_group(net, gsam_alpha):
  rho, beta, m = 1.0, 0.25, 4

  def rule(g, g_sam):
    variant = gsam_rule(g, g_sam, gsam_alpha) if gsam_alpha else g_sam
    return saner_rule(g, variant, beta)

  per_group = per_group_reference(net, rho, m, rule)
  expected = np.mean([update for update, _ in per_group], axis=0)
  fractions = np.mean([fractions for _, fractions in per_group], axis=0)
  assert np.all(fractions > 0.05), "every group of components should be populated"
  tx = samx.saner(rho, alpha=beta, warmup_steps=0, gsam_alpha=gsam_alpha, group_size=m,
                  combine_per_group=True)
  updates, state = run(tx, net)
  np.testing.assert_allclose(updates, expected, **TIGHT)
  # The recorded fractions are the mean over groups of each group's fractions.
  np.testing.assert_allclose(np.array(state.group_fractions), fractions, rtol=0, atol=1e-7)
  assert float(state.beta) == beta

  # Without combine_per_group, the groups A, B, C are taken on the means over groups.
  on_the_means, mean_fractions = rule_on_the_means(net, rho, m, rule)
  tx = samx.saner(rho, alpha=beta, warmup_steps=0, gsam_alpha=gsam_alpha, group_size=m)
  updates_on_means, state = run(tx, net)
  np.testing.assert_allclose(updates_on_means, on_the_means, **TIGHT)
  np.testing.assert_allclose(np.array(state.group_fractions), mean_fractions, rtol=0, atol=1e-7)
  assert np.linalg.norm(updates_on_means - updates) > 1e-3 * np.linalg.norm(updates)
  assert np.abs(fractions - mean_fractions).max() > 1e-3


def test_saner_per_group_without_tracking_gives_the_same_update(net):
  kwargs = {"alpha": 0.5, "warmup_steps": 0, "group_size": 4, "combine_per_group": True}
  tracked, _ = run(samx.saner(1.0, **kwargs), net)
  untracked, state = run(samx.saner(1.0, track_groups=False, **kwargs), net)
  np.testing.assert_array_equal(untracked, tracked)
  assert [float(f) for f in state.group_fractions] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("transform", ["gsam", "saner"])
def test_one_group_per_batch_is_the_same_either_way(net, transform):
  make = {"gsam": lambda **kw: samx.gsam(0.5, 0.6, **kw),
          "saner": lambda **kw: samx.saner(0.5, alpha=0.3, warmup_steps=0, **kw)}[transform]
  per_group, _ = run(make(group_size=BATCH, combine_per_group=True), net)
  whole, _ = run(make(), net)
  np.testing.assert_allclose(per_group, whole, **TIGHT)


def test_combined_per_group_in_chunks_of_groups(net):
  # groups_in_parallel runs the groups in a scan over chunks; same result (to float32 sums).
  rho, alpha = 0.5, 0.6
  expected = np.mean(per_group_reference(net, rho, 2, lambda g, s: gsam_rule(g, s, alpha)), 0)
  updates, _ = run(samx.gsam(rho, alpha, group_size=2, groups_in_parallel=2,
                             combine_per_group=True), net)
  np.testing.assert_allclose(updates, expected, **TIGHT)


def test_chunks_of_groups_keep_float64(net):
  rho = 0.5
  full, _ = run(samx.sam(rho, group_size=2), net)
  chunked, _ = run(samx.sam(rho, group_size=2, groups_in_parallel=2), net)
  np.testing.assert_allclose(chunked, full, **TIGHT)


# ------------------------------------------------------------------------ saner_beta_schedule


def beta_reference(alpha, warmup_epochs, steps_per_epoch, t):
  epoch = t // steps_per_epoch + 1
  if warmup_epochs and epoch < warmup_epochs:
    return 1.0 - (1.0 - alpha) * epoch / warmup_epochs
  return alpha


@pytest.mark.parametrize(
    ("alpha", "warmup_epochs", "steps_per_epoch"),
    [(0.5, 4, 10), (0.2, 3, 1), (0.0, 2.5, 3), (0.7, 0, 5), (0.5, 1, 4), (1.0, 5, 2),
     (0.3, 50, 391)])
def test_saner_beta_schedule_values(alpha, warmup_epochs, steps_per_epoch):
  beta = samx.saner_beta_schedule(alpha, warmup_epochs, steps_per_epoch)
  steps = sorted({*range(0, int((warmup_epochs + 2) * steps_per_epoch) + 1, max(
      1, steps_per_epoch // 3)), *(k * steps_per_epoch - 1 for k in range(1, 4)), 10**6})
  for t in steps:
    for count in (t, jnp.asarray(t, jnp.int32)):
      value = beta(count)
      assert value.dtype == jnp.float64
      assert float(value) == pytest.approx(beta_reference(alpha, warmup_epochs,
                                                          steps_per_epoch, t), abs=1e-15)
  if warmup_epochs == 0:
    assert float(beta(0)) == alpha
  if warmup_epochs > 1:
    assert float(beta(0)) == pytest.approx(1.0 - (1.0 - alpha) / warmup_epochs, abs=1e-15)
  # Under jit, and as the schedules optax takes.
  np.testing.assert_allclose(jax.jit(beta)(jnp.arange(40)),
                             [beta_reference(alpha, warmup_epochs, steps_per_epoch, t)
                              for t in range(40)], rtol=0, atol=1e-15)


def test_saner_beta_schedule_is_float32_without_x64():
  with jax.enable_x64(False):
    beta = samx.saner_beta_schedule(0.5, 3, 2)
    assert beta(jnp.asarray(2)).dtype == jnp.float32
    assert float(beta(jnp.asarray(2))) == pytest.approx(1.0 - 0.5 * 2 / 3, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"alpha": -0.5, "warmup_epochs": 2, "steps_per_epoch": 3}, "alpha"),
     ({"alpha": 0.5, "warmup_epochs": -1, "steps_per_epoch": 3}, "warmup_epochs"),
     ({"alpha": 0.5, "warmup_epochs": float("nan"), "steps_per_epoch": 3}, "warmup_epochs"),
     ({"alpha": 0.5, "warmup_epochs": 2, "steps_per_epoch": 0}, "steps_per_epoch"),
     ({"alpha": 0.5, "warmup_epochs": 2, "steps_per_epoch": 2.0}, "steps_per_epoch")])
def test_saner_beta_schedule_refuses_bad_arguments(kwargs, argument):
  with pytest.raises(ArgumentError) as caught:
    samx.saner_beta_schedule(**kwargs)
  assert caught.value.argument == argument


def test_saner_follows_the_per_epoch_schedule(net):
  # Seven steps of SGD with beta set once per epoch of two steps: 0.8, 0.8, 0.6, 0.6, 0.4, ...
  rho, lr, alpha, warmup_epochs, steps_per_epoch = 1.0, 0.3, 0.4, 3, 2
  tx = samx.saner(rho, beta_schedule=samx.saner_beta_schedule(alpha, warmup_epochs,
                                                              steps_per_epoch))
  objective = net.objective()
  params = to_tree(net.w)
  state = tx.init(params)
  w = net.w.copy()
  step = jax.jit(lambda p, s: tx.update(objective.grad(p), s, p, objective=objective))
  seen = []
  for t in range(7):
    beta = beta_reference(alpha, warmup_epochs, steps_per_epoch, t)
    seen.append(beta)
    g = net.grad(w)
    expected, fractions = saner_rule(g, net.grad(w + ascent(g, w, rho)), beta)
    updates, state = step(params, state)
    np.testing.assert_allclose(to_vector(updates), expected, **TIGHT)
    assert float(state.beta) == pytest.approx(beta, abs=1e-7)
    assert int(state.count) == t + 1
    np.testing.assert_allclose(np.array(state.group_fractions), fractions, atol=1e-7)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    w = w - lr * expected
  assert seen == pytest.approx([0.8, 0.8, 0.6, 0.6, 0.4, 0.4, 0.4])


def test_the_readme_mask_recipes_work_with_nnx_optimizer():
  """The SAM-ON and ASAM-convention recipes of docs/transforms.md, as written, with
  ``nnx.Optimizer`` (which hands the transform plain arrays, while the masks are built from
  ``nnx.Param`` variables)."""
  import optax
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(3, 4, rngs=rngs)
      self.norm = nnx.BatchNorm(4, rngs=rngs)
      self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.head(nnx.relu(self.norm(self.dense(x))))

  def loss_fn(outputs, labels):
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)

  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
  y = jnp.asarray([0, 1] * 4)

  def one_step(make_tx):
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_tx(model), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
      objective = samx.Objective.from_nnx(model, loss_fn, x, y)
      grads = nnx.grad(lambda m: loss_fn(m(x), y).mean())(model)  # clean pass
      optimizer.update(model, grads, objective=objective)

    train_step(model, optimizer, x, y)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]

  sgd = optax.sgd(0.5)
  sam_on = one_step(lambda model: optax.chain(
      samx.sam(1.0, perturb_mask=samx.models.normalization_mask(model)), sgd))
  pure_mask = one_step(lambda model: optax.chain(
      samx.sam(1.0, perturb_mask=nnx.to_pure_dict(samx.models.normalization_mask(model))),
      sgd))
  callable_mask = one_step(lambda model: optax.chain(
      samx.sam(1.0, perturb_mask=lambda params: samx.models.normalization_mask(model)), sgd))
  plain = one_step(lambda model: optax.chain(samx.sam(1.0), sgd))
  for a, b, c in zip(sam_on, pure_mask, callable_mask, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  assert any(not np.array_equal(a, b) for a, b in zip(sam_on, plain, strict=True))
  asam = one_step(lambda model: optax.chain(
      samx.sam(1.0, adaptive=True, adaptive_mask=samx.models.weight_mask), sgd))
  asam_state_mask = one_step(lambda model: optax.chain(
      samx.sam(1.0, adaptive=True,
               adaptive_mask=samx.models.weight_mask(nnx.state(model, nnx.Param))), sgd))
  for a, b in zip(asam, asam_state_mask, strict=True):
    np.testing.assert_array_equal(a, b)
