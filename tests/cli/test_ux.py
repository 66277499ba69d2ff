"""The command line's rough edges, smoothed: usage, help, hints, errors, terminals.

In-process through :func:`shadowdb.cli.main`, except where a terminal matters: those run
the ``shadowdb`` console script with its stdout on a pseudo-terminal of 80 columns.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
from pathlib import Path

import pytest
import sqlalchemy as sa

import shadowdb
from shadowdb import backfill, commands, models
from shadowdb import cli as cli_mod
from shadowdb.cli import ExitCode
from shadowdb.settings import Settings
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.backfill import SHADOWDB, environment
from tests.support.cli import Cli, dump_files, run_on_terminal, table_rows, terminal_env
from tests.support.helpers import new_uuid, put_in_phase, seed_cell_group

SQLITE_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)], indirect=True
)
PACKAGE = Path(shadowdb.__file__).parent


@pytest.fixture
def cli(cli_here: Cli) -> Cli:
    return cli_here


def _on(topology: Topology) -> Cli:
    return Cli({"SHADOWDB_API_URL": topology.api_url_text, "SHADOWDB_PHASE_TTL": "0"})


# --------------------------------------------------------------------------- usage, help


def test_bare_shadowdb_prints_the_usage(cli: Cli) -> None:
    run = cli()
    assert run.code == ExitCode.BAD_INPUT
    assert run.out == ""
    assert run.err.startswith("usage: shadowdb ")
    assert "cutover order:" in run.err


def test_version_and_help_exit_zero_on_stdout(cli: Cli) -> None:
    version = cli("--version")
    assert (version.code, version.out, version.err) == (0, f"shadowdb {shadowdb.__version__}\n", "")
    helped = cli("--help")
    assert (helped.code, helped.err) == (0, "")
    assert helped.out.startswith("usage: shadowdb ")


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = []
        elif line.strip():
            sections.setdefault(current, []).append(line.strip())
    return sections


def test_help_ends_with_cutover_environment_and_exit_codes(cli: Cli) -> None:
    text = cli("--help").out
    assert list(_sections(text))[-3:] == ["cutover order", "environment", "exit codes"]
    sections = _sections(text)
    cutover = [re.split(r"\s{2,}", line)[0] for line in sections["cutover order"]]
    assert cutover[0] == "shadowdb db sync" and cutover[-1] == "shadowdb cleanup --yes"
    for command in cutover:
        _parses(command)
    # Every variable Settings reads, and every exit code there is.
    variables = set(re.findall(r"SHADOWDB_[A-Z_]+", inspect.getsource(Settings)))
    assert {line.split()[0] for line in sections["environment"]} == variables
    assert [int(line.split()[0]) for line in sections["exit codes"]] == [int(c) for c in ExitCode]
    assert text.rstrip().endswith("run it again to resume")


def test_batch_size_default_is_shown_and_defined_once(cli: Cli) -> None:
    assert commands.DEFAULT_BATCH is backfill.DEFAULT_BATCH
    for function in (commands.backfill, backfill.backfill, backfill.Backfiller):
        default = inspect.signature(function).parameters["batch_size"].default
        assert default == backfill.DEFAULT_BATCH
    text = " ".join(cli("backfill", "--help").out.split())
    assert f"--batch-size N records per batch (default: {backfill.DEFAULT_BATCH})" in text


# --------------------------------------------------------------------------- hints


def _parses(command: str) -> None:
    words = shlex.split(command)
    assert words[0] == "shadowdb", command
    try:
        cli_mod._build_parser().parse_args(words[1:])
    except Exception as err:
        pytest.fail(f"hint {command!r} does not parse: {err}")


def _strings(tree: ast.AST) -> list[str]:
    """Every string literal (adjacent ones joined; f-string fields as NAME)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            found.append(
                "".join(v.value if isinstance(v, ast.Constant) else "NAME" for v in node.values)
            )
    return found


def test_every_hint_names_a_real_command() -> None:
    hints = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for text in _strings(ast.parse(path.read_text(encoding="utf-8"))):
            hints += re.findall(r"`(shadowdb [^`]+)`", text)
    assert len(hints) > 10, hints
    for hint in hints:
        _parses(hint)


# --------------------------------------------------------------------------- wrong phase


