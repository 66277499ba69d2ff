"""The package's shape: no module too long to hold in one's head, no import cycle, a thin CLI.

Every import counts, at module level, inside a function or under ``TYPE_CHECKING``: a
cycle hidden in a function is still a cycle a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shadowdb"
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 350

#: The modules the CLI may import: the library verbs, values it renders, and plumbing.
#: Tools (backfill, diff, cleanup, switcher, sync, objects) are reached through commands.
CLI_MAY_IMPORT = frozenset(
    {
        "shadowdb",
        "shadowdb.commands",
        "shadowdb.databases",
        "shadowdb.errors",
        "shadowdb.logs",
        "shadowdb.novaconf",
        "shadowdb.phase",
        "shadowdb.render",
        "shadowdb.settings",
        "shadowdb.urls",
    }
)


#: The data access core: units of work, phases, queries, lookups, objects and their parts.
#: The cycle check covers them with the rest; this names the layer the others build on.
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Return the package modules ``name`` imports, wherever the import statement stands."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from shadowdb import diff" imports the module shadowdb.diff; "from
            # shadowdb.diff import DiffKind" goes through the package's __init__.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle() -> list[str] | None:
    """Return one import cycle among the package's modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    # The package root re-exports the public API lazily; it is the one module every
    # other may name, so edges into it are not followed.
    for targets in GRAPH.values():
        targets.discard("shadowdb")
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_core_modules_exist() -> None:
    assert [m for m in CORE if f"shadowdb.{m}" not in MODULES] == []


def test_the_cycle_check_finds_a_planted_cycle() -> None:
    GRAPH["shadowdb.errors"].add("shadowdb.cli")
    try:
        cycle = _cycle()
    finally:
        GRAPH["shadowdb.errors"].discard("shadowdb.cli")
    assert cycle is not None and "shadowdb.cli" in cycle and "shadowdb.errors" in cycle


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_700_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_class_is_over_350_lines(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    long = {
        node.name: (node.end_lineno or node.lineno) - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_CLASS_LINES
    }
    assert not long, f"{name}: {long}"


def test_the_cli_reaches_every_tool_through_commands() -> None:
    direct = GRAPH["shadowdb.cli"] - CLI_MAY_IMPORT
    assert not direct, f"cli imports {sorted(direct)} directly"
