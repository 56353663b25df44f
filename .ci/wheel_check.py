"""Run by .ci/run with the built wheel installed into a fresh virtual environment, from outside
the checkout: every module of the installed package imports (a file missing from the wheel
fails here), the version is the metadata's, and the type-hint marker is shipped."""

import importlib
import importlib.metadata
import pathlib
import pkgutil
import sys

import samx

checkout = pathlib.Path(sys.argv[1]).resolve()
installed = pathlib.Path(samx.__file__).resolve().parent
assert checkout not in installed.parents, f"samx imported from the checkout: {installed}"
assert samx.__version__ == importlib.metadata.version("samx"), samx.__version__
assert (installed / "py.typed").is_file(), "py.typed is missing from the wheel"
# samx.__main__ is the command itself (run below as `samx`), not a module to import.
modules = [info.name for info in pkgutil.walk_packages([str(installed)], prefix="samx.")
           if info.name != "samx.__main__"]
for name in modules:
  importlib.import_module(name)
print(f"samx {samx.__version__} from {installed}: {len(modules) + 1} modules import")
