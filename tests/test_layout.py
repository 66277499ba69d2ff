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
        "shadowdb.state",
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
    "phases",
    "phases.api_only",
    "phases.base",
    "phases.cell_only",
    "phases.dual_write_api_reads",
    "phases.dual_write_cell_reads",
    "queries",
    "records",
    "state",
    "statements",
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


TESTS = Path(__file__).resolve().parent

#: Test folders that follow no package module: the protocol and the system as a whole,
#: the soak harness, and what the tests share.
CROSS_CUTTING = frozenset({"protocol", "system", "soak", "support"})

#: The package root is the public API; its test module says so.
MIRROR_NAMES = {"shadowdb": "test_public_api.py"}

#: Modules with no test module of their own yet, each with where its tests are today.
#: The list only shrinks: a module that gains a test module must leave it (see below).
NOT_MIRRORED = {
    # python -m shadowdb: two lines calling the CLI, run by cli/test_end_to_end.py.
    "shadowdb.__main__": "cli/test_end_to_end.py",
    # Exercised through the layers above them, on every backend:
    "shadowdb.errors": "test_public_api.py, cli/test_errors.py",
    "shadowdb.models": "test_schema.py",
    "shadowdb.testing": "support/, test_writes.py, test_scheduler.py",
}


def _holds_tests(folder: Path) -> bool:
    return folder.is_dir() and any(folder.rglob("test_*.py"))


def _mirrors(name: str) -> list[Path]:
    """Return the test modules and folders of ``name`` that exist (a module's mirror)."""
    if name in MIRROR_NAMES:
        candidates = [TESTS / MIRROR_NAMES[name]]
    else:
        *parents, last = name.split(".")[1:]
        base = TESTS.joinpath(*parents)
        candidates = [base / f"test_{last}.py", base / last]
    return [c for c in candidates if c.is_file() or _holds_tests(c)]


@pytest.mark.parametrize("name", sorted(set(MODULES) - set(NOT_MIRRORED)))
def test_every_package_module_has_a_test_module(name: str) -> None:
    dotted = name.split(".")[1:]
    where = "/".join([*dotted[:-1], f"test_{dotted[-1]}.py"]) if dotted else ""
    assert _mirrors(name), f"{name} has no test module: tests/{where} (or a folder)"


@pytest.mark.parametrize("name", sorted(NOT_MIRRORED))
def test_every_exemption_is_still_needed(name: str) -> None:
    assert name in MODULES, f"{name} is no package module: drop it from NOT_MIRRORED"
    assert not _mirrors(name), f"{name} has a test module now: drop it from NOT_MIRRORED"


def test_every_test_folder_is_named_after_a_package_module() -> None:
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    strays = {f for f in folders - CROSS_CUTTING if f"shadowdb.{f}" not in MODULES}
    assert folders and not strays, f"test folders named after no module: {sorted(strays)}"


def test_the_mirror_check_sees_a_missing_test_module() -> None:
    assert _mirrors("shadowdb.switcher") and _mirrors("shadowdb.backfill")
    assert not _mirrors("shadowdb.no_such_module")
    assert not _mirrors("shadowdb.backfill.no_such_module")
