"""The documentation site covers what samx exports: every public name has an entry in the API
reference (docs/api/), and every guide is in the site's table of contents. (The site itself is
built with warnings as errors in CI: ``sphinx-build -W -b html docs docs/_build/html``.)"""

import importlib
import inspect
import pathlib
import re
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
MODULES = ["samx", "samx.models", "samx.data", "samx.data.noise", "samx.data.synthetic",
           "samx.data.pipeline", "samx.analysis", "samx.penalties", "samx.train"]


def public_names(module: types.ModuleType) -> set[str]:
  """``__all__``, or the functions and classes a module without one defines; submodules are
  pages of their own."""
  names = getattr(module, "__all__", None)
  if names is None:
    names = [name for name, value in vars(module).items() if not name.startswith("_")
             and (inspect.isfunction(value) or inspect.isclass(value))
             and value.__module__ == module.__name__]
  return {name for name in names if not inspect.ismodule(getattr(module, name))}


def documented() -> dict[str, set[str]]:
  """module -> the names its autosummary entries list, read from docs/api/*.rst."""
  entries: dict[str, set[str]] = {}
  for page in API.glob("*.rst"):
    module = None
    for line in page.read_text().splitlines():
      current = re.match(r"\.\. currentmodule:: (\S+)", line)
      if current:
        module = current.group(1)
      entry = re.match(r"   ([~\w.]+)$", line)
      if entry and module:
        name = entry.group(1).lstrip("~")
        owner, _, short = f"{module}.{name}".rpartition(".")
        entries.setdefault(module, set()).add(short)
        entries.setdefault(owner, set()).add(short)
  return entries


def documented_objects() -> list[object]:
  """The objects the API reference documents (a name exported twice is documented once)."""
  return [getattr(importlib.import_module(module), name)
          for module, names in documented().items() for name in names
          if hasattr(importlib.import_module(module), name)]


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_is_in_the_api_reference(name):
  module = importlib.import_module(name)
  objects = documented_objects()
  missing = {public for public in public_names(module)
             if not any(getattr(module, public) is known for known in objects)}
  assert not missing, f"add to docs/api/: {name}.{sorted(missing)}"


def test_every_guide_is_in_the_table_of_contents():
  index = (ROOT / "docs" / "index.md").read_text()
  listed = set(re.findall(r"^([\w/-]+)$", index, re.M))
  guides = {page.stem for page in (ROOT / "docs").glob("*.md")} - {"index"}
  assert guides <= listed, sorted(guides - listed)
