"""The project's import graph, read from the source with ``ast``: no cycles, no project imports in functions.

Every ``.py`` file under ``train/`` and ``data_recipes/`` is a node. Every ``import`` / ``from … import``
statement in a file (module level, class body, function body, ``if TYPE_CHECKING:`` alike) is an edge
to the project module it names: ``from pkg import name`` goes to ``pkg.name`` when that is a module,
else to ``pkg``. Importing ``pkg.sub`` also runs ``pkg/__init__.py`` first, but that implicit step is
not an edge: a package ``__init__`` that imports its own submodules would otherwise always "cycle";
what must run one way is what the code names. ``importlib.import_module`` calls (the CLI's lazy
command table) are not import statements and are not read.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("train", "data_recipes")


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module."""
    target: str
    """The imported project module."""
    where: str
    """``path.py:LINE`` of the statement."""
    function: str | None
    """The enclosing function (dotted if nested), or None for an import that runs at import time."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    paths = (p for package in PACKAGES for p in sorted((root / package).rglob("*.py")))
    return {module_name(p, root): p for p in paths if "__pycache__" not in p.parts}


class ImportCollector(ast.NodeVisitor):
    """``(line, dotted name, enclosing function)`` for every name an import statement brings in."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module.split(".") if is_package else module.split(".")[:-1]
        self.functions: list[str] = []
        self.names: list[tuple[int, str, str | None]] = []

    def visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.functions.append(getattr(node, "name", "<lambda>"))
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_function

    def add(self, line: int, name: str) -> None:
        self.names.append((line, name, ".".join(self.functions) or None))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(node.lineno, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative import: resolved against this module's package
            anchor = self.package[: len(self.package) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            self.add(node.lineno, base if alias.name == "*" else f"{base}.{alias.name}")


def project_imports(root: Path = REPO) -> list[Import]:
    """Every import of a project module by a project module, with where it is written."""
    modules = project_modules(root)
    found = []
    for module, path in modules.items():
        collector = ImportCollector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for line, name, function in collector.names:
            parts = name.split(".")
            prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
            target = next((p for p in prefixes if p in modules), None)  # the deepest module the name is in
            if target is not None and target != module:
                found.append(Import(module, target, f"{path.relative_to(root)}:{line}", function))
    return list(dict.fromkeys(found))  # one per statement and target (`from m import a, b` is one)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each one holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One shortest cycle through the component's first module (breadth-first, inside the component)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start} in {component}")


def describe_cycles(found: list[Import]) -> list[str]:
    graph: dict[str, set[str]] = defaultdict(set)
    statements: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in found:
        graph[imp.source].add(imp.target)
        statements[imp.source, imp.target].append(imp)
    report = []
    for component in strongly_connected(graph):
        cycle = cycle_in(component, graph)
        lines = [f"cycle among {len(component)} modules ({', '.join(component)}); one of its loops:"]
        for a, b in pairwise(cycle):
            where = ", ".join(
                f"{imp.where}" + (f" (in {imp.function}())" if imp.function else "")
                for imp in statements[a, b]
            )
            lines.append(f"  {a} -> {b}   at {where}")
        report.append("\n".join(lines))
    return report


def test_no_import_cycles_counting_imports_inside_functions():
    found = project_imports()
    assert len({imp.source for imp in found}) > 10, "the reader found too few imports: is REPO right?"
    cycles = describe_cycles(found)
    assert not cycles, "import cycles among project modules:\n" + "\n".join(cycles)


# The one command boundary that loads project modules late: `hermes-sft train` must answer `--check`, the
# `--nproc-per-node` supervisor and the SLURM dry run without importing torch/DeepSpeed, which the recipe
# and the preflight pull in at their tops (10-30 s). (module, imported module) pairs, nothing else.
COMMAND_BOUNDARY = {("train.cli_train", "train.preflight"), ("train.cli_train", "train.recipe")}


def test_project_modules_are_imported_at_the_top_of_files():
    """Imports inside functions are for heavy third-party libraries at the command boundary only."""
    inside = [
        imp
        for imp in project_imports()
        if imp.function is not None and (imp.source, imp.target) not in COMMAND_BOUNDARY
    ]
    listing = "\n".join(f"  {imp.where}: {imp.target} inside {imp.function}()" for imp in inside)
    assert not inside, f"{len(inside)} project import(s) inside functions; move them to the top:\n{listing}"


def test_the_reader_finds_cycles_and_function_level_imports(tmp_path):
    """The checks above can fail: a two-module cycle held by an import inside a function is reported."""
    package = tmp_path / "train"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from train.b import g\n\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text("def g():\n    from . import a\n\n    return a\n")
    found = project_imports(tmp_path)
    assert sorted((i.source, i.target, i.where, i.function) for i in found) == [
        ("train.a", "train.b", "train/a.py:1", None),
        ("train.b", "train.a", "train/b.py:2", "g"),
    ]
    (cycle,) = describe_cycles(found)
    assert "train.a -> train.b   at train/a.py:1" in cycle
    assert "train.b -> train.a   at train/b.py:2 (in g())" in cycle
