"""Datasets by name: where each one's files are looked for, and how they are read."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import numpy as np

from samx.data._checks import corrupt
from samx.data._cifar import read_cifar10, read_cifar100
from samx.data._dataset import Dataset
from samx.data._idx import read_idx
from samx.data._image_folder import default_cache_dir, read_image_folder

SPLITS = ("train", "test")
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
# The official datasets' sizes, which every load is checked against: a truncated, damaged or
# swapped file shows as another count. (Tests of the readers on small files patch this table.)
OFFICIAL_SIZES = {  # name: ({split: examples}, classes)
    "mnist": ({"train": 60_000, "test": 10_000}, 10),
    "fashion_mnist": ({"train": 60_000, "test": 10_000}, 10),
    "cifar10": ({"train": 50_000, "test": 10_000}, 10),
    "cifar100": ({"train": 50_000, "test": 10_000}, 100),
}
IDX_IMAGE_SHAPE = (28, 28)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """``data_dir``, else ``$SAMX_DATA_DIR``, else ``./data``."""
  if data_dir is not None:
    return pathlib.Path(data_dir)
  return pathlib.Path(os.environ.get("SAMX_DATA_DIR", "data"))


def _first_existing(candidates: list[pathlib.Path], dataset: str, hint: str) -> pathlib.Path:
  for candidate in candidates:
    if candidate.exists():
      return candidate
  looked = "\n  ".join(str(c) for c in candidates)
  raise FileNotFoundError(
      f"{dataset}: none of these exists:\n  {looked}\n{hint} Point samx at the folder that holds "
      "them with data_dir=... or the SAMX_DATA_DIR environment variable, or load it through "
      f"tensorflow-datasets as 'tfds:{dataset}' (pip install 'samx[tfds]').")


def check_official_size(dataset: str, split: str, source: pathlib.Path, examples: int,
                        classes: int) -> None:
  """Raises, naming ``source``, unless a split has the official numbers of examples and classes."""
  sizes, num_classes = OFFICIAL_SIZES[dataset]
  if (examples, classes) != (sizes[split], num_classes):
    raise corrupt(source, f"not the official {dataset} {split} split: expected {sizes[split]} "
                  f"examples of {num_classes} classes, found {examples} of {classes} (a truncated, "
                  "damaged or incomplete copy, or another dataset)")


def idx_shape(dataset: str, file_name: str) -> tuple[int, ...]:
  """The shape the official IDX file ``file_name`` (e.g. ``t10k-labels-idx1-ubyte.gz``) holds."""
  examples = OFFICIAL_SIZES[dataset][0]["train" if file_name.startswith("train") else "test"]
  return (examples, *IDX_IMAGE_SHAPE) if "-images-" in file_name else (examples,)


def _load_idx_dataset(folder_name: str, dataset: str, display: str, class_names, root, split,
                      cache_dir) -> Dataset:
  del cache_dir
  prefix = "train" if split == "train" else "t10k"
  arrays, paths = [], []
  for kind, rank in (("images", 3), ("labels", 1)):
    stem = f"{prefix}-{kind}-idx{rank}-ubyte"
    candidates = [folder / name for folder in (root / folder_name, root)
                  for name in (stem + ".gz", stem)]
    path = _first_existing(candidates, dataset, f"It needs the IDX files, e.g. {stem}.gz.")
    arrays.append(read_idx(path, expected_dtype=np.uint8, expected_shape=idx_shape(dataset, stem)))
    paths.append(path)
  images, labels = arrays
  if labels.max(initial=0) >= len(class_names):
    raise corrupt(paths[1], f"corrupt labels: up to {labels.max()}, expected [0, "
                  f"{len(class_names)})")
  return Dataset(images[..., None], labels.astype("int32"), class_names, display, split,
                 {"source": str(paths[0].parent)})


def _load_cifar10(root: pathlib.Path, split: str, cache_dir) -> Dataset:
  binary = [root / "cifar-10-batches-bin", root / "cifar-10-binary.tar.gz"]
  jpeg = [root / "cifar10-jpeg.tar.gz", root / "cifar10"]
  source = _first_existing(binary + jpeg, "cifar10", "It needs the official binary version "
                           "(cifar-10-binary.tar.gz) or an image folder train|test/<class>/.")
  def check(images, labels, class_names):
    check_official_size("cifar10", split, source, len(labels), len(class_names))

  if source in binary:
    images, labels, class_names = read_cifar10(source, split)
    check(images, labels, class_names)
    name = "CIFAR-10"
  else:
    images, labels, class_names = read_image_folder(source, split, cache_dir, check)
    name = "CIFAR-10 (JPEG re-encoding)"
  return Dataset(images, labels, class_names, name, split, {"source": str(source)})


def _load_cifar100(root: pathlib.Path, split: str, cache_dir) -> Dataset:
  del cache_dir
  source = _first_existing([root / "cifar-100-binary", root / "cifar-100-binary.tar.gz"],
                           "cifar100", "It needs the official binary version "
                           "(cifar-100-binary.tar.gz).")
  images, fine, fine_names, coarse, coarse_names = read_cifar100(source, split)
  check_official_size("cifar100", split, source, len(fine), len(fine_names))
  return Dataset(images, fine, fine_names, "CIFAR-100", split,
                 {"source": str(source), "coarse_labels": coarse, "coarse_names": coarse_names})


LOADERS: dict[str, Callable[[pathlib.Path, str, pathlib.Path | None], Dataset]] = {
    "mnist": lambda root, split, cache: _load_idx_dataset(
        "mnist", "mnist", "MNIST", MNIST_CLASSES, root, split, cache),
    "fashion_mnist": lambda root, split, cache: _load_idx_dataset(
        "fashion-mnist", "fashion_mnist", "Fashion-MNIST", FASHION_MNIST_CLASSES, root, split,
        cache),
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
}
ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100"}


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
  """Loads one split of a dataset into memory as uint8 NHWC images and int32 labels.

  Args:
    name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` (the official binary version, or an
      image folder such as the JPEG re-encoding ``cifar10-jpeg.tar.gz``), ``"cifar100"`` (the
      official binary version), ``"folder:PATH"`` for any ``split/<class>/*.{png,jpg}`` tree
      given as a folder or a ``.tar(.gz)``, or ``"tfds:NAME"`` for a tensorflow-datasets
      dataset (the optional extra ``samx[tfds]``). TFDS prepares it into ``$TFDS_DATA_DIR``,
      else ``cache_dir/tfds``; if ``data_dir/NAME`` holds the original files, it prepares them
      from there and downloads nothing.
    split: ``"train"`` or ``"test"``.
    data_dir: where the files are; default ``$SAMX_DATA_DIR``, else ``./data``.
    cache_dir: where decoded image folders are cached as ``.npz``; default ``$SAMX_CACHE_DIR``,
      else the user's cache directory.

  Returns:
    A :class:`samx.data.Dataset`.

  Every load is checked: an archive is read to its real end (its compressed stream's checksum
  included), the known datasets must have their official numbers of examples and classes, IDX
  files the shape their names say, and an image folder's splits the same classes.

  Raises:
    CorruptFileError: (a ``ValueError``) naming the file, for a damaged, truncated or swapped
      file or one of the wrong size, and saying what to do.
    ValueError: for an unknown name or split.
    FileNotFoundError: naming every path that was looked for and what to do.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
  cache = None if cache_dir is None else pathlib.Path(cache_dir)
  if name.startswith("tfds:"):
    from samx.data._tfds import load_tfds  # the optional extra

    tfds_name = name.removeprefix("tfds:")
    originals = resolve_data_dir(data_dir) / tfds_name.split("/")[0].replace("_", "-")
    prepared = os.environ.get("TFDS_DATA_DIR") or (cache or default_cache_dir()) / "tfds"
    return load_tfds(tfds_name, split, prepared_dir=prepared,
                     manual_dir=originals if originals.is_dir() else None)
  if name.startswith("folder:"):
    source = pathlib.Path(name.removeprefix("folder:"))
    if not source.exists():
      raise FileNotFoundError(f"{name}: {source} does not exist.")
    images, labels, class_names = read_image_folder(source, split, cache)
    return Dataset(images, labels, class_names, source.name, split, {"source": str(source)})
  key = ALIASES.get(name, name)
  if key not in LOADERS:
    known = [*sorted(LOADERS), "folder:PATH", "tfds:NAME"]
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known)}.")
  return LOADERS[key](resolve_data_dir(data_dir), split, cache)
