"""Datasets from tensorflow-datasets (the optional extra ``samx[tfds]``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from samx.data._dataset import Dataset

INSTALL_HINT = ("tensorflow-datasets is not installed: pip install 'samx[tfds]' (preparing a "
                "dataset the first time also needs TensorFlow: pip install tensorflow-cpu).")


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise ImportError(f"tfds: {INSTALL_HINT}") from error
  return tfds


def load_tfds(
    name: str,
    split: str,
    *,
    prepared_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
) -> Dataset:
  """One split of the TFDS dataset ``name`` as uint8 NHWC images and int32 labels.

  The dataset is prepared once into ``prepared_dir`` — from ``manual_dir`` when the original
  files are there (TFDS then downloads nothing) — which needs TensorFlow, and is then read with
  ``tfds.data_source``, which does not. Features ``image`` and ``label`` are used.
  """
  tfds = _import_tfds()
  # array_record is the file format that tfds.data_source can read by index.
  builder = tfds.builder(name, data_dir=os.fspath(prepared_dir), file_format="array_record")
  if not builder.is_prepared():
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir))
    builder.download_and_prepare(download_config=config)
  features = builder.info.features
  # A dataset of (image, label) examples has a dict of features; anything else has neither.
  is_dict = isinstance(features, tfds.features.FeaturesDict)
  found = list(features) if is_dict else []
  if not is_dict or "image" not in found or "label" not in found:
    raise ValueError(f"tfds:{name} has features {found}; samx needs 'image' and 'label'.")
  label = features["label"]
  if not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(f"tfds:{name}'s 'label' is a {type(label).__name__}; samx needs a "
                     "ClassLabel (integer labels with class names).")
  # One split (a str) gives one source, a sequence of example dicts (the stubs say any tree).
  source = cast(Sequence[Mapping[str, Any]],
                tfds.data_source(name, split=split, data_dir=os.fspath(prepared_dir)))
  records = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  if images.ndim == 3:
    images = images[..., None]
  labels = np.array([int(r["label"]) for r in records], np.int32)
  return Dataset(images, labels, tuple(label.names), f"{name} (TFDS)", split,
                 {"source": f"tfds:{name}", "prepared_dir": str(prepared_dir)})
