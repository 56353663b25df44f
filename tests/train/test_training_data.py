"""The run's arrays: one contract for both splits, and label noise read from a file applied to
the whole split before a subset is taken."""

import os
import pathlib

import numpy as np
import pytest

from samx import train
from samx.data import synthetic
from samx.train.training_data import SPLIT_KEYS


def gaussian(*assignments):
  return train.override(train.Config(), [
      "data.options.train_size=200", "data.options.test_size=50", "data.options.dim=5",
      "data.options.num_classes=4", *assignments])


def test_both_splits_follow_one_contract():
  data = train.load_data(gaussian("noise.kind=symmetric", "noise.rate=0.3"))
  for split in (data.train, data.test):
    assert tuple(split) == SPLIT_KEYS
    assert len({len(array) for array in split.values()}) == 1
    np.testing.assert_array_equal(split["noisy"], split["label"] != split["clean_label"])
  assert not data.test["noisy"].any() and data.train["noisy"].any()


def test_a_noise_file_is_applied_to_the_whole_split_then_subset(tmp_path):
  # The file has one label per example of the full 200-example split: example i gets
  # (clean_i + 1) % 4 when i is odd. Keep 40 examples: each keeps its own file label.
  x, clean = synthetic.gaussian_mixture(200, split="train", num_classes=4, dim=5,
                                        center_scale=0.45, seed=0)
  given = np.where(np.arange(200) % 2 == 1, (clean + 1) % 4, clean)
  path = tmp_path / "labels.npy"
  np.save(path, given)
  data = train.load_data(gaussian("noise.kind=file", f"noise.file={path}",
                                  "data.train_examples=40"))
  assert len(data.train["label"]) == 40
  rows = [int(np.flatnonzero((x == row).all(axis=1))[0]) for row in data.train["input"]]
  np.testing.assert_array_equal(data.train["label"], given[rows])
  np.testing.assert_array_equal(data.train["clean_label"], clean[rows])
  np.testing.assert_array_equal(data.train["noisy"], np.asarray(rows) % 2 == 1)


DATA_DIR = os.environ.get("SAMX_DATA_DIR")


@pytest.mark.skipif(not DATA_DIR or not (pathlib.Path(DATA_DIR) / "fashion-mnist").is_dir(),
                    reason="needs SAMX_DATA_DIR with mnist/ and fashion-mnist/")
def test_five_class_dominoes_hold_out_a_validation_share_of_the_train_split():
  config = train.override(train.Config(), [
      "data.name=dominoes:fmnist_mnist", "data.options.easy_classes=0,1,2,3,4",
      "data.options.hard_classes=(0,1,2,3,4)", "data.options.validation_fraction=0.1"])
  data = train.load_data(config)
  assert data.num_classes == 5
  assert len(data.train["label"]) == 27000  # 90% of FMNIST's 5 x 6000 training images
  assert data.input_shape == (56, 28, 1) and len(data.test["label"]) == 5000
  assert set(np.unique(data.train["label"]).tolist()) == set(range(5))
