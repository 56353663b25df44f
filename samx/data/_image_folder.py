"""Images in ``split/<class>/*.{png,jpg}``, from a folder or a .tar(.gz), cached as .npz."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
import tempfile
import warnings
import zipfile
from collections.abc import Callable

import numpy as np

from samx.data._checks import corrupt, describe
from samx.data._file_tree import read_tree, walk_files
from samx.data._progress import Progress

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Part of every cache key: bump it when what is cached, or how it is read, changes.
_CACHE_VERSION = 2
# A load that runs longer than this shows its progress on stderr.
PROGRESS_DELAY_S = 3.0

# Called with (images, labels, class_names) before they are cached or returned; raises to refuse.
Check = Callable[[np.ndarray, np.ndarray, tuple[str, ...]], None]
# What a split is read as: uint8 NHWC images, int32 labels and the class names.
Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


def default_cache_dir() -> pathlib.Path:
  """``$SAMX_CACHE_DIR``, else ``$XDG_CACHE_HOME/samx``, else ``~/.cache/samx``."""
  if os.environ.get("SAMX_CACHE_DIR"):
    return pathlib.Path(os.environ["SAMX_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "samx"


def _decode(data: bytes, where: str) -> np.ndarray:
  from PIL import Image

  try:
    with Image.open(io.BytesIO(data)) as image:
      array = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB"))
  except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as error:
    raise corrupt(where, f"corrupt image ({describe(error)})") from error
  return array[..., None] if array.ndim == 2 else array


def _source_key(source: pathlib.Path) -> str:
  """What a cache entry is tied to: the source's path, and size, modification time and inode of
  the archive or of every file in the folder (a changed or replaced source changes the key)."""
  files = walk_files(source) if source.is_dir() else [source]
  lines = [str(source.resolve())]
  for path in files:
    if path.is_file():
      info = path.stat()
      lines.append(f"{path.relative_to(source).as_posix()}|{info.st_size}|{info.st_mtime_ns}|"
                   f"{info.st_ino}")
  return "\n".join(lines)


def _cache_file(source: pathlib.Path, key: str, split: str, cache_dir: pathlib.Path):
  digest = hashlib.sha256(f"{_CACHE_VERSION}\n{split}\n{key}".encode()).hexdigest()[:16]
  return cache_dir / f"{source.name}-{split}-{digest}.npz"


def _read_cache(cache_file: pathlib.Path) -> Arrays | None:
  """The cached ``(images, labels, class_names)``, or None if absent or damaged (then warns)."""
  if not cache_file.exists():
    return None
  try:
    with np.load(cache_file, allow_pickle=False) as cached:  # zip CRCs catch damaged bytes
      images, labels = cached["images"], cached["labels"]
      class_names = tuple(str(name) for name in cached["class_names"])
    consistent = (images.dtype == np.uint8 and images.ndim == 4 and labels.dtype == np.int32
                  and labels.shape == (len(images),) and len(class_names) > 0
                  and (not len(labels) or 0 <= labels.min() <= labels.max() < len(class_names)))
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
    problem = describe(error)
  else:
    if consistent:
      return images, labels, class_names
    problem = "arrays of the wrong type or shape"
  warnings.warn(f"{cache_file}: damaged cache entry ({problem}); decoding its source again.",
                stacklevel=3)
  return None


def _write_cache(cache_file: pathlib.Path, images, labels, class_names) -> None:
  """Writes to a temporary file in the same folder and renames it: never a partial entry."""
  partial = None
  try:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_file.parent, prefix=cache_file.name,
                                     suffix=".partial", delete=False) as handle:
      partial = handle.name
      np.savez(handle, images=images, labels=labels, class_names=np.array(class_names))
      handle.flush()
      os.fsync(handle.fileno())
    os.replace(partial, cache_file)
    partial = None
  except OSError as error:
    warnings.warn(f"{cache_file}: cannot write the cache ({error}); the images will be decoded "
                  "again next time.", stacklevel=3)
  finally:
    if partial is not None:
      with contextlib.suppress(OSError):
        os.unlink(partial)


def _split_and_class(path: str) -> tuple[str, str] | None:
  """``(split, class)`` of an image at ``.../<split>/<class>/<name>.<png|jpg|jpeg>``."""
  parts = pathlib.PurePosixPath(path).parts
  if len(parts) >= 3 and path.lower().endswith(_IMAGE_SUFFIXES):
    return parts[-3], parts[-2]
  return None


def _class_of(path: str) -> str:
  """The class folder of an image that ``_split_and_class`` recognises."""
  found = _split_and_class(path)
  if found is None:
    raise ValueError(f"{path}: not an image at .../<split>/<class>/<name>.")
  return found[1]


def _check_same_classes(source: pathlib.Path, paths) -> None:
  """Raises if the source has both splits and their class folders differ."""
  classes = {"train": set(), "test": set()}
  for path in paths:
    found = _split_and_class(path)
    if found is not None and found[0] in classes:
      classes[found[0]].add(found[1])
  train, test = classes["train"], classes["test"]
  if train and test and train != test:
    raise ValueError(
        f"{source}: the train and test splits have different classes: train has {len(train)}, "
        f"test {len(test)}; only in train: {sorted(train - test) or 'none'}; only in test: "
        f"{sorted(test - train) or 'none'}. An incomplete or damaged copy? Delete it and "
        "download it again.")


def read_image_folder(source: pathlib.Path, split: str, cache_dir: pathlib.Path | None = None,
                      check: Check | None = None) -> Arrays:
  """``(images, labels, class_names)`` of ``split`` from a folder tree or a tar archive of one.

  Images are the files ``.../<split>/<class>/<name>.{png,jpg,jpeg}``; classes are the folder
  names in alphabetical order and examples are sorted by class, then file name, whatever the
  order of the archive's members (it is read in one pass). The train and test splits must have
  the same classes, and all images of a split one shape. The decoded arrays are cached as
  ``.npz`` in ``cache_dir`` (default :func:`default_cache_dir`), written atomically under a key
  of the source's path and of the size, modification time and inode of the archive or of each
  file in the folder, so the images are decoded once and a changed source is decoded again; a
  damaged cache entry is decoded again too. ``check``, if given, is called with the arrays
  before they are cached or returned, and raises to refuse them.
  """
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  key = _source_key(source)
  cache_file = _cache_file(source, key, split, cache_dir)
  cached = _read_cache(cache_file)
  if cached is not None:
    if check is not None:
      check(*cached)
    return cached

  progress = Progress(f"decoding the {split} split of {source} once, into the cache in "
                      f"{cache_dir}", delay=PROGRESS_DELAY_S)

  def in_split(path: str) -> bool:
    found = _split_and_class(path)
    return found is not None and found[0] == split

  tree = read_tree(source, in_split, progress=progress)
  _check_same_classes(source, tree.paths)
  paths = sorted(tree.contents)
  if not paths:
    raise FileNotFoundError(f"{source}: no images under '{split}/<class>/' (looked for "
                            f"{', '.join(_IMAGE_SUFFIXES)}).")
  progress.stage(f"decoding {split}", len(paths), "image")
  images = []
  for done, path in enumerate(paths, 1):
    images.append(_decode(tree.contents[path], tree.where(path)))
    progress.update(done)
  progress.close()
  shapes = {image.shape for image in images}
  if len(shapes) != 1:
    raise ValueError(f"{source}: images of split {split!r} differ in shape: {sorted(shapes)}.")
  class_of = [_class_of(path) for path in paths]
  class_names = tuple(sorted(set(class_of)))
  if len(class_names) < 2:
    raise ValueError(f"{source}: the {split!r} split has images of one class only "
                     f"({class_of[0]!r}); a classification dataset needs at least two class "
                     f"folders under '{split}/' (a class folder may be a symbolic link).")
  index = {name: i for i, name in enumerate(class_names)}
  stacked = np.stack(images).astype(np.uint8)
  labels = np.array([index[name] for name in class_of], np.int32)
  if check is not None:
    check(stacked, labels, class_names)
  if _source_key(source) != key:
    raise ValueError(f"{source} changed while it was being read; load it again.")
  _write_cache(cache_file, stacked, labels, class_names)
  return stacked, labels, class_names
