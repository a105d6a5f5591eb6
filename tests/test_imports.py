"""The package's modules import one way: no import cycle, counting the imports inside
functions (a lazy import still ties a lower module to a higher one)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "waveunet_jax"
NAME = PACKAGE.name


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The package's modules that `path` imports anywhere in it; `__init__` for the
  package itself or a name of it that is not a module."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == NAME:
          found.add(parts[1] if len(parts) > 1 and parts[1] in modules else "__init__")
    elif isinstance(node, ast.ImportFrom):
      parts = (node.module or "").split(".")
      if node.level == 0 and parts[0] != NAME:
        continue
      if len(parts) > 1 or node.level and node.module:  # from waveunet_jax.x import y
        module = parts[-1] if node.level else parts[1]
        found.add(module if module in modules else "__init__")
      else:  # from waveunet_jax import x, y
        found.update(a.name if a.name in modules else "__init__" for a in node.names)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = {p.stem for p in PACKAGE.glob("*.py")}
  # A module's import of itself (prepare's `__main__` block, for TFDS) is no cycle.
  return {m: imported_modules(PACKAGE / f"{m}.py", modules) - {m} for m in modules}


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


def test_no_import_cycle_in_the_package():
  graph = import_graph()
  assert {"separator", "jax_engine", "prepare", "tracks"} <= set(graph)
  found = cycles(graph)
  assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
