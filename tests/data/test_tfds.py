"""The tfds:NAME path: a clear error without the extra; with it, the same arrays as samx's own
reader, prepared offline from the original MNIST files in SAMX_DATA_DIR."""

import importlib.util

import numpy as np
import pytest
from test_sources import needs_real_data

import samx.data

HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None


@pytest.mark.skipif(HAS_TFDS, reason="tensorflow-datasets is installed")
def test_without_the_extra_the_error_names_it():
  with pytest.raises(ImportError, match=r"pip install 'samx\[tfds\]'"):
    samx.data.load("tfds:mnist")


@pytest.mark.skipif(not (HAS_TFDS and HAS_TF), reason="needs tensorflow-datasets and tensorflow")
@needs_real_data
@pytest.mark.slow
def test_tfds_mnist_prepared_offline_equals_the_idx_reader(tmp_path, monkeypatch):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  via_tfds = samx.data.load("tfds:mnist", "test", cache_dir=tmp_path)
  direct = samx.data.load("mnist", "test")
  assert via_tfds.images.shape == direct.images.shape == (10000, 28, 28, 1)
  assert via_tfds.images.dtype == np.uint8 and via_tfds.labels.dtype == np.int32
  # TFDS shuffles while preparing; as collections of (image, label) the two are identical.
  def canonical(dataset):
    keys = sorted(range(len(dataset)),
                  key=lambda i: (dataset.images[i].tobytes(), int(dataset.labels[i])))
    return dataset.images[keys], dataset.labels[keys]

  tfds_images, tfds_labels = canonical(via_tfds)
  direct_images, direct_labels = canonical(direct)
  np.testing.assert_array_equal(tfds_labels, direct_labels)
  np.testing.assert_array_equal(tfds_images, direct_images)
  assert via_tfds.class_names == direct.class_names
