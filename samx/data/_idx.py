"""MNIST-style IDX files (LeCun et al.), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | pathlib.Path) -> np.ndarray:
  """Reads an IDX file (``.gz`` or not, told apart by its first bytes) into a numpy array.

  Raises:
    ValueError: if the file is not a well-formed IDX file (bad magic number, unknown type code,
      or a size that does not match its header).
  """
  path = pathlib.Path(path)
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
      raise ValueError(f"{path}: corrupt gzip stream ({error}); download it again.") from error
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()}); expected the "
                     "MNIST format, e.g. train-images-idx3-ubyte(.gz).")
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: corrupt IDX file (truncated header).")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f"{path}: corrupt IDX file: header says {shape} ({expected} bytes of data) "
                     f"but the file holds {len(raw) - header}; download it again.")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
