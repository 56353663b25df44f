"""Datasets by name: where each one's files are looked for, and how they are read."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from samx.data._cifar import read_cifar10, read_cifar100
from samx.data._dataset import Dataset
from samx.data._idx import read_idx
from samx.data._image_folder import default_cache_dir, read_image_folder

SPLITS = ("train", "test")
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


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


def _load_idx_dataset(folder_name: str, dataset: str, display: str, class_names, root, split,
                      cache_dir) -> Dataset:
  del cache_dir
  prefix = "train" if split == "train" else "t10k"
  arrays = []
  for kind, rank in (("images", 3), ("labels", 1)):
    stem = f"{prefix}-{kind}-idx{rank}-ubyte"
    candidates = [folder / name for folder in (root / folder_name, root)
                  for name in (stem + ".gz", stem)]
    path = _first_existing(candidates, dataset, f"It needs the IDX files, e.g. {stem}.gz.")
    arrays.append(read_idx(path))
  images, labels = arrays
  if images.ndim != 3 or images.dtype.name != "uint8" or len(images) != len(labels):
    raise ValueError(f"{dataset}: corrupt files: images {images.shape} {images.dtype}, labels "
                     f"{labels.shape}.")
  return Dataset(images[..., None], labels.astype("int32"), class_names, display, split,
                 {"source": str(path.parent)})


def _load_cifar10(root: pathlib.Path, split: str, cache_dir) -> Dataset:
  binary = [root / "cifar-10-batches-bin", root / "cifar-10-binary.tar.gz"]
  jpeg = [root / "cifar10-jpeg.tar.gz", root / "cifar10"]
  source = _first_existing(binary + jpeg, "cifar10", "It needs the official binary version "
                           "(cifar-10-binary.tar.gz) or an image folder train|test/<class>/.")
  if source in binary:
    images, labels, class_names = read_cifar10(source, split)
    name = "CIFAR-10"
  else:
    images, labels, class_names = read_image_folder(source, split, cache_dir)
    name = "CIFAR-10 (JPEG re-encoding)"
  return Dataset(images, labels, class_names, name, split, {"source": str(source)})


def _load_cifar100(root: pathlib.Path, split: str, cache_dir) -> Dataset:
  del cache_dir
  source = _first_existing([root / "cifar-100-binary", root / "cifar-100-binary.tar.gz"],
                           "cifar100", "It needs the official binary version "
                           "(cifar-100-binary.tar.gz).")
  images, fine, fine_names, coarse, coarse_names = read_cifar100(source, split)
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

  Raises:
    ValueError: for an unknown name or split, or a corrupt file.
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