def test_wrong_phase_says_what_the_command_needs(topology: Topology) -> None:
    run = _on(topology)
    seed_cell_group(topology.cell_engine("cell1"))
    expected = {
        (Phase.CELL_ONLY, "backfill"): (
            "backfill runs in the dual-write phases; the phase is cell-only: "
            "run `shadowdb phase set dual-write-cell-reads` first"
        ),
        (Phase.DUAL_WRITE_CELL_READS, "backfill --reverse"): (
            "backfill --reverse runs in api-only and dual-write-api-reads; the phase is "
            "dual-write-cell-reads: the cells are the authority, run `shadowdb backfill`"
        ),
        (Phase.DUAL_WRITE_API_READS, "cleanup --yes"): (
            "cleanup runs in api-only only; the phase is dual-write-api-reads"
        ),
        (Phase.API_ONLY, "backfill"): (
            "backfill runs in the dual-write phases; the phase is api-only: to copy the API "
            "groups back to the cells, run `shadowdb backfill --reverse`"
        ),
    }
    for (phase, command), message in expected.items():
        put_in_phase(topology.dbs, phase)
        result = run(*command.split())
        assert result.code == ExitCode.REFUSED, result.err
        assert result.only_error() == message
        as_json = run(*command.split(), "--format", "json")
        assert as_json.code == ExitCode.REFUSED
        assert as_json.only_error() == message
    # The phase change itself still says what it refuses to enter.
    put_in_phase(topology.dbs, Phase.CELL_ONLY)
    refused = run("phase", "set", "api-only")
    assert refused.only_error().startswith("refusing to enter api-only: ")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "argv",
    [
        ["cell", "list", "--bogus", "--format", "json"],
        ["--format=json", "frobnicate"],
        ["status", "--format", "json", "--api-url", "notaurl"],
        ["cell", "list", "--format", "json", "--api-url", "postgresql://postgres@127.0.0.1:1/x"],
        ["status", "--format", "json", "--api-url", ""],
    ],
    ids=["usage", "usage-equals", "bad-url", "unreachable", "empty-url"],
)
def test_json_errors_are_json_on_stderr(cli: Cli, argv: list[str]) -> None:
    run = cli(*argv)
    assert run.code in (ExitCode.BAD_INPUT, ExitCode.OPERATIONAL)
    assert run.out == ""
    error = json.loads(run.err)
    assert error == {"error": error["error"], "exit_code": run.code}
    assert error["error"] and "\n" not in error["error"]
    text = cli(*[a for a in argv if a not in ("--format", "json", "--format=json")])
    assert text.code == run.code
    assert text.only_error() == error["error"]


def test_bad_data_folder_and_empty_api_url_are_bad_input(cli: Cli, tmp_path: Path) -> None:
    a_file = tmp_path / "cwd" / "not-a-folder"
    a_file.write_text("x")
    before = dump_files(tmp_path)
    for folder in (a_file, a_file / "below"):
        for argv in (["db", "sync"], ["status"], ["cell", "add", "c1", "sqlite:///c.sqlite"]):
            run = cli(*argv, env={"SHADOWDB_DATA_DIR": str(folder)})
            assert run.code == ExitCode.BAD_INPUT, run.err
            assert run.only_error() == (
                f"bad setting in the environment: SHADOWDB_DATA_DIR={str(folder)!r} is not a "
                f"folder: {a_file} is a file"
            )
    for argv in (["db", "sync"], ["status"], ["backfill"]):
        for empty in ("", "  "):
            run = cli(*argv, "--api-url", empty)
            assert run.code == ExitCode.BAD_INPUT
            assert run.only_error() == "--api-url is empty: give the API database URL"
    assert dump_files(tmp_path) == before


def _break_cell(topology: Topology, name: str) -> None:
    """Point a cell mapping at a SQLite file in a folder that does not exist."""
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_cell_mappings.update()
            .where(models.api_cell_mappings.c.name == name)
            .values(database_connection="sqlite:////nonexistent-shadowdb-folder/cell.sqlite")
        )


