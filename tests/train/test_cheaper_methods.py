"""The engine with the cheaper methods (LookSAM, AE-SAM, SAM-ON), the parameter masks and the
reference implementations' conventions (SANER's per-epoch beta, per-group combination)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_engine import image_data, without_timings

from samx import train
from samx.data import pipeline
from samx.train.compare import parse_optimizer_spec
from samx.train.trainer import BATCH_AXIS


def tiny(*assignments):
  """A 64-example Gaussian mixture, an MLP with one hidden layer of 8, four steps per epoch."""
  return train.override(train.Config(), [
      "data.options.train_size=64", "data.options.test_size=64", "data.options.dim=6",
      "data.options.num_classes=3", "model.hidden=8", "batch_size=16", "eval_batch_size=64",
      "epochs=2", "checkpoint_every=0", *assignments])


def histories_match(a, b):
  a, b = without_timings(a), without_timings(b)
  assert [sorted(r) for r in a] == [sorted(r) for r in b]
  for record_a, record_b in zip(a, b, strict=True):
    for key, value in record_a.items():
      if isinstance(value, float):
        assert value == pytest.approx(record_b[key], rel=1e-5, abs=1e-6), key
      else:
        assert value == record_b[key], key


def test_looksam_with_period_one_is_sam():
  looksam = train.run(tiny("optimizer.name=looksam", "looksam.k=1"), log=None).history
  sam = train.run(tiny("optimizer.name=sam"), log=None).history
  histories_match(looksam, sam)


def test_looksam_reuses_the_direction_between_perturbed_steps():
  looksam = train.run(tiny("optimizer.name=looksam", "looksam.k=3"), log=None)
  sam = train.run(tiny("optimizer.name=sam"), log=None)
  sgd = train.run(tiny("optimizer.name=sgd"), log=None)
  assert np.isfinite(looksam.history[-1]["step_loss"])
  losses = [r.history[-1]["step_loss"] for r in (looksam, sam, sgd)]
  assert len(set(losses)) == 3  # neither SAM nor SGD
  state = looksam.state.opt_state
  assert int(state[0].count) == 8
  assert any(float(np.abs(leaf).max()) > 0 for leaf in jax.tree.leaves(
      optax.tree_utils.tree_get(state, "orthogonal_gradient")))


def test_ae_sam_thresholds_at_the_extremes_are_sam_and_sgd():
  always = train.run(tiny("optimizer.name=ae_sam", "ae_sam.threshold_start=-1e6",
                          "ae_sam.threshold_end=-1e6"), log=None).history
  histories_match([{k: v for k, v in r.items() if k != "ae_sam_fraction"} for r in always],
                  train.run(tiny("optimizer.name=sam"), log=None).history)
  assert [r["ae_sam_fraction"] for r in always] == [1.0, 1.0]
  never = train.run(tiny("optimizer.name=ae_sam", "ae_sam.threshold_start=1e6",
                         "ae_sam.threshold_end=1e6"), log=None).history
  histories_match([{k: v for k, v in r.items() if k != "ae_sam_fraction"} for r in never],
                  train.run(tiny("optimizer.name=sgd"), log=None).history)
  assert [r["ae_sam_fraction"] for r in never] == [0.0, 0.0]


def test_ae_sam_default_threshold_runs_over_the_whole_run():
  result = train.run(tiny("optimizer.name=ae_sam", "epochs=4"), log=None)
  fractions = [r["ae_sam_fraction"] for r in result.history]
  assert all(0.0 <= f <= 1.0 for f in fractions) and 0 < sum(fractions) < 4
  assert int(optax.tree_utils.tree_get(result.state.opt_state, "sam_steps")) == round(
      4 * sum(fractions))


def bn_config(*assignments):
  return train.override(train.Config(), [
      "data.name=cifar10", "model.name=wide_resnet", "model.depth=10", "model.widen_factor=1",
      "epochs=1", "batch_size=32", "eval_batch_size=64", "checkpoint_every=0", *assignments])


@pytest.mark.slow
def test_sam_on_perturbs_only_the_normalization_layers():
  data = image_data()
  sam_on = train.run(bn_config("optimizer.name=sam_on"), log=None, data=data)
  masked = train.run(bn_config("optimizer.name=sam", "optimizer.perturb=normalization"),
                     log=None, data=data)
  sam = train.run(bn_config("optimizer.name=sam"), log=None, data=data)
  histories_match(sam_on.history, masked.history)
  assert sam_on.history[-1]["step_loss"] != sam.history[-1]["step_loss"]
  assert sam_on.summary["optimizer"] == "sam_on"


def test_sam_on_one_step_is_sam_with_eps_on_the_normalization_parameters():
  # One engine step (lr 1, no momentum or decay) against the formula: eps = rho g_N / ||g_N||
  # on the normalization parameters N, zero elsewhere; update -grad L(w + eps).
  from flax import nnx

  import samx.models

  data = image_data()
  config = bn_config("optimizer.name=sam_on", "optimizer.rho=0.5", "optimizer.momentum=0",
                     "optimizer.weight_decay=0", "optimizer.learning_rate=1")
  trainer = train.make_trainer(config, data)
  state = trainer.init()
  arrays = {"input": trainer.data.train["input"], "label": trainer.data.train["label"]}
  batch = next(pipeline.batches(arrays, config.batch_size, seed=config.seed, epoch=0,
                                mesh=trainer.mesh, batch_axis=BATCH_AXIS))
  params, rest = jax.tree.map(jnp.asarray, jax.device_get((state.params, state.model_state)))
  new_params = jax.device_get(trainer.train_step(state, batch)[0].params)
  x = trainer.preprocess(batch["input"])
  y = np.asarray(batch["label"])

  def loss(p):
    model = nnx.merge(trainer.graphdef, p, rest, copy=True)
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  grad = jax.jit(jax.grad(loss))
  g = grad(params)
  norm_mask = samx.models.normalization_mask(nnx.merge(trainer.graphdef, params, rest))
  selected = [leaf for leaf, m in zip(jax.tree.leaves(g), jax.tree.leaves(norm_mask),
                                      strict=True) if m]
  norm = np.sqrt(sum(float(np.sum(np.square(leaf))) for leaf in selected))
  eps = jax.tree.map(lambda d, m: 0.5 * d / norm if m else 0 * d, g, norm_mask)
  g_sam = grad(jax.tree.map(lambda w, e: w + e, params, eps))
  for new, w, d in zip(jax.tree.leaves(new_params), jax.tree.leaves(params),
                       jax.tree.leaves(g_sam), strict=True):
    np.testing.assert_allclose(new, w - d, rtol=2e-4, atol=2e-5)


def test_masks_and_per_group_rules_refused_where_they_make_no_sense():
  with pytest.raises(train.ConfigError, match="model.name=mlp has none"):
    train.make_trainer(tiny("optimizer.name=sam_on"))
  with pytest.raises(train.ConfigError, match="model.name=mlp has none"):
    train.make_trainer(tiny("optimizer.name=saner", "optimizer.perturb=normalization"))
  with pytest.raises(train.ConfigError, match="optimizer.perturb must be one of all, "):
    train.validate(tiny("optimizer.name=sam", "optimizer.perturb=kernels"))
  with pytest.raises(train.ConfigError, match="optimizer.adaptive_mask .*adaptive"):
    train.validate(tiny("optimizer.name=sam", "optimizer.adaptive_mask=weights"))
  with pytest.raises(train.ConfigError, match="gsam.combine_per_group"):
    train.validate(tiny("optimizer.name=gsam", "gsam.combine_per_group=true"))
  with pytest.raises(train.ConfigError, match="looksam.k must be an integer >= 1"):
    train.validate(tiny("optimizer.name=looksam", "looksam.k=0"))
  with pytest.raises(train.ConfigError, match="ae_sam.delta"):
    train.validate(tiny("optimizer.name=ae_sam", "ae_sam.delta=1.5"))


@pytest.mark.parametrize("settings", [
    ["optimizer.name=asam", "optimizer.adaptive_mask=weights"],
    ["optimizer.name=gsam", "optimizer.group_size=4", "gsam.combine_per_group=true"],
    ["optimizer.name=saner", "optimizer.group_size=4", "saner.combine_per_group=true"],
    ["optimizer.name=looksam", "optimizer.adaptive=true"],
])
def test_options_train(settings):
  result = train.run(tiny(*settings), log=None)
  assert np.isfinite(result.history[-1]["step_loss"])


def saner_betas(*assignments, steps):
  """SANER's recorded beta after each of the first ``steps`` engine steps."""
  config = tiny("optimizer.name=saner", "saner.alpha=0.5", *assignments)
  trainer = train.make_trainer(config)
  state = trainer.init()
  arrays = {"input": trainer.data.train["input"], "label": trainer.data.train["label"]}
  betas = []
  for epoch in range(config.epochs):
    for batch in pipeline.batches(arrays, config.batch_size, seed=config.seed, epoch=epoch,
                                  mesh=trainer.mesh, batch_axis=BATCH_AXIS):
      state, _ = trainer.train_step(state, batch)
      betas.append(float(optax.tree_utils.tree_get(state.opt_state, "beta")))
  return betas[:steps]


