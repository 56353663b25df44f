"""CIFAR-10 and CIFAR-100 from the official *binary* versions (never the pickled ones).

CIFAR-10: ``cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin``, records of 1 label byte
and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, rows of 32), and ``batches.meta.txt``
with the class names. CIFAR-100: ``cifar-100-binary/{train,test}.bin``, records of a coarse and a
fine label byte and 3072 pixel bytes, with ``{coarse,fine}_label_names.txt``. Either is read
from its folder or straight from the official ``.tar.gz``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from samx.data._checks import corrupt
from samx.data._file_tree import Tree, read_tree

_PIXELS = 32 * 32 * 3
CIFAR10_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR100_FILES = {"train": ["train.bin"], "test": ["test.bin"]}


def _read(source: pathlib.Path, names: list[str]) -> Tree:
  """The files ``names`` (base names, at any depth) of the folder or archive, in one pass."""
  return read_tree(source, lambda path: pathlib.PurePosixPath(path).name in names)


def _records(tree: Tree, name: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  path, record = tree.find(name), label_bytes + _PIXELS
  raw = tree.contents[path]
  if len(raw) % record:
    raise corrupt(tree.where(path), f"corrupt CIFAR binary file: {len(raw)} bytes is not "
                  f"a whole number of {record}-byte records")
  table = np.frombuffer(raw, np.uint8).reshape(-1, record)
  images = table[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return table[:, :label_bytes].astype(np.int32), np.ascontiguousarray(images)


def _names(tree: Tree, name: str) -> tuple[str, ...]:
  path = tree.find(name)
  try:
    text = tree.contents[path].decode("ascii")
  except UnicodeDecodeError as error:
    raise corrupt(tree.where(path), f"corrupt class names file ({error})") from error
  return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_cifar10(source: pathlib.Path, split: str):
  """``(images, labels, class_names)`` of one CIFAR-10 split from its binary folder or archive."""
  tree = _read(source, [*CIFAR10_FILES[split], "batches.meta.txt"])
  parts = [_records(tree, name, 1) for name in CIFAR10_FILES[split]]
  class_names = _names(tree, "batches.meta.txt")
  labels = np.concatenate([p[0][:, 0] for p in parts])
  images = np.concatenate([p[1] for p in parts])
  if len(class_names) != 10 or labels.max(initial=0) >= 10:
    raise corrupt(source, f"corrupt CIFAR-10 data: {len(class_names)} class names, labels up to "
                  f"{labels.max(initial=0)}")
  return images, labels, class_names


def read_cifar100(source: pathlib.Path, split: str):
  """``(images, fine_labels, fine_names, coarse_labels, coarse_names)`` of one CIFAR-100 split."""
  tree = _read(source, [*CIFAR100_FILES[split], "fine_label_names.txt", "coarse_label_names.txt"])
  labels, images = _records(tree, CIFAR100_FILES[split][0], 2)
  fine_names = _names(tree, "fine_label_names.txt")
  coarse_names = _names(tree, "coarse_label_names.txt")
  coarse, fine = labels[:, 0], labels[:, 1]
  if (len(fine_names), len(coarse_names)) != (100, 20) or fine.max(initial=0) >= 100 or (
      coarse.max(initial=0) >= 20):
    raise corrupt(source, f"corrupt CIFAR-100 data: {len(fine_names)} fine and "
                  f"{len(coarse_names)} coarse class names, fine labels up to "
                  f"{fine.max(initial=0)}, coarse labels up to {coarse.max(initial=0)}")
  return images, fine, fine_names, coarse, coarse_names
