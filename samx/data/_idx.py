"""MNIST-style IDX files (LeCun et al.), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import math
import pathlib
import zlib
from collections.abc import Sequence

import numpy as np

from samx.data._checks import corrupt, describe

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TYPE_CODES = {np.dtype(dtype).newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}


def _layout(dtype: np.dtype, shape: Sequence[int | None]) -> str:
  """E.g. ``"uint8 of shape (60000, 28, 28) (magic number 00000803)"``."""
  code = _TYPE_CODES.get(np.dtype(dtype).newbyteorder("="))
  magic = "unknown" if code is None else bytes([0, 0, code, len(shape)]).hex()
  dims = ", ".join("any" if d is None else str(d) for d in shape)
  dims += "," if len(shape) == 1 else ""
  return f"{np.dtype(dtype).name} of shape ({dims}) (magic number {magic})"


def read_idx(path: str | pathlib.Path, *, expected_dtype=None,
             expected_shape: Sequence[int | None] | None = None) -> np.ndarray:
  """Reads an IDX file (``.gz`` or not, told apart by its first bytes) into a numpy array.

  Args:
    path: the file.
    expected_dtype: if given, the element type the file must hold (e.g. ``np.uint8``).
    expected_shape: if given, the shape it must hold; ``None`` entries match any size. Either
      expectation tells a file swapped for another (the labels for the images, the test split
      for the training split) from the right one.

  Raises:
    CorruptFileError: (a ``ValueError``) naming the file, if it is not a well-formed IDX file
      (a damaged or truncated gzip stream, a bad magic number, an unknown type code, or a size
      that does not match its header), or not the one expected, saying what was expected and
      what was found.
  """
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as error:
    raise corrupt(path, f"unreadable file ({error})") from error
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile (CRC, header) is an OSError
      raise corrupt(path, f"corrupt gzip stream ({describe(error)})") from error
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise corrupt(path, f"not an IDX file (bad magic number {raw[:4].hex()}); expected the MNIST "
                  "format, e.g. train-images-idx3-ubyte(.gz)")
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise corrupt(path, f"corrupt IDX file: truncated header ({len(raw)} bytes, {ndim} dims)")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
  expected = math.prod(shape) * dtype.itemsize
  if len(raw) - header != expected:
    raise corrupt(path, f"corrupt IDX file: the header says {shape} ({expected} bytes of data) "
                  f"but the file holds {len(raw) - header}")
  dtype_ok = expected_dtype is None or dtype == np.dtype(expected_dtype)
  shape_ok = expected_shape is None or (len(shape) == len(expected_shape) and all(
      want is None or want == got for want, got in zip(expected_shape, shape, strict=True)))
  if not (dtype_ok and shape_ok):
    want_dtype = dtype if expected_dtype is None else expected_dtype
    want_shape = [None] * ndim if expected_shape is None else expected_shape
    raise corrupt(path, f"not the IDX file expected: expected {_layout(want_dtype, want_shape)}"
                  f", found {_layout(dtype, shape)}: it may be another file, e.g. the labels in "
                  "place of the images, or the other split",
                  "Put the right file there, or delete it and download it again.")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
