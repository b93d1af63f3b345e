"""The shape of the house: layers import one way, no package cycle, rooms stay small,
and nats-py is used only by the bus (the import graph: agoramesh.testing.architecture).

What the code does not meet yet is listed below as debt, each item with the
change that removes it (docs/ARCHITECTURE.md, "Layers"). The lists must
shrink: a new violation fails, and so does a listed one that is gone (delete
it from the list in the change that fixes it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from agoramesh.testing.architecture import (
    import_graph,
    imports_of,
    markdown,
    modules,
    package_cycles,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: Lowest first. A module may import modules of its own layer and of layers below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("agoramesh.errors", "agoramesh.config", "agoramesh._version"),
    ("agoramesh.sim",),  # the grid world: a library of its own
    ("agoramesh.bus",),
    ("agoramesh.security",),
    ("agoramesh.observability",),  # what an agent records: stats, logs, trajectories
    ("agoramesh.nodes",),
    ("agoramesh.protocols",),
    ("agoramesh.agent",),  # the assembly: AgentNode = BaseNode + its protocols
    ("agoramesh.api", "agoramesh.modes", "agoramesh.cli", "agoramesh.testing",
     "agoramesh.console", "agoramesh.monitoring", "agoramesh.bridges", "agoramesh.__main__",
     "agoramesh"),
)

#: Layering debt: (importer, imported) module pairs that point up.
LAYER_DEBT: frozenset[tuple[str, str]] = frozenset()

#: Modules over :data:`MAX_MODULE_LINES` lines, to be split.
MODULE_DEBT: frozenset[str] = frozenset()

#: Classes over :data:`MAX_CLASS_LINES` lines or :data:`MAX_METHODS` methods, to be split.
CLASS_DEBT: frozenset[str] = frozenset()

#: Modules outside ``bus/`` (and ``testing/``, which plays raw clients on purpose) that
#: still use nats-py; the Bus is to offer what they need.
NATS_DEBT: frozenset[str] = frozenset()

MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_METHODS = 500, 300, 25


def layer_of(module: str) -> int:
    best, index = -1, -1
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best:
                best, index = len(prefix), number
    if index < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return index


def upward_imports(graph: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    """Every (importer, imported) pair where the imported module is in a higher layer."""
    return {(module, target) for module, targets in graph.items() for target in targets
            if layer_of(target) > layer_of(module)}


# -- the checks ---------------------------------------------------------------------------

def test_layers_point_down_but_for_the_listed_debt() -> None:
    upward = upward_imports(import_graph())
    assert not upward - LAYER_DEBT, "new imports pointing up a layer (docs/ARCHITECTURE.md)"
    assert not LAYER_DEBT - upward, "debt paid: remove these from LAYER_DEBT"


def test_no_package_cycle_beyond_the_layering_debt() -> None:
    graph = import_graph()
    for module, target in LAYER_DEBT:  # the debt is what keeps today's cycles
        graph[module].discard(target)
    assert package_cycles(graph) == []


def test_a_back_edge_is_caught() -> None:
    """The checks themselves: a bus module importing a node is refused, twice over."""
    graph = {"agoramesh.bus.bus": {"agoramesh.errors"},
             "agoramesh.nodes.node": {"agoramesh.bus.bus"},
             "agoramesh.nodes.card": set(), "agoramesh.errors": set()}
    assert upward_imports(graph) == set() and package_cycles(graph) == []
    graph["agoramesh.bus.bus"].add("agoramesh.nodes.card")
    assert upward_imports(graph) == {("agoramesh.bus.bus", "agoramesh.nodes.card")}
    assert package_cycles(graph) == [["agoramesh.bus", "agoramesh.nodes"]]


def test_an_import_inside_a_function_counts_and_type_checking_does_not(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from agoramesh.nodes import node\n"
                      "def f():\n    from agoramesh.protocols.auction import bidder\n")
    known = {"agoramesh.nodes.node", "agoramesh.protocols.auction.bidder", "agoramesh.bus.x"}
    assert imports_of("agoramesh.bus.x", source, known) == {"agoramesh.protocols.auction.bidder"}


def test_modules_stay_under_the_line_limit_but_for_the_listed_debt() -> None:
    long = {name for name, path in modules().items()
            if len(path.read_text().splitlines()) > MAX_MODULE_LINES}
    assert not long - MODULE_DEBT, f"modules over {MAX_MODULE_LINES} lines"
    assert not MODULE_DEBT - long, "debt paid: remove these from MODULE_DEBT"


def test_classes_stay_small_but_for_the_listed_debt() -> None:
    big = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                methods = sum(isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                              for item in node.body)
                if lines > MAX_CLASS_LINES or methods > MAX_METHODS:
                    big.add(f"{name}.{node.name}")
    assert not big - CLASS_DEBT, (f"classes over {MAX_CLASS_LINES} lines or "
                                  f"{MAX_METHODS} methods")
    assert not CLASS_DEBT - big, "debt paid: remove these from CLASS_DEBT"


def _uses_nats(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "nats"
                                                for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nats":
            return True
    return False


@pytest.mark.parametrize("exempt", [("agoramesh.bus", "agoramesh.testing")])
def test_only_the_bus_uses_nats_py_but_for_the_listed_debt(exempt: tuple[str, ...]) -> None:
    users = {name for name, path in modules().items()
             if not name.startswith(exempt) and _uses_nats(path)}
    assert not users - NATS_DEBT, "nats-py used outside bus/: give the Bus what is needed"
    assert not NATS_DEBT - users, "debt paid: remove these from NATS_DEBT"


def test_the_import_graph_picture_is_up_to_date() -> None:
    assert (DOCS / "import-graph.md").read_text() == markdown(import_graph()), (
        "docs/import-graph.md is stale: run `make graph`")
