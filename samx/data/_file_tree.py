"""Read the files of a folder or a tar archive (plain, .gz, .bz2, .xz) in one sequential pass.

An archive is read once from its first byte to its last, in the order its members are stored
(never seeking back, which in a compressed stream means decompressing again from the start), and
must end properly: tarfile takes a damaged header for the end of the archive and stops there
without a word, so after the last member the rest of the stream must be the zero blocks of the
end-of-archive marker, and the compressed stream must end there with a valid checksum.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import lzma
import pathlib
import tarfile
import zlib
from collections.abc import Callable

from samx.data._checks import corrupt, describe
from samx.data._progress import Progress

# Magic bytes of the compressed formats and how to decompress them as a stream.
_DECOMPRESSORS = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw)),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)
# What a damaged tar stream or compressed stream raises (gzip.BadGzipFile is an OSError).
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Tree:
  """The files of a folder or archive: all their paths, and the contents of the wanted ones.

  Attributes:
    source: the folder or archive.
    paths: the relative POSIX path of every regular file, sorted.
    contents: the bytes of each file that was asked for, by path.
  """

  source: pathlib.Path
  paths: tuple[str, ...]
  contents: dict[str, bytes]

  def find(self, base_name: str) -> str:
    """The path of the one wanted file called ``base_name`` (the shallowest), at any depth."""
    matches = [path for path in self.contents if pathlib.PurePosixPath(path).name == base_name]
    if not matches:
      raise FileNotFoundError(f"{self.source}: no file {base_name!r} in it.")
    return min(matches, key=lambda path: (len(path), path))

  def where(self, path: str) -> str:
    """How an error names the file ``path``: ``folder/path``, or ``archive:path``."""
    return str(self.source / path) if self.source.is_dir() else f"{self.source}:{path}"


class _ForwardReader(io.RawIOBase):
  """A stream for tarfile that only reads ahead, and remembers where its last read started.

  Seeking ahead reads and drops the bytes between; seeking back raises, so no member order
  can make a compressed archive be decompressed twice.
  """

  def __init__(self, stream):
    super().__init__()
    self._stream = stream
    self._position = 0
    self.last_read = (-1, b"")  # where the last read started, and what it gave

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._position

  def read(self, size: int = -1) -> bytes:
    data = self._stream.read(size)
    self.last_read = (self._position, data)
    self._position += len(data)
    return data

  def readinto(self, buffer) -> int:
    data = self.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    target = offset if whence == io.SEEK_SET else self._position + offset
    if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._position:
      raise io.UnsupportedOperation(f"cannot seek back from {self._position} to {target}")
    while self._position < target:
      if not self.read(min(_CHUNK, target - self._position)):
        break  # past the end: tarfile's next read comes back short and it reports that
    return self._position


def _check_end(source: pathlib.Path, archive: tarfile.TarFile, reader: _ForwardReader) -> None:
  """Raises unless the stream after the last member is all zeros, to its (checked) end.

  When tarfile reports the end, its last read was the header block at ``archive.offset``: the
  first zero block of the end-of-archive marker, or a damaged header it took for one.
  """
  at = archive.offset
  read_at, end_block = reader.last_read
  if read_at != at or len(end_block) != tarfile.BLOCKSIZE:
    raise corrupt(source, f"corrupt or unreadable archive: it ends at byte {at} of the tar "
                  "stream without the end-of-archive marker (truncated)")
  if end_block.count(0) != len(end_block):
    raise corrupt(source, f"corrupt or unreadable archive: damaged tar header at byte {at} of "
                  "the tar stream (tarfile stops there as if the archive ended)")
  position = at + len(end_block)
  while chunk := reader.read(_CHUNK):
    if chunk.count(0) != len(chunk):
      at = position + len(chunk) - len(chunk.lstrip(bytes(1)))
      raise corrupt(source, "corrupt or unreadable archive: data after the end-of-archive "
                    f"marker, at byte {at} of the tar stream")
    position += len(chunk)


def _member_bytes(source: pathlib.Path, archive: tarfile.TarFile,
                  member: tarfile.TarInfo) -> bytes:
  """The contents of the regular file ``member`` of ``archive``."""
  file = archive.extractfile(member)
  if file is None:  # tarfile gives None only for members that are not regular files
    raise corrupt(source, f"corrupt or unreadable archive: no contents for {member.name}")
  return file.read()


def _read_archive(source: pathlib.Path, wanted: Callable[[str], bool],
                  progress: Progress | None) -> Tree:
  paths, contents = [], {}
  with open(source, "rb") as raw:
    size = source.stat().st_size
    magic = raw.read(6)
    raw.seek(0)
    decompress = next((open_ for prefix, open_ in _DECOMPRESSORS if magic.startswith(prefix)),
                      None)
    if progress is not None:
      progress.stage(f"reading {source.name}", size, "B")
    stream = raw if decompress is None else decompress(raw)
    reader = _ForwardReader(stream)
    try:
      with stream, tarfile.open(fileobj=reader, mode="r:") as archive:
        for member in archive:
          if progress is not None:
            progress.update(raw.tell())
          if member.isfile():
            path = member.name.removeprefix("./")
            paths.append(path)
            if wanted(path):
              contents[path] = _member_bytes(source, archive, member)
        _check_end(source, archive, reader)
    except io.UnsupportedOperation:  # a backward seek: a bug here, not a damaged archive
      raise
    except _STREAM_ERRORS as error:
      raise corrupt(source, f"corrupt or unreadable archive ({describe(error)})") from error
  return Tree(source, tuple(sorted(set(paths))), contents)


def walk_files(source: pathlib.Path) -> list[pathlib.Path]:
  """Every regular file below the folder ``source``, following symbolic links to folders and
  files (a class folder may be a link), sorted.

  Raises:
    ValueError: naming the link, if a link leads back to a folder that contains it (a loop).
  """
  found = []

  def visit(folder: pathlib.Path, ancestors: frozenset) -> None:
    try:
      entries = sorted(folder.iterdir())
    except OSError as error:
      raise corrupt(folder, f"unreadable folder ({error})") from error
    for path in entries:
      if path.is_dir():  # follows a link
        identity = (path.stat().st_dev, path.stat().st_ino)
        if identity in ancestors:
          raise ValueError(f"{path} is a symbolic link to a folder that contains it (a loop); "
                           f"remove it or point it elsewhere.")
        visit(path, ancestors | {identity})
      elif path.is_file():
        found.append(path)

  root = source.stat()
  visit(source, frozenset({(root.st_dev, root.st_ino)}))
  return found


def _read_folder(source: pathlib.Path, wanted: Callable[[str], bool]) -> Tree:
  files = {path.relative_to(source).as_posix(): path for path in walk_files(source)}
  contents = {}
  for relative, path in files.items():
    if wanted(relative):
      try:
        contents[relative] = path.read_bytes()
      except OSError as error:
        raise corrupt(path, f"unreadable file ({error})") from error
  return Tree(source, tuple(sorted(files)), contents)


def read_tree(source: str | pathlib.Path, wanted: Callable[[str], bool], *,
              progress: Progress | None = None) -> Tree:
  """Lists every regular file below a folder, or in a tar archive, and reads the wanted ones.

  Args:
    source: a folder, or a tar archive (uncompressed or gzip, bzip2 or xz compressed).
    wanted: called with each file's relative POSIX path (an archive's ``./`` prefix dropped);
      the files for which it returns true are read.
    progress: reports the pass over an archive.

  Returns:
    A :class:`Tree`.

  Raises:
    CorruptFileError: (a ``ValueError``) naming the archive or file, if an archive's tar or
      compressed stream is damaged, truncated, or followed by anything but zeros.
  """
  source = pathlib.Path(source)
  if source.is_dir():
    return _read_folder(source, wanted)
  return _read_archive(source, wanted, progress)
