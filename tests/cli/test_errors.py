"""Every refusal of the command line: one line on stderr, its exit code, nothing written.

Each case runs against the three-backend topology (or fresh, unsynced databases) and
compares a dump of every table of every database, and every file under the test's
folder, before and after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

from shadowdb.cli import ExitCode
from tests.conftest import FreshDatabases, Topology
from tests.support.backends import Server, worker_id
from tests.support.cli import Cli, Snapshot, assert_unchanged, dispose_engines, snapshot, text

API = "{api}"  # stands for the topology's API database URL in a case's argv


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """Run shadowdb in-process from an empty working folder under ``tmp_path``."""
    saved = structlog.get_config()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    yield Cli({"SHADOWDB_DATA_DIR": str(tmp_path / "data")})
    structlog.configure(**saved)  # the CLI configured logging for its own stderr


@pytest.fixture(scope="module", autouse=True)
def _close_snapshot_connections() -> Iterator[None]:
    yield
    dispose_engines()


@dataclasses.dataclass(frozen=True)
class Case:
    """A command line that must be refused with ``code`` and a message matching ``message``."""

    id: str
    argv: tuple[str, ...]
    code: ExitCode
    message: str
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def param(self) -> object:
        return pytest.param(self, id=self.id)


def _bad(case_id: str, command: str, message: str, **env: str) -> Case:
    return Case(case_id, tuple(shlex.split(command)), ExitCode.BAD_INPUT, message, env)


def _down(case_id: str, command: str, message: str) -> Case:
    return Case(case_id, tuple(shlex.split(command)), ExitCode.OPERATIONAL, message)


_NAME_RULE = re.escape("cell name must be 1 to 255 characters")
_UNREACHABLE = r"unreachable: .*(Can't connect|Connection refused)"
_MYSQL_CLOSED = "mysql+pymysql://root@127.0.0.1:1/nova"
_PG_CLOSED = "postgresql://postgres@127.0.0.1:1/nova"
_ADD = f"cell add cell3 sqlite:///c.sqlite --api-url {API}"

CASES = [
    # Malformed URLs, for the API database and for a cell.
    _bad(
        "api-not-a-url",
        "status --api-url notaurl",
        r"^invalid database URL 'notaurl': not a database URL$",
    ),
    _bad(
        "api-oracle",
        "cell list --api-url oracle://x/y",
        r"^invalid database URL 'oracle://x/y': unsupported backend 'oracle'",
    ),
    _bad(
        "api-mysql-no-host",
        "status --api-url mysql+pymysql://root@/nova",
        r"'mysql\+pymysql://\*\*\*@/nova': no host$",
    ),
    _bad(
        "api-postgresql-no-database",
        "db sync --api-url postgresql://postgres@127.0.0.1",
        r"no database name$",
    ),
    _bad(
        "cell-foo",
        f"cell add cell3 foo:// --api-url {API}",
        r"^invalid database URL 'foo://': unsupported backend 'foo'",
    ),
    _bad(
        "cell-unknown-driver",
        f"cell add cell3 mysql+mysqldb://root@127.0.0.1/nova --api-url {API}",
        r"unsupported driver 'mysqldb'$",
    ),
    _bad(
        "cell-mysql-no-host",
        f"cell add cell3 mysql+pymysql://root@/nova --api-url {API}",
        r"no host$",
    ),
    _bad(
        "cell-mysql-no-database",
        f"cell add cell3 mysql+pymysql://root@127.0.0.1:3306 --api-url {API}",
        r"no database name$",
    ),
    _bad(
        "cell-postgresql-no-host",
        f"cell add cell3 postgresql:///nova --api-url {API}",
        r"'postgresql:///nova': no host$",
    ),
    _bad(
        "cell-postgresql-no-database",
        f"cell add cell3 postgresql://postgres@127.0.0.1/ --api-url {API}",
        r"no database name$",
    ),
    _bad(
        "cell-bad-port",
        f"cell add cell3 mysql+pymysql://root@127.0.0.1:port/nova --api-url {API}",
        r"not a database URL$",
    ),
    _bad(
        "cell-sqlite-in-memory",
        f"cell add cell3 sqlite:// --api-url {API}",
        r"^a cell database cannot be in memory$",
    ),
    # Cell names.
    _bad("name-empty", _ADD.replace("cell3", "''"), _NAME_RULE),
    _bad("name-blank", _ADD.replace("cell3", "'   '"), _NAME_RULE),
    _bad("name-256", _ADD.replace("cell3", "x" * 256), _NAME_RULE),
    _bad("name-duplicate", _ADD.replace("cell3", "cell1"), r"^cell 'cell1' already exists$"),
    _bad(
        "name-duplicate-padded",
        _ADD.replace("cell3", "' cell2 '"),
        r"^cell 'cell2' already exists$",
    ),
    # Usage.
    _bad("no-command", f"--api-url {API}", r"required: COMMAND$"),
    _bad("unknown-command", f"frobnicate --api-url {API}", r"invalid choice: 'frobnicate'"),
    _bad("no-action", f"cell --api-url {API}", r"^cell: .*required: ACTION$"),
    _bad("unknown-action", f"cell rename cell1 --api-url {API}", r"invalid choice: 'rename'"),
    _bad(
        "missing-db-url",
        f"cell add cell3 --api-url {API}",
        r"^cell add: .*required: DB_URL$",
    ),
    _bad("missing-name", f"cell add --api-url {API}", r"required: name, DB_URL$"),
    _bad("extra-argument", f"status extra --api-url {API}", r"unrecognized arguments: extra$"),
    _bad(
        "unknown-option", f"cell list --bogus --api-url {API}", r"unrecognized arguments: --bogus$"
    ),
    _bad(
        "format-xml",
        f"cell list --format xml --api-url {API}",
        r"argument --format: invalid choice: 'xml'",
    ),
    _bad(
        "format-no-value",
        f"status --api-url {API} --format",
        r"argument --format: expected one argument$",
    ),
    _bad("api-url-no-value", "status --api-url", r"argument --api-url: expected one argument$"),
    # The environment.
    *(
        _bad(
            f"phase-ttl-{v}",
            f"status --api-url {API}",
            rf"SHADOWDB_PHASE_TTL='{re.escape(v)}'",
            SHADOWDB_PHASE_TTL=v,
        )
        for v in ("abc", "-1", "inf", "nan", "1s")
    ),
    _bad("env-api-url", "status", r"^invalid database URL 'notaurl'", SHADOWDB_API_URL="notaurl"),
    # Unreachable databases.
    _down("api-mysql-closed-port", f"status --api-url {_MYSQL_CLOSED}", _UNREACHABLE),
    _down("api-postgresql-closed-port", f"cell list --api-url {_PG_CLOSED}", _UNREACHABLE),
    _down("api-closed-port-db-sync", f"db sync --api-url {_PG_CLOSED}", _UNREACHABLE),
    _down("api-closed-port-cell-add", _ADD.replace(API, _MYSQL_CLOSED), _UNREACHABLE),
    _down(
        "cell-mysql-closed-port",
        f"cell add cell3 {_MYSQL_CLOSED} --api-url {API}",
        rf"^cell cell3 \({re.escape(_MYSQL_CLOSED)}\) {_UNREACHABLE}",
    ),
    _down(
        "cell-postgresql-closed-port", f"cell add cell3 {_PG_CLOSED} --api-url {API}", _UNREACHABLE
    ),
    _down(
        "cell-sqlite-no-folder",
        f"cell add cell3 sqlite:///no/such/c.sqlite --api-url {API}",
        r"unreachable: folder /\S+/no/such does not exist$",
    ),
]


def _topology_snapshot(topology: Topology, tmp_path: Path) -> Snapshot:
    return snapshot([topology.api_url, *topology.cell_urls.values()], tmp_path)


#: The refusals that come after shadowdb has read the topology's API database: these run on
#: every backend. The others are refused before it is reached, whatever its backend.
REACH_THE_API = {
    "name-empty",
    "name-blank",
    "name-256",
    "name-duplicate",
    "name-duplicate-padded",
    "cell-sqlite-in-memory",
    "cell-mysql-closed-port",
    "cell-postgresql-closed-port",
    "cell-sqlite-no-folder",
}
SQLITE_ONLY = [pytest.param("sqlite", marks=pytest.mark.sqlite)]


def _refused(cli: Cli, topology: Topology, tmp_path: Path, case: Case) -> None:
    argv = [topology.api_url_text if a == API else a for a in case.argv]
    before = _topology_snapshot(topology, tmp_path)
    run = cli(*argv, env=case.env)
    assert run.code == case.code, run.err
    message = run.only_error()  # one line, no traceback, nothing on stdout
    assert re.search(case.message, message), message
    assert_unchanged(before, _topology_snapshot(topology, tmp_path), argv)


@pytest.mark.parametrize("case", [c.param() for c in CASES if c.id in REACH_THE_API])
def test_refused_after_reading_the_api_database_writes_nothing(
    cli: Cli, topology: Topology, tmp_path: Path, case: Case
) -> None:
    _refused(cli, topology, tmp_path, case)


@pytest.mark.parametrize("backend", SQLITE_ONLY, indirect=True)
@pytest.mark.parametrize("case", [c.param() for c in CASES if c.id not in REACH_THE_API])
def test_refused_before_the_api_database_writes_nothing(
    cli: Cli, topology: Topology, tmp_path: Path, case: Case
) -> None:
    _refused(cli, topology, tmp_path, case)


def test_every_case_is_known() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert set(ids) >= REACH_THE_API


@pytest.mark.parametrize("case", [c.param() for c in CASES if c.id.startswith(("api-", "cell-"))])
def test_debug_adds_a_traceback_and_keeps_the_exit_code(
    cli: Cli, tmp_path: Path, case: Case
) -> None:
    api = f"sqlite:///{tmp_path / 'api.sqlite'}"
    cli.ok("db", "sync", "--api-url", api)
    run = cli(*[api if a == API else a for a in case.argv], "--debug", env=case.env)
    assert run.code == case.code
    assert run.err.startswith("Traceback (most recent call last):\n")
    last = run.err.splitlines()[-1]
    assert last.startswith("shadowdb: error: ")
    assert re.search(case.message, last.removeprefix("shadowdb: error: ")), last


def test_cell_add_refuses_a_database_that_does_not_exist(
    cli: Cli, topology: Topology, server: Server, tmp_path: Path
) -> None:
    if server.backend == "sqlite":
        missing = f"sqlite:///{tmp_path / 'nowhere' / 'cell3.sqlite'}"
        expected = r"unreachable: folder \S+/nowhere does not exist$"
    else:
        missing = text(server.url(f"sdbtest_{os.getpid()}_{worker_id()}_never_created"))
        expected = r"unreachable: .*(Unknown database|does not exist)"
    before = _topology_snapshot(topology, tmp_path)
    run = cli("cell", "add", "cell3", missing, "--api-url", topology.api_url_text)
    assert run.code == ExitCode.OPERATIONAL
    assert re.search(expected, run.only_error()), run.err
    assert_unchanged(before, _topology_snapshot(topology, tmp_path), ["cell add"])


def _make_unsynced(fresh: FreshDatabases) -> None:
    """Give the fresh API database one foreign table, as a Nova database shadowdb never synced."""
    if fresh.backend == "sqlite":
        with sqlite3.connect(fresh.api_url.database or "") as conn:
            conn.execute("CREATE TABLE nova_table (id INTEGER PRIMARY KEY)")
            conn.execute("INSERT INTO nova_table VALUES (1)")
        return
    engine = sa.create_engine(fresh.api_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE nova_table (id INTEGER PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO nova_table VALUES (1)"))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["status"], id="status"),
        pytest.param(["status", "--format", "json"], id="status-json"),
        pytest.param(["cell", "list"], id="cell-list"),
        pytest.param(["cell", "add", "cell1", "CELL"], id="cell-add"),
    ],
)
def test_unsynced_api_database_asks_for_db_sync(
    cli: Cli, fresh: FreshDatabases, tmp_path: Path, argv: list[str]
) -> None:
    _make_unsynced(fresh)
    argv = [text(fresh.cell_urls["cell1"]) if a == "CELL" else a for a in argv]
    urls = [fresh.api_url, *fresh.cell_urls.values()]
    before = snapshot(urls, tmp_path)
    run = cli(*argv, "--api-url", text(fresh.api_url))
    assert run.code == ExitCode.OPERATIONAL
    assert run.only_error() == "schema of API database: not synced (run `shadowdb db sync`)"
    assert_unchanged(before, snapshot(urls, tmp_path), argv)


@pytest.mark.parametrize("data_dir", ["set", "unset"])
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["status"], id="status"),
        pytest.param(["cell", "list", "--format", "json"], id="cell-list"),
        pytest.param(["cell", "add", "cell1", "sqlite:///cell1.sqlite"], id="cell-add"),
        pytest.param(["cell", "add", "cell1", "sqlite:///cell1.sqlite", "--debug"], id="debug"),
        pytest.param(["backfill"], id="backfill"),
        pytest.param(["phase", "set", "dual-write-cell-reads"], id="phase-set"),
    ],
)
def test_missing_default_api_database_is_never_created_by_a_read(
    cli: Cli, tmp_path: Path, argv: list[str], data_dir: str
) -> None:
    # A forgotten SHADOWDB_API_URL: the embedded default does not exist yet.
    if data_dir == "unset":  # the default folder: ./shadowdb-data
        cli = Cli({})
        expected = tmp_path / "cwd" / "shadowdb-data" / "api.sqlite"
    else:
        expected = tmp_path / "data" / "api.sqlite"
    run = cli(*argv)
    assert run.code == ExitCode.BAD_INPUT
    message = run.err.splitlines()[-1].removeprefix("shadowdb: error: ")
    if "json" in argv:
        message = json.loads(message)["error"]
    assert message == (
        f"no API database: SHADOWDB_API_URL is not set and {expected} does not exist; "
        "set SHADOWDB_API_URL (or --api-url), or run `shadowdb db sync` to create the "
        "embedded one"
    )
    if "--debug" not in argv:
        run.only_error()
    # Not the file, not its folder, nothing at all.
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path("cwd")]


def test_cell_add_create_still_needs_db_sync_first(cli: Cli, tmp_path: Path) -> None:
    # --create makes a cell's SQLite file, never the API database.
    run = cli("cell", "add", "cell1", "sqlite:///cell1.sqlite", "--create")
    assert run.code == ExitCode.OPERATIONAL
    assert run.only_error() == (
        f"API database sqlite+pysqlite:///{tmp_path / 'data' / 'api.sqlite'} unreachable: "
        "no such file (run `shadowdb db sync` to create it)"
    )
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path("cwd")]
