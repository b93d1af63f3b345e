"""The import graph of agoramesh, read from its source: for tests/test_architecture.py
and for the picture in docs/import-graph.md (``make graph``).

Every ``import`` of an agoramesh module counts, at module level or inside a
function (an import inside a function still ties the two modules together),
except those under ``if TYPE_CHECKING:``, which exist for the type checker only.

    python -m agoramesh.testing.architecture > docs/import-graph.md
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import agoramesh

__all__ = ("import_graph", "imports_of", "main", "markdown", "modules", "package_cycles",
           "package_graph", "package_of")

#: The base every package may use, left out of the picture.
_CORE = ("errors", "config", "_version")
#: The directory that holds the ``agoramesh`` package.
SRC = Path(agoramesh.__file__).resolve().parents[1]
PACKAGE = "agoramesh"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in (src / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The agoramesh modules ``name`` imports at run time (TYPE_CHECKING blocks excluded)."""
    known = set(known)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package[:len(package) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in known else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in known and module != name}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules it imports at run time."""
    found = modules(src)
    return {name: imports_of(name, path, found) for name, path in found.items()}


def package_of(module: str) -> str:
    """The top-level package a module belongs to (``agoramesh.nodes`` for
    ``agoramesh.nodes.backends.openai``); the root package for itself."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Top-level package -> the packages it imports (the root package left out: it
    re-exports what users build with, by design)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        packages.setdefault(source, set())
        for target in targets:
            destination = package_of(target)
            if PACKAGE not in (source, destination) and source != destination:
                packages[source].add(destination)
    packages.pop(PACKAGE, None)
    return packages


def package_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Groups of top-level packages that import each other (strongly connected, more
    than one)."""
    packages = package_graph(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = itertools.count()
    groups: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(packages.get(node, ())):
            if target not in index:
                strong(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(packages):
        if node not in index:
            strong(node)
    return groups


def markdown(graph: Mapping[str, Iterable[str]]) -> str:
    """docs/import-graph.md: the package graph as a Mermaid flowchart, with each edge's
    reason (the module imports behind it) in a table below."""
    core = {f"{PACKAGE}.{name}" for name in _CORE}
    packages = {source: targets - core for source, targets in package_graph(graph).items()
                if source not in core}
    short = {name: name.removeprefix(f"{PACKAGE}.") for name in packages}
    lines = ["# Import graph", "",
             "Generated by `make graph` (`python -m agoramesh.testing.architecture`) from the",
             "source; `tests/test_architecture.py` fails when it is out of date. An arrow",
             "is a run-time import between top-level packages (docs/ARCHITECTURE.md, \"Layers\");",
             f"imports of the base every package uses ({', '.join(_CORE)}) are left out.",
             "", "```mermaid", "flowchart BT"]
    for source in sorted(packages):
        for target in sorted(packages[source]):
            lines.append(f"  {short[source]} --> {short.get(target, target)}")
    lines += ["```", "", "| from | to | modules importing |", "|---|---|---|"]
    for source in sorted(packages):
        for target in sorted(packages[source]):
            importers = sorted({module.removeprefix(f"{PACKAGE}.")
                                for module, targets in graph.items()
                                if package_of(module) == source
                                and any(package_of(t) == target for t in targets)})
            lines.append(f"| {short[source]} | {short.get(target, target)} | "
                         f"{', '.join(importers)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(markdown(import_graph()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
