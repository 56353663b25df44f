"""The configuration: overrides, round trips, and checks that name the bad key."""

import dataclasses

import pytest

from samx import train
from samx.train import config as cfg
from samx.train.optimizer import build_optimizer, learning_rate_schedule


def test_overrides_parse_each_field_type():
  c = cfg.override(cfg.Config(), [
      "optimizer.name=saner", "optimizer.rho=0.2", "optimizer.group_size=16",
      "optimizer.nesterov=true", "model.hidden=64,32", "devices=none", "epochs=7",
      "schedule.boundaries=0.3,0.6", "data.options.dim=8", "data.options.center_scale=0.5",
      "data.train_examples=100"])
  assert (c.optimizer.name, c.optimizer.rho, c.optimizer.group_size) == ("saner", 0.2, 16)
  assert c.optimizer.nesterov is True and c.model.hidden == (64, 32) and c.devices is None
  assert c.epochs == 7 and c.schedule.boundaries == (0.3, 0.6)
  assert c.data.options == {"dim": 8, "center_scale": 0.5} and c.data.train_examples == 100


@pytest.mark.parametrize(("assignment", "named"), [
    ("optimizer.rhoo=1", "optimizer.rhoo"),
    ("epoch=3", "epoch"),
    ("optimizer=1", "optimizer"),
    ("a.b.c=1", "a.b.c"),
    ("epochs=three", "epochs"),
    ("optimizer.rho=big", "optimizer.rho"),
    ("epochs=2.5", "epochs"),
    ("optimizer.nesterov=maybe", "optimizer.nesterov"),
    ("model.hidden=a,b", "model.hidden"),
    ("epochs=none", "epochs"),
    ("no-equals-sign", "section.field=value"),
])
def test_bad_overrides_name_the_key(assignment, named):
  with pytest.raises(cfg.ConfigError, match=named.replace(".", r"\.")):
    cfg.override(cfg.Config(), [assignment])


@pytest.mark.parametrize(("assignment", "named", "accepted"), [
    ("optimizer.rho=-0.1", "optimizer.rho", ">= 0"),
    ("optimizer.rho_min=0.2", "optimizer.rho_min", r"\[0, optimizer.rho = 0.05\]"),
    ("optimizer.rho_min=-0.01", "optimizer.rho_min", r"\[0, optimizer.rho"),
    ("saner.alpha=-1", "saner.alpha", ">= 0"),
    ("saner.warmup_epochs=-1", "saner.warmup_epochs", ">= 0"),
    ("gsam.alpha=-0.1", "gsam.alpha", ">= 0"),
    ("optimizer.eta=-1", "optimizer.eta", ">= 0"),
    ("optimizer.group_size=0", "optimizer.group_size", ">= 1"),
    ("optimizer.learning_rate=inf", "optimizer.learning_rate", "finite"),
    ("penalty.feature_coef=-1", "penalty.feature_coef", ">= 0"),
    ("noise.kind=symmetric", "noise.rate", "> 0"),
    ("noise.rate=1.0", "noise.rate", r"\[0, 1\)"),
    ("optimizer.name=adamw", "optimizer.name", "sgd, sam, asam"),
    ("model.name=vgg", "model.name", "mlp, resnet18"),
    ("data.name=imagenet", "data.name", "gaussian_mixture"),
    ("schedule.kind=linear", "schedule.kind", "constant, cosine, step"),
    ("schedule.boundaries=0.8,0.2", "schedule.boundaries", "increasing"),
    ("batch_size=0", "batch_size", ">= 1"),
    ("model.depth=17", "model.depth", "6k \\+ 4"),
    ("noise.kind=file", "noise.file", "a path"),
    ("optimizer.groups_in_parallel=1", "optimizer.groups_in_parallel", "optimizer.group_size"),
    ("optimizer.perturbed_statistics=clean", "optimizer.perturbed_statistics",
     "auto, group, batch, running"),
    ("optimizer.base=lamb", "optimizer.base", "sgd, adam, adamw"),
    ("model.pooling=max", "model.pooling", "token or mean"),
    ("model.patch_size=0", "model.patch_size", ">= 1"),
])
def test_validation_names_the_key_and_the_accepted_values(assignment, named, accepted):
  # A method's own options are checked by its transform; the message names the config key.
  method = {"saner": "saner", "gsam": "gsam"}.get(assignment.split(".")[0], "sam")
  base = cfg.override(cfg.Config(), ["noise.kind=symmetric", "noise.rate=0.2"]
                      if assignment.startswith("noise.rate=1") else [f"optimizer.name={method}"])
  key = named.replace(".", "[.]")
  with pytest.raises(cfg.ConfigError, match=f"{key} (must be|needs).*{accepted}"):
    cfg.validate(cfg.override(base, [assignment]))


def test_batch_checks_against_devices_and_group_size():
  c = cfg.override(cfg.Config(), ["optimizer.name=sam", "optimizer.group_size=48",
                                  "batch_size=128"])
  with pytest.raises(cfg.ConfigError, match="optimizer.group_size must be a divisor of "
                     "batch_size=128"):
    cfg.validate(c)
  with pytest.raises(cfg.ConfigError, match="batch_size must be divisible by the 3 devices"):
    cfg.validate(cfg.Config(batch_size=128), device_count=3)
  with pytest.raises(cfg.ConfigError, match="devices must be at most the 2 available"):
    cfg.validate(cfg.Config(devices=4), device_count=2)
  sgd = cfg.override(cfg.Config(), ["optimizer.group_size=48", "batch_size=128"])
  cfg.validate(sgd)  # sgd has no groups: nothing to divide


