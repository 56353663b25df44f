"""Images in ``split/<class>/*.{png,jpg}``, from a folder or a .tar(.gz), cached as .npz."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib

import numpy as np

from samx.data._file_tree import FileTree

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def default_cache_dir() -> pathlib.Path:
  """``$SAMX_CACHE_DIR``, else ``$XDG_CACHE_HOME/samx``, else ``~/.cache/samx``."""
  if os.environ.get("SAMX_CACHE_DIR"):
    return pathlib.Path(os.environ["SAMX_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "samx"


def _decode(data: bytes, where: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(io.BytesIO(data)) as image:
      array = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB"))
  except (UnidentifiedImageError, OSError) as error:
    raise ValueError(f"{where}: corrupt image ({error}).") from error
  return array[..., None] if array.ndim == 2 else array


def _cache_file(source: pathlib.Path, split: str, cache_dir: pathlib.Path) -> pathlib.Path:
  stat = source.stat()
  key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{split}"
  return cache_dir / f"{source.name}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def read_image_folder(source: pathlib.Path, split: str, cache_dir: pathlib.Path | None = None):
  """``(images, labels, class_names)`` of ``split`` from a folder tree or a tar archive of one.

  Images are the files ``.../<split>/<class>/<name>.{png,jpg,jpeg}``; classes are the folder
  names in alphabetical order and examples are sorted by class, then file name. All images of
  a split must share one shape. The decoded arrays are cached as ``.npz`` in ``cache_dir``
  (default :func:`default_cache_dir`) under a key of the source's path, size and modification
  time, so the images are decoded once.
  """
  cache_file = _cache_file(source, split, default_cache_dir() if cache_dir is None else cache_dir)
  if cache_file.exists():
    with np.load(cache_file, allow_pickle=False) as cached:
      return cached["images"], cached["labels"], tuple(str(n) for n in cached["class_names"])

  images, class_of = [], []
  with FileTree(source) as tree:
    for path in tree.paths:
      parts = pathlib.PurePosixPath(path).parts
      if path.lower().endswith(_IMAGE_SUFFIXES) and len(parts) >= 3 and parts[-3] == split:
        images.append(_decode(tree.read(path), f"{source}:{path}"))
        class_of.append(parts[-2])
  if not images:
    raise FileNotFoundError(f"{source}: no images under '{split}/<class>/' (looked for "
                            f"{', '.join(_IMAGE_SUFFIXES)}).")
  shapes = {image.shape for image in images}
  if len(shapes) != 1:
    raise ValueError(f"{source}: images of split {split!r} differ in shape: {sorted(shapes)}.")
  class_names = tuple(sorted(set(class_of)))
  index = {name: i for i, name in enumerate(class_names)}
  stacked = np.stack(images).astype(np.uint8)
  labels = np.array([index[name] for name in class_of], np.int32)
  cache_file.parent.mkdir(parents=True, exist_ok=True)
  partial = cache_file.with_name(cache_file.name + ".partial.npz")
  np.savez(partial, images=stacked, labels=labels, class_names=np.array(class_names))
  partial.replace(cache_file)
  return stacked, labels, class_names
