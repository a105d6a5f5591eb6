"""The package's modules import one way: no import cycle, counting the imports inside
functions (a lazy import still ties a lower module to a higher one)."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "waveunet_jax"
NAME = PACKAGE.name


def module_name(path: pathlib.Path) -> str:
  """A module's dotted name inside the package: 'train', 'data.records'; a subpackage's
  `__init__.py` is the subpackage ('data'), the package's own is '__init__'."""
  parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
  if parts[-1] == "__init__" and len(parts) > 1:
    parts.pop()
  return ".".join(parts)


def imported_modules(path: pathlib.Path, modules: set[str], package: str = "") -> set[str]:
  """The package's modules that `path` imports anywhere in it (dotted names, as
  `module_name` gives them); `__init__` for the package itself or a name of it that is
  not a module. `package`: the dotted name of the subpackage `path` is in."""
  def resolve(dotted: str) -> str:  # the longest module prefix of a dotted name
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
      if ".".join(parts[:end]) in modules:
        return ".".join(parts[:end])
    return "__init__"

  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == NAME:
          found.add(resolve(".".join(parts[1:])) if len(parts) > 1 else "__init__")
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from the file's own package upwards
        base = package.split(".") if package else []
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        inside = ".".join(base + ([node.module] if node.module else []))
      else:
        parts = (node.module or "").split(".")
        if parts[0] != NAME:
          continue
        inside = ".".join(parts[1:])
      for alias in node.names:  # a name may be a module of the package, or of its module
        candidate = f"{inside}.{alias.name}" if inside else alias.name
        found.add(candidate if candidate in modules else resolve(inside) if inside
                  else "__init__")
  return found


def import_graph() -> dict[str, set[str]]:
  paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  modules = set(paths)
  graph = {}
  for name, path in paths.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    graph[name] = imported_modules(path, modules, package) - {name}
  return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
  """Each module's floor: 0 for one that imports none of the package, else one above the
  highest it imports (the graph has no cycle)."""
  found = {}

  def floor(node):
    if node not in found:
      found[node] = 1 + max((floor(n) for n in graph[node]), default=-1)
    return found[node]

  for node in graph:
    floor(node)
  return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle through each group of modules that import each other (Tarjan's strongly
  connected components), as a path that returns to its start."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph[node]):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      group = set()
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.add(member)
        if member == node:
          break
      if len(group) > 1:
        found.append(path_within(graph, group))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def path_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
  """A cycle inside `group` (a strongly connected component) from its first module."""
  start = min(group)
  parents, frontier = {start: None}, [start]
  while frontier:  # breadth first, so the cycle shown is a shortest one
    node = frontier.pop(0)
    for nxt in sorted(graph[node] & group):
      if nxt == start:
        path = [node]
        while parents[path[-1]] is not None:
          path.append(parents[path[-1]])
        return path[::-1] + [start]
      if nxt not in parents:
        parents[nxt] = node
        frontier.append(nxt)
  raise AssertionError(f"no cycle in {group}")


def test_the_checker_finds_cycles_and_lazy_imports(tmp_path):
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
  assert cycles(graph) == [["a", "b", "c", "a"]]
  assert cycles({**graph, "c": set()}) == []
  (tmp_path / "low.py").write_text(
      "import os\nfrom waveunet_jax import high as h, thing\n"
      "def f():\n  import waveunet_jax.other\n  from waveunet_jax.high import X\n"
      "  from . import low\n")
  assert imported_modules(tmp_path / "low.py", {"low", "high", "other"}) == {
      "high", "__init__", "other", "low"}
  (tmp_path / "wing.py").write_text(
      "from waveunet_jax.data import records, DataThing\nfrom waveunet_jax.data.builder import X\n"
      "import waveunet_jax.separation.separator as s\nfrom . import tfdata\n"
      "from waveunet_jax import data\n")
  modules = {"data", "data.records", "data.builder", "data.tfdata", "separation",
             "separation.separator"}
  assert imported_modules(tmp_path / "wing.py", modules, "data") == {
      "data", "data.records", "data.builder", "separation.separator", "data.tfdata"}
  assert floors({"a": {"b"}, "b": {"c"}, "c": set(), "d": set()}) == {
      "a": 2, "b": 1, "c": 0, "d": 0}


PROGRAMS = {"main", "prepare", "synthetic", "summary", "separate", "evaluate", "export"}


def test_no_import_cycle_in_the_package():
  graph = import_graph()
  assert {"separation.separator", "separation.jax_engine", "prepare", "data.tracks",
          "data.records", "steps"} <= set(graph)
  found = cycles(graph)
  assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_package_stands_on_at_most_eight_floors():
  graph = import_graph()
  found = floors(graph)
  building = {}
  for module, floor in sorted(found.items()):
    building.setdefault(floor, []).append(module)
  drawing = "; ".join(f"{f}: {' '.join(building[f])}" for f in sorted(building))
  assert max(found.values()) <= 7, f"more than 8 floors: {drawing}"


def test_no_library_module_imports_a_program():
  graph = import_graph()
  assert PROGRAMS <= set(graph)
  found = {m: sorted(graph[m] & PROGRAMS) for m in graph if m not in PROGRAMS}
  assert not {m: p for m, p in found.items() if p}, found


BLOCKER = """
import sys

class Blocked:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {blocked!r}:
      raise ImportError(f"{{name}} is blocked")

sys.meta_path.insert(0, Blocked())
import importlib
for module in {modules!r}:
  importlib.import_module(module)
print("ok")
"""


@pytest.mark.parametrize("modules,blocked", [
    # The step math and the record contract: what flops, summary and the benchmarks
    # compile, and what both samplers share, without TensorFlow.
    (["waveunet_jax.steps", "waveunet_jax.data.records", "waveunet_jax.flops",
      "waveunet_jax.summary"], ["tensorflow", "tensorflow_datasets"]),
    # Separation on an exported model: neither JAX nor TensorFlow.
    (["waveunet_jax.separation.separator", "waveunet_jax.separation.model_formats",
      "waveunet_jax.separate", "waveunet_jax.data"],
     ["jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets"]),
])
def test_modules_import_without_what_they_need_not(modules, blocked):
  result = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=blocked, modules=modules)],
                          capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
