"""samx's modules import each other without a cycle (imports only go downward)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """Each samx module and the samx modules it imports (anywhere in it, functions included)."""
  modules = {module_name(p): p for p in (ROOT / "samx").rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                   for alias in node.names]
      else:
        continue
      edges |= {t for t in targets if t in modules and t != name}
    graph[name] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return [*stack[stack.index(nxt):], nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_import_graph_has_no_cycle():
  graph = import_graph()
  assert "samx.train.loop" in graph and "samx.train.step" in graph["samx.train.loop"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_transforms_import_nothing_else_of_samx():
  graph = import_graph()
  for name, edges in graph.items():
    if name.startswith("samx.transforms"):
      assert all(edge.startswith("samx.transforms") for edge in edges), (name, edges)


def test_subpackages_are_reachable_after_import_samx_alone():
  import subprocess
  import sys

  code = ("import sys, samx\n"
          "assert 'samx.train' not in sys.modules and 'samx.models' not in sys.modules\n"
          "assert callable(samx.models.normalization_mask) and callable(samx.models.weight_mask)\n"
          "assert samx.train.InFlight and samx.train.virtual_cpu_devices_flags(8)\n"
          "assert samx.data.pipeline and {'models', 'train', 'data'} <= set(dir(samx))\n"
          "try:\n  samx.nothing\nexcept AttributeError as e:\n  print(e)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "module 'samx' has no attribute 'nothing'" in result.stdout