@SQLITE_ONLY
def test_a_failed_migration_is_one_line_on_stderr(topology: Topology, cli: Cli) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_cell_group(topology.cell_engine("cell1"))
    _break_cell(topology, "cell2")
    run = _on(topology)
    # The reachable cell is copied: the table, and what failed, on stdout.
    partial = run("backfill")
    assert partial.code == ExitCode.OPERATIONAL
    assert partial.err == ""
    assert [row[0] for row in table_rows(partial.out)] == [
        "drain_journals",
        "migrate_instance_groups",
    ]
    # Nothing left that could move: one line, no table of zeros, no log lines.
    for argv, stdout in (
        (["backfill"], "Running batches of 50 until complete\n"),
        (["backfill", "--max-count", "5"], ""),
    ):
        failed = run(*argv)
        assert failed.code == ExitCode.OPERATIONAL
        assert failed.out == stdout
        assert len(failed.err.splitlines()) == 1, failed.err
        assert re.fullmatch(
            r"shadowdb: error: backfill failed \(migrate_instance_groups, drain_journals\): "
            r"cell cell2: DatabaseUnreachable: cell cell2 unreachable: .*\n",
            failed.err,
        ), failed.err
    # --debug adds the log's detail, and the same last line.
    debug = run("backfill", "--debug")
    events = [json.loads(line)["event"] for line in debug.err.splitlines() if line[:1] == "{"]
    assert "migration_failed" in events
    assert debug.err.splitlines()[-1] == failed.err.strip()


# --------------------------------------------------------------------------- terminals


def _screen_rows(screen: str) -> list[str]:
    return [line for line in screen.splitlines() if line.startswith(("│", "┃", "┏", "└"))]


@SQLITE_ONLY
def test_tables_fit_80_columns_without_cutting_a_uuid(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    uuids = [seed_cell_group(topology.cell_engine("cell1"), name=f"g{i}") for i in range(2)]
    long_name = "a-cell-with-a-name-long-enough-to-need-a-second-line-" * 2
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_cell_mappings.update()
            .where(models.api_cell_mappings.c.name == "cell2")
            .values(name=long_name)
        )
    env = terminal_env(environment(topology), columns=80)
    code, screen, err = run_on_terminal([SHADOWDB, "diff-report"], env)
    assert code == ExitCode.MORE, err
    rows = _screen_rows(screen)
    assert rows and all(len(line) <= 80 for line in rows), screen
    assert "…" not in screen
    for uuid in uuids:
        assert any(uuid in line for line in rows), screen  # whole, on one line
    assert "each side's group data: diff-report --format json" in screen

    code, screen, err = run_on_terminal([SHADOWDB, "cell", "list"], env)
    assert code == ExitCode.OK, err
    rows = _screen_rows(screen)
    assert all(len(line) <= 80 for line in rows), screen
    assert "…" not in screen
    with topology.dbs.api.connect() as conn:
        cell_uuids = conn.execute(sa.select(models.api_cell_mappings.c.uuid)).scalars().all()
    for uuid in cell_uuids:
        assert any(uuid in line for line in rows), screen
    # The long name wraps, every piece of it shown.
    assert long_name in "".join(line.split("│")[1].strip() for line in rows if "│" in line)


@SQLITE_ONLY
def test_no_per_batch_lines_under_the_progress_bar(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    with topology.cell_engine("cell1").begin() as conn:
        conn.execute(
            models.cell_groups.insert(),
            [
                {"uuid": new_uuid(), "name": f"b{i}", "project_id": "p1", "deleted": 0}
                for i in range(120)
            ],
        )
    env = terminal_env(environment(topology), columns=80)
    code, screen, err = run_on_terminal([SHADOWDB, "backfill", "--batch-size", "50"], env)
    assert code == ExitCode.OK, err
    assert "rows matched" not in screen
    assert "120/120" in screen
    assert any("migrate_instance_groups" in line and "120" in line for line in screen.splitlines())


# --------------------------------------------------------------------------- shape


def test_cli_reaches_the_tools_through_commands_only() -> None:
    for module in ("cli.py", "render.py"):
        tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "shadowdb":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shadowdb."):
                imported.add(node.module.removeprefix("shadowdb."))
        tools = {"backfill", "cleanup", "diff", "switcher", "sync", "objects", "hosts"}
        assert not imported & tools, (module, imported & tools)
    assert len((PACKAGE / "cli.py").read_text(encoding="utf-8").splitlines()) < 700


@SQLITE_ONLY
def test_phase_history_on_80_columns_never_breaks_a_phase_name(topology: Topology) -> None:
    commands.set_phase(topology.dbs, "dual-write-cell-reads", reason="a reason long enough " * 4)
    env = terminal_env(environment(topology), columns=80)
    code, screen, err = run_on_terminal([SHADOWDB, "phase", "history"], env)
    assert code == ExitCode.OK, err
    lines = screen.splitlines()
    assert all(len(line) <= 80 for line in lines), screen
    assert "…" not in screen
    assert any("cell-only -> dual-write-cell-reads" in line for line in lines), screen
