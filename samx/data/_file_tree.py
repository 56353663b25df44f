"""Read files from a folder or from a tar archive (.tar, .tar.gz) through one interface."""

from __future__ import annotations

import pathlib
import tarfile


class FileTree:
  """The regular files below a folder, or in a tar archive, by their relative POSIX path.

  Use as a context manager: ``with FileTree(path) as tree: data = tree.read(tree.find(name))``.
  """

  def __init__(self, source: str | pathlib.Path):
    self.source = pathlib.Path(source)
    self._archive: tarfile.TarFile | None = None
    self._members: dict[str, object] = {}

  def __enter__(self) -> FileTree:
    if self.source.is_dir():
      self._members = {path.relative_to(self.source).as_posix(): path
                       for path in self.source.rglob("*") if path.is_file()}
      return self
    try:
      self._archive = tarfile.open(self.source)  # closed in __exit__
      self._members = {member.name.removeprefix("./"): member
                       for member in self._archive.getmembers() if member.isfile()}
    except (tarfile.TarError, EOFError, OSError) as error:
      self.__exit__()
      raise ValueError(f"{self.source}: corrupt or unreadable archive ({error}).") from error
    return self

  def __exit__(self, *exc_info) -> None:
    if self._archive is not None:
      self._archive.close()
      self._archive = None

  @property
  def paths(self) -> list[str]:
    """Relative paths of all files, sorted."""
    return sorted(self._members)

  def find(self, base_name: str) -> str:
    """The path of the one file called ``base_name``, at any depth."""
    matches = [path for path in self._members if pathlib.PurePosixPath(path).name == base_name]
    if not matches:
      raise FileNotFoundError(f"{self.source}: no file {base_name!r} in it.")
    return min(matches, key=len)

  def read(self, path: str) -> bytes:
    member = self._members[path]
    if self._archive is None:
      return member.read_bytes()
    try:
      return self._archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
      raise ValueError(f"{self.source}:{path}: corrupt archive member ({error}).") from error
