"""Every public function of samx, samx.analysis and samx.penalties documents every argument."""

import inspect

import pytest

import samx
from samx import analysis, penalties


def public_functions():
  for module in (samx, analysis, penalties):
    names = getattr(module, "__all__", None) or [
        n for n, v in vars(module).items() if not n.startswith("_")
        and inspect.isfunction(v) and v.__module__ == module.__name__]
    for name in names:
      value = getattr(module, name)
      if inspect.isfunction(value):
        yield f"{module.__name__}.{name}", value


@pytest.mark.parametrize(("name", "function"), list(public_functions()))
def test_every_argument_is_documented(name, function):
  doc = inspect.getdoc(function) or ""
  arguments = list(inspect.signature(function).parameters)
  if arguments:
    assert "Args:" in doc, f"{name} has no Args section"
  missing = [a for a in arguments if f"{a}:" not in doc and f"{a}," not in doc]
  assert not missing, f"{name} does not document {missing}"
  assert "Returns:" in doc or "Yields:" in doc, f"{name} has no Returns section"