def test_methods_take_their_own_sections_and_the_penalty_composes():
  c = cfg.override(cfg.Config(), ["optimizer.name=saner", "saner.alpha=1.25",
                                  "saner.warmup_epochs=0", "gsam.alpha=0.2",
                                  "penalty.feature_coef=0.01"])
  assert (c.saner.alpha, c.saner.warmup_epochs, c.gsam.alpha) == (1.25, 0.0, 0.2)
  assert c.penalty.active and c.penalty.weight_coef == 0.0
  cfg.validate(c)  # alpha > 1 amplifies group B: allowed
  shorthand = cfg.override(cfg.Config(), ["optimizer.name=penalty"])
  assert shorthand.optimizer.name == "sgd" and shorthand.penalty == cfg.PENALTY_SHORTHAND
  kept = cfg.override(c, ["optimizer.name=penalty"])
  assert kept.penalty.feature_coef == 0.01  # an explicit penalty is kept


def test_keys_of_earlier_versions_still_work_and_old_run_configs_load():
  c = cfg.override(cfg.Config(), ["optimizer.alpha=0.25", "optimizer.warmup_epochs=3",
                                  "optimizer.gsam_alpha=0.3", "optimizer.feature_coef=0.01"])
  assert (c.saner.alpha, c.saner.warmup_epochs, c.saner.gsam_alpha) == (0.25, 3.0, 0.3)
  assert c.gsam.alpha == 0.3 and c.penalty.feature_coef == 0.01
  old = cfg.to_dict(cfg.Config())
  for name in ("saner", "gsam", "penalty"):
    del old[name]
  old["optimizer"].update(name="sam", alpha=0.5, warmup_epochs=50.0, gsam_alpha=0.0,
                          feature_coef=0.001, weight_coef=0.001)
  loaded = cfg.from_dict(old)
  assert loaded.optimizer.name == "sam" and not loaded.penalty.active  # sam ignored them
  old["optimizer"].update(name="penalty", feature_coef=0.01)
  loaded = cfg.from_dict(old)
  assert loaded.optimizer.name == "sgd"
  assert (loaded.penalty.feature_coef, loaded.penalty.weight_coef) == (0.01, 0.001)


@pytest.mark.parametrize("name", list(train.PRESETS))
def test_every_preset_is_valid_and_round_trips_through_json(name):
  config = cfg.validate(train.preset(name))
  assert cfg.from_dict(cfg.to_dict(config)) == config
  for optimizer in (*train.METHODS, "penalty"):  # every method can be built from every preset
    changed = cfg.validate(cfg.override(config, [f"optimizer.name={optimizer}"]))
    learning_rate = learning_rate_schedule(changed.optimizer, changed.schedule, 100, 10)
    build_optimizer(changed, learning_rate, steps_per_epoch=10)


def test_unknown_preset_and_unknown_stored_keys():
  with pytest.raises(cfg.ConfigError, match="preset must be one of quickstart"):
    train.preset("imagenet")
  stored = cfg.to_dict(cfg.Config())
  stored["optimizer"]["momentun"] = 0.9
  with pytest.raises(cfg.ConfigError, match="optimizer.momentun"):
    cfg.from_dict(stored)


def test_data_options_are_checked_before_training():
  c = cfg.override(cfg.Config(), ["data.options.dimension=8"])
  with pytest.raises(cfg.ConfigError, match="data.options.dimension .* accepted: center_scale"):
    train.load_data(c)
  big = dataclasses.replace(c, data=dataclasses.replace(c.data, options={},
                                                        train_examples=10**6))
  with pytest.raises(cfg.ConfigError, match="data.train_examples must be at most the 8192"):
    train.load_data(big)


def test_vit_options_are_checked_against_the_model_and_the_data():
  vit = cfg.override(cfg.Config(), ["model.name=vit", "model.hidden=[48]", "model.depth=2"])
  with pytest.raises(cfg.ConfigError, match=r"model.heads must be .*dividing model.hidden\[0\]"):
    cfg.validate(cfg.override(vit, ["model.heads=5"]))
  cfg.validate(cfg.override(vit, ["model.heads=4"]))  # the depth of a ViT is any count
  with pytest.raises(cfg.ConfigError, match="model.depth"):
    cfg.validate(cfg.override(vit, ["model.depth=0"]))
  from samx.train.architectures import build_model
  with pytest.raises(cfg.ConfigError, match="model.patch_size=5 must divide"):
    build_model(cfg.override(vit, ["model.patch_size=5"]).model, (32, 32, 3), 10, seed=0)
  with pytest.raises(cfg.ConfigError, match="needs images"):
    build_model(vit.model, (784,), 10, seed=0)


def test_adamw_decays_the_weights_decoupled_and_nothing_else_does():
  import jax.numpy as jnp
  import optax

  from samx.train.optimizer import build_optimizer
  config = cfg.override(cfg.Config(), ["optimizer.base=adamw", "optimizer.weight_decay=0.1",
                                       "optimizer.learning_rate=0.01"])
  tx = build_optimizer(config, optax.constant_schedule(0.01), 10)
  params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.5])}
  expected = optax.adamw(0.01, weight_decay=0.1)
  got, _ = tx.update(grads, tx.init(params), params)
  want, _ = expected.update(grads, expected.init(params), params)
  assert jnp.allclose(got["w"], want["w"])
