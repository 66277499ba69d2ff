"""The data access core imports without cycles, counting every import a module makes.

Imports inside functions and under ``TYPE_CHECKING`` count too: a cycle hidden there is
still two modules that cannot be understood (or loaded) one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import shadowdb

PACKAGE = Path(shadowdb.__file__).parent

#: The core layer: units of work, phases, queries, lookups, objects and what they split into.
CORE = (
    "bulk",
    "databases",
    "errors",
    "failures",
    "fence",
    "journals",
    "location",
    "locks",
    "lookups",
    "objects",
    "phase",
    "phases",
    "phases.api_only",
    "phases.base",
    "phases.cell_only",
    "phases.dual_write_api_reads",
    "phases.dual_write_cell_reads",
    "queries",
    "records",
    "statements",
    "sync",
    "testing",
    "transactions",
    "writes",
)


def _path(module: str) -> Path:
    parts = module.split(".")
    package = PACKAGE.joinpath(*parts, "__init__.py")
    return package if package.exists() else PACKAGE.joinpath(*parts[:-1], f"{parts[-1]}.py")


def _imports(module: str) -> set[str]:
    """Every core module ``module`` imports, anywhere in its text."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(_path(module).read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            short = name.removeprefix("shadowdb.")
            if name.startswith("shadowdb.") and short in CORE and short != module:
                found.add(short)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one cycle of ``graph`` as a path, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_core_modules_exist() -> None:
    assert [m for m in CORE if not _path(m).exists()] == []


def test_no_import_cycle_in_the_core() -> None:
    graph = {module: _imports(module) for module in CORE}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
