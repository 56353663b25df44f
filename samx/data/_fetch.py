"""Downloading the small datasets' official files, for machines without them (e.g. Colab)."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import urllib.request

import numpy as np

from samx.data._checks import CorruptFileError
from samx.data._idx import read_idx
from samx.data._sources import idx_shape, resolve_data_dir

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SOURCES = {
    # dataset: (folder under data_dir, base URL of the official files)
    "mnist": ("mnist", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": ("fashion-mnist",
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
}


def fetch(name: str, data_dir: str | os.PathLike | None = None, *,
          base_url: str | None = None) -> pathlib.Path:
  """Downloads the IDX files of ``mnist`` or ``fashion_mnist`` into ``data_dir/<folder>``.

  Files already there are kept. Each download goes to a temporary file, is decoded as IDX
  and checked against the official shape (a truncated, corrupt or wrong file raises
  ``CorruptFileError``, a ``ValueError``, and is not kept) and is then moved into place, so
  :func:`samx.data.load` finds it afterwards. ``base_url`` replaces the official
  mirror (any URL ``urllib`` opens, ``file://`` included).

  Returns:
    The folder that holds the four files.
  """
  if name not in SOURCES:
    raise ValueError(f"name must be one of {sorted(SOURCES)}; got {name!r}.")
  folder_name, official = SOURCES[name]
  folder = resolve_data_dir(data_dir) / folder_name
  folder.mkdir(parents=True, exist_ok=True)
  base = official if base_url is None else base_url.rstrip("/") + "/"
  for file_name in IDX_FILES:
    target = folder / file_name
    if target.exists():
      continue
    with (tempfile.NamedTemporaryFile(dir=folder, suffix=".gz", delete=False) as partial,
          urllib.request.urlopen(base + file_name) as response):
      shutil.copyfileobj(response, partial)
    try:
      read_idx(partial.name, expected_dtype=np.uint8, expected_shape=idx_shape(name, file_name))
    except Exception as error:
      os.unlink(partial.name)
      raise CorruptFileError(f"{name}: the download of {base + file_name} is corrupt: "
                             f"{error}") from error
    os.replace(partial.name, target)
  return folder
