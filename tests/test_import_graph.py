"""The package's modules import each other in one direction: no module reaches, through any chain
of imports (those inside functions too), back to itself.

A circle hides which module is the lower one (training should not depend on the planner that
times it) and breaks as soon as one of its imports moves to the top of a file.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

from notebook_cells import ROOT

PACKAGE = ROOT / "lal"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules one import statement loads (``from lal import x`` is module ``lal.x``
    when there is one, else a name of ``lal`` itself)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if node.level:  # a relative import: resolved against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = set()
    for alias in node.names:
        if f"{source}.{alias.name}" in modules:
            found.add(f"{source}.{alias.name}")
        elif source in modules:
            found.add(source)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of ``package`` and the modules of the package each one imports, anywhere in it."""
    paths = {_module_name(path): path for path in sorted(package.rglob("*.py"))}
    modules = set(paths)
    graph = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[module] = {
            imported
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for imported in _imported(node, module, is_package, modules)
            if imported != module
        }
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One circle of imports as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_graph_holds_the_imports_of_every_module() -> None:
    graph = import_graph()
    assert {"lal.train", "lal.bench", "lal.plan", "lal.cli", "lal.viz", "lal.viz.curves", "lal.checks.ch05"} <= set(graph)
    assert {"lal.bench", "lal.train"} <= graph["lal.plan"]  # top-level imports
    assert "lal.train" in graph["lal.bench"]
    assert "lal.plan" in graph["lal.cli"]  # an import inside a function counts too
    assert "lal.viz.theme" in graph["lal.viz.curves"]
    assert "lal._cpu_load" in graph["lal"]  # `from lal import _cpu_load` is the module, not a name


def test_find_cycle_names_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_lal_imports_itself_through_others() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "A circle of imports: " + " → ".join(cycle or []) + ". Move what the lower module needs into it."


def test_training_does_not_depend_on_the_planner_or_the_benchmark() -> None:
    graph = import_graph()
    reachable, frontier = set(), ["lal.train"]
    while frontier:
        for imported in graph[frontier.pop()] - reachable:
            reachable.add(imported)
            frontier.append(imported)
    assert not {"lal.plan", "lal.bench", "lal.cli"} & reachable
