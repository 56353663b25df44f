"""The method registry: a new method is one entry; the penalty composes with any method; the
step hands each method what it needs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import samx
from samx import train
from samx.data import pipeline
from samx.train.methods import Method
from samx.train.trainer import BATCH_AXIS


def tiny(*assignments):
  """A 64-example Gaussian mixture, an MLP with one hidden layer of 8, one full batch."""
  return train.override(train.Config(), [
      "data.options.train_size=64", "data.options.test_size=64", "data.options.dim=6",
      "data.options.num_classes=3", "model.hidden=8", "batch_size=64", "eval_batch_size=64",
      "epochs=1", "checkpoint_every=0", *assignments])


def test_a_new_method_is_one_entry(monkeypatch):
  # SAM at half the radius, with a per-step metric read from its state: no other change.
  entry = Method(build=lambda shared, section, steps: samx.sam(**{**shared,
                                                                   "rho": shared["rho"] / 2}),
                 summary="SAM at rho / 2",
                 step_metrics=lambda opt_state: {"transform_count": opt_state[0].count})
  monkeypatch.setitem(train.METHODS, "half_sam", entry)
  config = tiny("optimizer.name=half_sam", "epochs=2")
  result = train.run(config, log=None)
  assert result.history[-1]["transform_count"] == 2  # one step per epoch, read after it
  same = train.run(tiny("optimizer.name=sam", "epochs=2",
                        f"optimizer.rho={config.optimizer.rho / 2}"), log=None)
  assert result.history[-1]["test_accuracy"] == same.history[-1]["test_accuracy"]
  assert result.summary["optimizer"] == "half_sam"


def test_method_errors_are_config_errors_naming_the_key():
  with pytest.raises(train.ConfigError, match="saner.alpha must be a finite number >= 0"):
    train.validate(tiny("optimizer.name=saner", "saner.alpha=-0.5"))
  with pytest.raises(train.ConfigError, match="optimizer.eta must be"):
    train.validate(tiny("optimizer.name=asam", "optimizer.eta=-1"))
  with pytest.raises(train.ConfigError, match="optimizer.name must be one of sgd, sam"):
    train.validate(tiny("optimizer.name=sma"))


def one_step_params(config):
  """The parameters after one engine step from the initial ones, and the batch it used."""
  trainer = train.make_trainer(config)
  state = trainer.init()
  arrays = {"input": trainer.data.train["input"], "label": trainer.data.train["label"]}
  batch = next(pipeline.batches(arrays, config.batch_size, seed=config.seed, epoch=0,
                                mesh=trainer.mesh, batch_axis=BATCH_AXIS))
  params = jax.device_get(state.params)  # the step donates (deletes) its input state
  model = nnx.merge(trainer.graphdef, params, jax.device_get(state.model_state), copy=True)
  new_state, _ = trainer.train_step(state, batch)
  return model, params, new_state.params, batch


def regularised_loss(model, params, x, y, feature_coef, weight_coef):
  """Cross-entropy + feature_coef mean ||phi||^2 / 2 + weight_coef ||V||^2 / 2, written out."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  net = nnx.merge(graphdef, params, rest, copy=True)
  hidden = x.reshape(len(x), -1)
  for layer in net.hidden:
    hidden = jax.nn.relu(hidden @ layer.kernel[...] + layer.bias[...])
  logits = hidden @ net.head.kernel[...] + net.head.bias[...]
  log_p = jax.nn.log_softmax(logits)
  xent = -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))
  return (xent + feature_coef * 0.5 * jnp.mean(jnp.sum(hidden**2, axis=1))
          + weight_coef * 0.5 * jnp.sum(net.head.kernel[...] ** 2))


@pytest.mark.parametrize("name", ["sgd", "sam"])
def test_the_penalty_regularises_the_loss_of_any_method(name):
  # One step of momentum-free SGD (lr 1, no weight decay): sgd + penalty descends the
  # regularised loss; sam + penalty takes its gradient at w + rho g / ||g||, g its gradient.
  config = tiny(f"optimizer.name={name}", "optimizer.rho=0.5", "optimizer.momentum=0",
                "optimizer.weight_decay=0", "optimizer.learning_rate=1",
                "penalty.feature_coef=0.3", "penalty.weight_coef=0.2")
  model, params, new_params, batch = one_step_params(config)
  x, y = jnp.asarray(batch["input"]), jnp.asarray(batch["label"])
  grad = jax.grad(regularised_loss, argnums=1)
  g = grad(model, params, x, y, 0.3, 0.2)
  if name == "sam":
    norm = optax.tree.norm(g)
    g = grad(model, jax.tree.map(lambda w, d: w + 0.5 * d / norm, params, g), x, y, 0.3, 0.2)
  expected = jax.tree.map(lambda w, d: w - d, params, g)
  for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_penalty_shorthand_trains_and_says_so():
  result = train.run(tiny("optimizer.name=penalty"), log=None)
  assert result.config.optimizer.name == "sgd" and result.config.penalty.active
  assert result.summary["optimizer"] == "sgd+penalty"