def test_engine_sets_saners_beta_once_per_epoch_as_its_authors_code():
  # 4 steps per epoch, K = 4: beta = 1 - 0.5 e / 4 in the 1-based epoch e < 4, then 0.5.
  betas = saner_betas("saner.warmup_epochs=4", "epochs=5", steps=20)
  expected = [1 - 0.5 * e / 4 for e in (1, 2, 3)] + [0.5, 0.5]
  assert betas == pytest.approx(np.repeat(expected, 4).tolist())
  # K = 0: alpha from the very first step.
  assert saner_betas("saner.warmup_epochs=0", steps=8) == pytest.approx([0.5] * 8)


def test_compare_knows_the_new_sections():
  assert parse_optimizer_spec("looksam+k=3+rho=0.1")[1] == [
      "optimizer.name=looksam", "looksam.k=3", "optimizer.rho=0.1"]
  assert parse_optimizer_spec("ae_sam+delta=0.5")[1] == ["optimizer.name=ae_sam",
                                                         "ae_sam.delta=0.5"]
  assert parse_optimizer_spec("sam+perturb=normalization")[1] == [
      "optimizer.name=sam", "optimizer.perturb=normalization"]


@pytest.mark.parametrize("method", ["sam", "jsam"])
def test_one_sam_by_layers_and_by_vmap_train_alike(method):
  """optimizer.group_path: the engine's 1-SAM runs (default layers path) match the vmap path."""
  layers = train.run(tiny(f"optimizer.name={method}", "optimizer.group_size=1"), log=None)
  vmapped = train.run(tiny(f"optimizer.name={method}", "optimizer.group_size=1",
                           "optimizer.group_path=vmap"), log=None)
  histories_match(layers.history, vmapped.history)
  assert layers.history[-1]["step_loss"] != train.run(
      tiny(f"optimizer.name={method}"), log=None).history[-1]["step_loss"]  # not whole-batch


def test_bad_group_path_names_the_key():
  with pytest.raises(train.ConfigError, match="optimizer.group_path"):
    train.validate(tiny("optimizer.name=sam", "optimizer.group_size=1",
                        "optimizer.group_path=fast"))
