"""Evaluation: the metrics that separate clean from noisy training examples, on fixed sets.

Both splits follow one data contract (``input``, ``label``, ``clean_label``, ``noisy``; see
:func:`samx.train.training_data.split_arrays`), so the test split and the training split are
evaluated by the same function; on the test split ``noisy`` is all False.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from samx.data import pipeline
from samx.train import stopping
from samx.train.in_flight import InFlight
from samx.train.step import Batch, Normalization, TrainState, cross_entropy, prepare_inputs
from samx.train.training_data import SPLIT_KEYS

EvalSums = Callable[[TrainState, Batch], dict[str, jax.Array]]


def make_eval_sums(eval_graphdef: nnx.GraphDef, normalization: Normalization) -> EvalSums:
  """``(state, batch) -> sums`` over a padded batch (``weight`` 0 on the padding): the example
  count, the loss, correct predictions, and the clean/noisy counts and fits."""

  def eval_sums(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    model = nnx.merge(eval_graphdef, state.params, state.model_state, copy=True)
    logits = model(prepare_inputs(batch["input"], normalization))
    predictions = jnp.argmax(logits, -1)
    weight = batch["weight"].astype(jnp.float32)
    noisy = batch["noisy"].astype(jnp.float32) * weight
    clean = weight - noisy
    fits_given = (predictions == batch["label"]).astype(jnp.float32)
    fits_true = (predictions == batch["clean_label"]).astype(jnp.float32)
    return {"count": weight.sum(), "loss": (cross_entropy(logits, batch["label"]) * weight).sum(),
            "correct": (fits_given * weight).sum(),
            "clean_count": clean.sum(), "clean_correct": (fits_given * clean).sum(),
            "noisy_count": noisy.sum(), "noisy_fits_given": (fits_given * noisy).sum(),
            "noisy_fits_true": (fits_true * noisy).sum()}

  return eval_sums


def padded(arrays: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """``arrays`` padded to a multiple of ``batch_size``, with ``weight`` 0 on the padding."""
  n = len(arrays["label"])
  size = math.ceil(n / batch_size) * batch_size
  out = {name: np.concatenate([arrays[name], np.zeros((size - n, *arrays[name].shape[1:]),
                                                      arrays[name].dtype)])
         for name in SPLIT_KEYS}
  out["weight"] = np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])
  return out


def _ratio(a: float, b: float) -> float | None:
  return a / b if b > 0 else None


class Evaluator:
  """Fixed evaluation sets: the test split, and the training split (all of it, or a fixed
  random subset of ``train_eval_examples``), each padded to whole batches of the mesh."""

  def __init__(self, eval_sums: EvalSums, mesh: Mesh, batch_axis: str | tuple[str, ...],
               sets: dict[str, dict[str, np.ndarray]], eval_batch_size: int):
    self._eval_sums, self._mesh, self._batch_axis = eval_sums, mesh, batch_axis
    shards = mesh.size * jax.process_count()
    self._sets = {}
    for name, arrays in sets.items():
      n = len(arrays["label"])
      batch = min(eval_batch_size, math.ceil(n / mesh.size) * mesh.size)
      batch = math.ceil(batch / shards) * shards
      self._sets[name] = (padded(arrays, batch), batch)

  def sums(self, state: TrainState, name: str,
           should_stop: Callable[[], bool] | None = None) -> dict[str, float]:
    """The sums of :func:`make_eval_sums` over the whole set ``name``; raises
    :class:`samx.train.stopping.StopRequested` between two batches once ``should_stop()``."""
    arrays, batch = self._sets[name]
    batch_sums, in_flight = [], InFlight()
    for inputs in pipeline.batches(arrays, batch, seed=0, epoch=0, shuffle=False,
                                   mesh=self._mesh, batch_axis=self._batch_axis):
      if should_stop is not None and should_stop():
        raise stopping.StopRequested
      batch_sums.append(self._eval_sums(state, inputs))
      in_flight.add(batch_sums[-1])
      stopping.inject("eval")
    batch_sums = jax.device_get(batch_sums)  # added on the host, in float64
    return {k: float(np.sum([sums[k] for sums in batch_sums], dtype=np.float64))
            for k in batch_sums[0]}

  def metrics(self, state: TrainState, should_stop: Callable[[], bool] | None = None
              ) -> dict[str, float | None]:
    """Test accuracy and loss; on the training set the accuracy against the given labels,
    on the clean examples, and the noisy examples' fit of their given (wrong) and true labels.
    ``should_stop`` as in :meth:`sums`."""
    test, train = self.sums(state, "test", should_stop), self.sums(state, "train", should_stop)
    return {
        "test_accuracy": _ratio(test["correct"], test["count"]),
        "test_loss": _ratio(test["loss"], test["count"]),
        "train_loss": _ratio(train["loss"], train["count"]),
        "train_accuracy": _ratio(train["correct"], train["count"]),
        "train_clean_accuracy": _ratio(train["clean_correct"], train["clean_count"]),
        "noisy_memorization": _ratio(train["noisy_fits_given"], train["noisy_count"]),
        "noisy_true_label_accuracy": _ratio(train["noisy_fits_true"], train["noisy_count"]),
    }


def train_eval_subset(train: dict[str, np.ndarray], size: int | None, seed: int
                      ) -> dict[str, np.ndarray]:
  """The fixed subset of the training split that the per-epoch metrics use (all if ``None``)."""
  n = len(train["label"])
  if size is None or size >= n:
    return train
  rows = np.sort(np.random.default_rng([seed, 3]).choice(n, size, replace=False))
  return {name: array[rows] for name, array in train.items()}
