"""Batching, per-process slices, mesh sharding and on-device augmentation."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samx.data import pipeline
from samx.train import virtual_cpu_devices_flags


def _arrays(n=100):
  return {"image": np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1),
          "label": np.arange(n, dtype=np.int32)}


def test_an_epoch_sees_every_full_batch_once_and_is_reproducible():
  arrays = _arrays(105)
  epoch = [np.asarray(b["label"]) for b in pipeline.batches(arrays, 10, seed=0, epoch=0)]
  assert len(epoch) == 10 and all(len(b) == 10 for b in epoch)
  seen = np.concatenate(epoch)
  assert len(np.unique(seen)) == 100
  again = [np.asarray(b["label"]) for b in pipeline.batches(arrays, 10, seed=0, epoch=0)]
  np.testing.assert_array_equal(np.concatenate(again), seen)
  other = np.concatenate([np.asarray(b["label"])
                          for b in pipeline.batches(arrays, 10, seed=0, epoch=1)])
  assert not np.array_equal(other, seen)


def test_an_epoch_started_at_a_batch_continues_with_the_same_batches():
  arrays = _arrays(105)
  whole = [np.asarray(b["label"]) for b in pipeline.batches(arrays, 10, seed=3, epoch=2)]
  rest = [np.asarray(b["label"]) for b in pipeline.batches(arrays, 10, seed=3, epoch=2, start=7)]
  assert len(rest) == 3
  for a, b in zip(whole[7:], rest, strict=True):
    np.testing.assert_array_equal(a, b)
  assert list(pipeline.batches(arrays, 10, seed=3, epoch=2, start=10)) == []
  with pytest.raises(ValueError, match="start must be an integer >= 0; got -1"):
    next(pipeline.batches(arrays, 10, seed=3, epoch=2, start=-1))


def test_rows_stay_together():
  for batch in pipeline.batches(_arrays(), 25, seed=3, epoch=0):
    labels = np.asarray(batch["label"])
    first_pixel = np.asarray(batch["image"]).reshape(25, 4)[:, 0]
    np.testing.assert_array_equal(first_pixel, labels * 4 % 256)


def test_processes_load_disjoint_halves_of_each_global_batch():
  arrays = _arrays()
  single = [set(np.asarray(b["label"]).tolist())
            for b in pipeline.batches(arrays, 20, seed=1, epoch=2)]
  halves = [[set(np.asarray(b["label"]).tolist()) for b in pipeline.batches(
      arrays, 20, seed=1, epoch=2, process_index=i, process_count=2)] for i in range(2)]
  for whole, first, second in zip(single, *halves, strict=True):
    assert len(first) == len(second) == 10 and not first & second
    assert first | second == whole


def test_bad_batch_sizes_are_errors():
  with pytest.raises(ValueError, match="divisible by the process count"):
    next(pipeline.batches(_arrays(), 15, seed=0, epoch=0, process_count=2, process_index=0))
  with pytest.raises(ValueError, match="larger than the dataset"):
    next(pipeline.batches(_arrays(10), 20, seed=0, epoch=0))
  with pytest.raises(ValueError, match="share their first dimension"):
    next(pipeline.batches({"a": np.zeros(3), "b": np.zeros(4)}, 1, seed=0, epoch=0))


def test_batches_are_sharded_over_a_mesh_of_eight_devices():
  script = textwrap.dedent("""
      import numpy as np, jax
      from jax.sharding import Mesh, PartitionSpec
      from samx.data import pipeline
      mesh = Mesh(np.array(jax.devices()), ("data",))
      arrays = {"image": np.arange(64 * 3, dtype=np.uint8).reshape(64, 3, 1, 1),
                "label": np.arange(64, dtype=np.int32)}
      sharded = list(pipeline.batches(arrays, 16, seed=0, epoch=0, mesh=mesh))
      plain = list(pipeline.batches(arrays, 16, seed=0, epoch=0))
      for a, b in zip(sharded, plain):
        assert a["label"].sharding.spec == PartitionSpec(("data",)), a["label"].sharding
        assert len(a["label"].addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
      print("ok", len(sharded))
      """)
  env = {**os.environ, "XLA_FLAGS": virtual_cpu_devices_flags(8),
         "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0 and "ok 4" in result.stdout, result.stderr


def test_random_crop_takes_windows_of_the_zero_padded_image():
  images = jnp.asarray(np.random.default_rng(0).integers(1, 256, (64, 6, 5, 2)), jnp.uint8)
  crops = np.asarray(pipeline.random_crop(jax.random.key(1), images, 2))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = set()
  for image, crop in zip(padded, crops, strict=True):
    matches = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(image[dy:dy + 6, dx:dx + 5], crop)]
    assert matches
    offsets.add(matches[0])
  assert len(offsets) > 10  # offsets vary across the batch
  np.testing.assert_array_equal(pipeline.random_crop(jax.random.key(1), images, 0), images)


def test_random_flip_mirrors_about_half():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (200, 4, 4, 1)), jnp.uint8)
  flipped = np.asarray(pipeline.random_flip(jax.random.key(2), images))
  mirrored = np.array([np.array_equal(f, np.asarray(i)[:, ::-1])
                       for f, i in zip(flipped, images, strict=True)])
  same = np.array([np.array_equal(f, np.asarray(i))
                   for f, i in zip(flipped, images, strict=True)])
  assert np.all(mirrored | same)
  assert 70 < mirrored.sum() < 130


def test_augment_is_deterministic_in_its_key_and_normalizes():
  images = jnp.full((4, 8, 8, 3), 255, jnp.uint8)
  out = pipeline.augment(jax.random.key(0), images, crop_padding=0, mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25))
  np.testing.assert_allclose(out, 2.0)
  varied = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3)), jnp.uint8)
  a = pipeline.augment(jax.random.key(5), varied)
  np.testing.assert_array_equal(a, pipeline.augment(jax.random.key(5), varied))
  assert not np.array_equal(a, pipeline.augment(jax.random.key(6), varied))
