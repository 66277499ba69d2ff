"""The command line end to end: ``db sync``, ``cell add``/``cell list``, ``status``.

Most tests call :func:`shadowdb.cli.main` in-process on every backend; a few run the
installed ``shadowdb`` console script and ``python -m shadowdb`` as real subprocesses.
Refusals and bad input are in ``test_cli_errors.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from shadowdb import commands, schema
from shadowdb.cli import ExitCode
from tests.conftest import FreshDatabases, Topology, _db_name
from tests.support.backends import Server, worker_id
from tests.support.cli import Cli, Run, table_rows, text


@pytest.fixture
def cli(cli_here: Cli) -> Cli:
    """Run shadowdb in-process from an empty working folder (``cli_here``)."""
    return cli_here


@pytest.fixture
def spare(server: Server, tmp_path: Path) -> Iterator[list[URL]]:
    """Two more empty databases to register as cells."""
    if server.backend == "sqlite":
        server = Server("sqlite", folder=tmp_path)
    names = [f"sdbtest_{os.getpid()}_{worker_id()}_cli_spare{i}" for i in (1, 2)]
    made = [server.create(name) for name in names]
    yield made
    for name in names:
        server.drop(name)


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _cell_rows(api_url: URL) -> list[tuple[str, str, str]]:
    engine = sa.create_engine(api_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT name, uuid, database_connection FROM cell_mappings ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    return [(r[0], r[1], r[2]) for r in rows]


# --------------------------------------------------------------------------- cell add / list


def test_cell_add_and_list_round_trip(cli: Cli, fresh: FreshDatabases, spare: list[URL]) -> None:
    api = text(fresh.api_url)
    cli.ok("db", "sync", "--api-url", api)
    assert table_rows(cli.ok("cell", "list", "--api-url", api).out) == []
    assert cli.ok("cell", "list", "--api-url", api, "--format", "json").json() == []

    targets = [fresh.cell_urls["cell1"], fresh.cell_urls["cell2"], *spare]
    typed = [text(u) for u in targets]
    if fresh.backend == "sqlite":
        # A relative SQLite path is stored absolute (the working folder is tmp_path/cwd).
        typed[3] = "sqlite:///../" + Path(targets[3].database or "").name
    shown = [_shown(u) for u in targets]

    first = cli.ok("cell", "add", "c1", typed[0], "--api-url", api)
    match = re.fullmatch(r"cell c1 added: (\S+) (\S+) \(default\)\n", first.out)
    assert match, first.out
    assert match[2] == shown[0]
    uuids = [match[1]]

    second = cli.ok("cell", "add", "c2", typed[1], "--api-url", api, "--format", "json").json()
    assert second == {"name": "c2", "uuid": second["uuid"], "url": shown[1], "default": False}
    uuids.append(second["uuid"])
    # The only cell is the default; with two and none chosen, there is none.
    listed = cli.ok("cell", "list", "--api-url", api, "--format", "json").json()
    assert [(c["name"], c["default"]) for c in listed] == [("c1", False), ("c2", False)]

    third = cli.ok("cell", "add", "c3", typed[2], "--default", "--api-url", api)
    match = re.fullmatch(r"cell c3 added: (\S+) (\S+) \(default\)\n", third.out)
    assert match, third.out
    assert match[2] == shown[2]
    uuids.append(match[1])

    fourth = cli.ok("cell", "add", "c4", typed[3], "--api-url", api)
    match = re.fullmatch(r"cell c4 added: (\S+) (\S+)\n", fourth.out)
    assert match, fourth.out
    assert match[2] == shown[3]
    uuids.append(match[1])

    assert len(set(uuids)) == 4
    assert all(uuid.UUID(u).version == 4 for u in uuids)
    names = ["c1", "c2", "c3", "c4"]
    defaults = [False, False, True, False]

    rows = table_rows(cli.ok("cell", "list", "--api-url", api).out)
    assert rows == [
        [n, u, s, "yes" if d else ""]
        for n, u, s, d in zip(names, uuids, shown, defaults, strict=True)
    ]
    expected = [
        {"name": n, "uuid": u, "url": s, "default": d}
        for n, u, s, d in zip(names, uuids, shown, defaults, strict=True)
    ]
    assert cli.ok("cell", "list", "--api-url", api, "--format", "json").json() == expected
    assert cli.ok("status", "--api-url", api, "--format", "json").json()["cells"] == expected
    # cell_mappings holds what Nova would: the full URL, SQLite paths made absolute.
    assert _cell_rows(fresh.api_url) == [
        (n, u, text(t)) for n, u, t in zip(names, uuids, targets, strict=True)
    ]


def test_cell_names_up_to_255_characters_are_accepted(
    cli: Cli, topology: Topology, server: Server, tmp_path: Path
) -> None:
    api = topology.api_url_text
    if server.backend == "sqlite":
        server = Server("sqlite", folder=tmp_path)
    names = ["x" * 255, "cell with spaces", "セル"]
    made = [_db_name(f"named{i}") for i in range(len(names))]
    try:
        for name, db in zip(names, made, strict=True):
            target = text(server.create(db))  # one database per mapping
            added = cli.ok("cell", "add", name, target, "--api-url", api, "--format", "json")
            assert added.json()["name"] == name
        listed = cli.ok("cell", "list", "--api-url", api, "--format", "json").json()
        assert [c["name"] for c in listed] == ["cell1", "cell2", *names]
        assert [c["default"] for c in listed] == [True, False, False, False, False]
        assert [row[0] for row in table_rows(cli.ok("cell", "list", "--api-url", api).out)] == [
            "cell1",
            "cell2",
            *names,
        ]
    finally:
        topology.dbs.dispose()
        for db in made:
            server.drop(db)


# --------------------------------------------------------------------------- db sync, status


def test_db_sync_is_idempotent_and_status_shows_cell_only(cli: Cli, fresh: FreshDatabases) -> None:
    api = text(fresh.api_url)
    api_label = f"API database {_shown(fresh.api_url)}"
    api_head, cell_head = schema.head_revision("api"), schema.head_revision("cell")

    first = cli.ok("db", "sync", "--api-url", api, "--format", "json").json()
    assert first == {
        "databases": [{"database": api_label, "tree": "api", "before": None, "after": api_head}],
        "state_created": True,
    }
    for name, url in fresh.cell_urls.items():
        cli.ok("cell", "add", name, text(url), "--api-url", api)
    cli.ok("cell", "set-default", "cell1", "--api-url", api)

    # The cells registered since are brought up; the API database is left as it is.
    second = cli.ok("db", "sync", "--api-url", api)
    assert second.lines == [
        f"{api_label}: up to date",
        f"cell cell1: upgraded empty -> {cell_head}",
        f"cell cell2: upgraded empty -> {cell_head}",
    ]
    third = cli.ok("db", "sync", "--api-url", api)
    assert third.lines == [
        f"{api_label}: up to date",
        "cell cell1: up to date",
        "cell cell2: up to date",
    ]
    again = cli.ok("db", "sync", "--api-url", api, "--format", "json").json()
    assert again == {
        "databases": [
            {"database": api_label, "tree": "api", "before": api_head, "after": api_head},
            {"database": "cell cell1", "tree": "cell", "before": cell_head, "after": cell_head},
            {"database": "cell cell2", "tree": "cell", "before": cell_head, "after": cell_head},
        ],
        "state_created": False,
    }
    for url in fresh.cell_urls.values():
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                assert schema.current_revision(conn, "cell") == cell_head
                assert {"instance_groups", "instances"} <= set(sa.inspect(conn).get_table_names())
        finally:
            engine.dispose()

    before = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    status = cli.ok("status", "--api-url", api)
    match = re.fullmatch(
        r"phase: cell-only \(epoch 0, since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z\)", status.lines[0]
    )
    assert match, status.lines[0]
    changed_at = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S")
    assert before - dt.timedelta(minutes=5) <= changed_at <= before + dt.timedelta(minutes=1)
    cells = cli.ok("cell", "list", "--api-url", api, "--format", "json").json()
    assert table_rows(status.out) == [
        [c["name"], c["uuid"], c["url"], "yes" if c["default"] else ""] for c in cells
    ] + [[name, "yes", "0", "0", "0"] for name in ("cell1", "cell2")]
    assert [(c["name"], c["default"]) for c in cells] == [("cell1", True), ("cell2", False)]

    as_json = cli.ok("status", "--api-url", api, "--format", "json").json()
    assert as_json == {
        "phase": "cell-only",
        "epoch": 0,
        "changed_at": changed_at.isoformat(),
        "cells": cells,
        "health": [
            {
                "name": name,
                "reachable": True,
                "error": None,
                "backlog": 0,
                "journal": 0,
                "conflicts": 0,
                "synced": True,
                "unscanned": False,
            }
            for name in ("cell1", "cell2")
        ],
        "api_database": _shown(fresh.api_url),
        "api_journal": 0,
        "journal_conflicts": 0,
        "conflicts": {},
        "cells_retired": False,
        "diff": None,
        "next_step": "shadowdb phase set dual-write-cell-reads",
        "reason": "the groups live in the cells only: start writing every group to both databases",
    }


def test_options_are_honoured_before_and_after_the_subcommand(
    cli: Cli, topology: Topology, tmp_path: Path
) -> None:
    api = topology.api_url_text
    expected = cli.ok("cell", "list", "--api-url", api, "--format", "json").json()
    assert [c["name"] for c in expected] == ["cell1", "cell2"]
    for argv in (
        ["--api-url", api, "--format", "json", "cell", "list"],
        ["cell", "--format", "json", "--api-url", api, "list"],
        ["--api-url", "notaurl", "cell", "list", "--api-url", api, "--format", "json"],
    ):
        assert cli.ok(*argv).json() == expected, argv
    from_env = cli.ok("--format", "json", "cell", "list", env={"SHADOWDB_API_URL": api})
    assert from_env.json() == expected

    # --debug before the subcommand turns debug logs on (JSON off a terminal, on stderr).
    synced = cli.ok("--debug", "--api-url", api, "db", "sync")
    events = [json.loads(line) for line in synced.err.splitlines()]
    assert [e["event"] for e in events].count("schema_synced") == 3
    # Nothing fell back to the embedded default database.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cwd", "topology"] if topology.backend == "sqlite" else ["cwd"]
    )
    assert list((tmp_path / "cwd").iterdir()) == []


# --------------------------------------------------------------------------- passwords

#: A password with characters a URL must escape; its two ends are what leaks are hunted by.
PASSWORD = "Qz7-sdb@Wx Kv9"
ESCAPED = urllib.parse.quote(PASSWORD, safe="")
SECRET_PARTS = ("Qz7", "Kv9")
SERVER_BACKENDS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]


def _assert_no_secret(runs: Sequence[Run]) -> None:
    assert runs
    for run in runs:
        for part in SECRET_PARTS:
            assert part not in run.out, f"{run.argv}: password on stdout:\n{run.out}"
            assert part not in run.err, f"{run.argv}: password on stderr:\n{run.err}"


@dataclasses.dataclass
class PasswordDatabases:
    """Databases owned by a user that logs in with :data:`PASSWORD`."""

    backend: str
    api: URL
    cells: dict[str, URL]


def _drop_password_user(server: Server, user: str, names: Sequence[str]) -> None:
    for name in names:
        server.drop(name)
    with server.admin.connect() as conn:
        if server.backend == "mysql":
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        else:
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{user}"'))


@pytest.fixture
def password_dbs(server: Server) -> Iterator[PasswordDatabases]:
    """An API and three cell databases reachable only as a user with a password.

    PostgreSQL runs with trust authentication here, so any password connects there; the
    MariaDB user really needs it.
    """
    user = f"sdb_pw_{os.getpid()}_{worker_id()}"
    prefix = f"sdbtest_{os.getpid()}_{worker_id()}_pw"
    names = {r: f"{prefix}_{r}" for r in ("api", "cell1", "cell2", "cell3")}
    _drop_password_user(server, user, list(names.values()))
    with server.admin.connect() as conn:
        if server.backend == "mysql":
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'"))
            for name in names.values():
                conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                conn.execute(sa.text(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%'"))
        else:
            conn.execute(sa.text(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{PASSWORD}'"))
            for name in names.values():
                conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER "{user}"'))
    assert server.admin_url is not None
    base = server.admin_url.set(username=user, password=PASSWORD)
    urls = {role: base.set(database=name) for role, name in names.items()}
    api = urls.pop("api")
    try:
        yield PasswordDatabases(server.backend, api, urls)
    finally:
        _drop_password_user(server, user, list(names.values()))


@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
def test_passwords_never_reach_output_or_logs(cli: Cli, password_dbs: PasswordDatabases) -> None:
    dbs = password_dbs
    api = text(dbs.api)
    cell1, cell2 = text(dbs.cells["cell1"]), text(dbs.cells["cell2"])
    # The third cell carries its password as a query parameter, which both drivers accept.
    cell3 = text(dbs.cells["cell3"].set(password=None).update_query_dict({"password": PASSWORD}))
    assert all(part in url for url in (api, cell1, cell3) for part in SECRET_PARTS)
    runs: list[Run] = []

    def expect(code: ExitCode, *argv: str) -> Run:
        run = cli(*argv)
        runs.append(run)
        assert run.code == code, f"{argv} -> {run.code}: {run.err}"
        return run

    assert "schema_synced" in expect(ExitCode.OK, "db", "sync", "--api-url", api, "--debug").err
    added = expect(ExitCode.OK, "cell", "add", "cell1", cell1, "--api-url", api, "--debug")
    assert "cell_added" in added.err
    assert ":***@" in added.out
    expect(ExitCode.OK, "cell", "add", "cell2", cell2, "--api-url", api, "--format", "json")
    expect(ExitCode.OK, "cell", "add", "cell3", cell3, "--default", "--api-url", api, "--debug")
    # Sync reaches every cell with its password, and logs each one.
    synced = expect(ExitCode.OK, "db", "sync", "--api-url", api, "--debug")
    assert synced.err.count("schema_synced") == 4
    expect(ExitCode.OK, "db", "sync", "--api-url", api, "--format", "json")
    for command in (["cell", "list"], ["status"]):
        for extra in ([], ["--debug"], ["--format", "json"], ["--format", "json", "--debug"]):
            expect(ExitCode.OK, *command, "--api-url", api, *extra)
    listed = expect(ExitCode.OK, "cell", "list", "--api-url", api, "--format", "json").json()
    assert [c["url"] for c in listed] == [
        _shown(dbs.cells["cell1"]),
        _shown(dbs.cells["cell2"]),
        # The query keeps its own order; only the password's value is masked.
        _shown(dbs.cells["cell3"].update_query_dict({"password": "***"})).replace("%2A", "*"),
    ]
    assert [c["default"] for c in listed] == [False, False, True]

    # Refusals and failures, each with a password somewhere on the command line.
    missing = f"sdbtest_{os.getpid()}_{worker_id()}_pw_missing"
    expect(ExitCode.BAD_INPUT, "cell", "add", "cell1", cell1, "--api-url", api, "--debug")
    for url in (dbs.cells["cell1"].set(port=1), dbs.cells["cell1"].set(database=missing)):
        for extra in ([], ["--debug"]):
            expect(
                ExitCode.OPERATIONAL, "cell", "add", "cell9", text(url), "--api-url", api, *extra
            )
            expect(ExitCode.OPERATIONAL, "status", "--api-url", text(url), *extra)
            expect(ExitCode.OPERATIONAL, "db", "sync", "--api-url", text(url), *extra)
    if dbs.backend == "mysql":
        wrong = text(dbs.api.set(password=PASSWORD.replace("@", "-")))
        denied = expect(ExitCode.OPERATIONAL, "status", "--api-url", wrong)
        assert "Access denied" in denied.err

    # What was stored is the full URL: only the masking kept it out of sight.
    stored = [row[2] for row in _cell_rows(dbs.api)]
    assert all(part in url for url in stored for part in SECRET_PARTS)
    _assert_no_secret(runs)


def _bad_urls_with_password() -> list[str]:
    user, escaped = "nova", ESCAPED
    return [
        f"foo://{user}:{escaped}@127.0.0.1/nova",
        f"oracle://{user}:{escaped}@127.0.0.1/nova",
        f"mysql+pymysql://{user}:{escaped}@/nova",
        f"mysql+pymysql://{user}:{escaped}@127.0.0.1",
        f"postgresql://{user}:{escaped}@127.0.0.1:port/nova",
        f"mysql:/{user}:{escaped}@127.0.0.1/nova",
        f"mysql+nodriver://{user}:{escaped}@127.0.0.1/nova",
        # As typed by someone who forgot to escape it: "@" and a space in the password.
        f"mysql+pymysql://{user}:{PASSWORD}@127.0.0.1/nova",
        f"postgresql://{user}:{PASSWORD}@/nova",
    ]


def test_passwords_never_shown_on_error_paths(cli: Cli, tmp_path: Path) -> None:
    api = f"sqlite:///{tmp_path / 'api.sqlite'}"
    cli.ok("db", "sync", "--api-url", api)
    runs: list[Run] = []
    closed = [
        f"mysql+pymysql://nova:{ESCAPED}@127.0.0.1:1/nova",
        f"postgresql://nova:{ESCAPED}@127.0.0.1:1/nova",
        f"postgresql://nova@127.0.0.1:1/nova?password={ESCAPED}",
    ]
    for extra in ([], ["--debug"], ["--format", "json"]):
        for url in _bad_urls_with_password():
            for argv in (
                ["cell", "add", "c1", url, "--api-url", api],
                ["status", "--api-url", url],
            ):
                runs.append(run := cli(*argv, *extra))
                assert run.code == ExitCode.BAD_INPUT, (argv, run.err)
                assert "invalid database URL" in run.err
        for url in closed:
            for argv in (
                ["cell", "add", "c1", url, "--api-url", api],
                ["status", "--api-url", url],
                ["db", "sync", "--api-url", url],
            ):
                runs.append(run := cli(*argv, *extra))
                assert run.code == ExitCode.OPERATIONAL, (argv, run.err)
                assert "unreachable" in run.err
                assert ("Traceback" in run.err) == ("--debug" in extra)
    _assert_no_secret(runs)
    assert cli.ok("cell", "list", "--api-url", api, "--format", "json").json() == []


def test_debug_traceback_of_an_unexpected_error_is_masked(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = f"sqlite:///{tmp_path / 'api.sqlite'}"
    cli.ok("db", "sync", "--api-url", api)
    url = f"mysql+pymysql://nova:{ESCAPED}@127.0.0.1/nova"

    def fail(*_args: object, **_kwargs: object) -> None:
        # What a driver reports when an insert fails: the statement and its parameters.
        raise sa.exc.IntegrityError(
            "INSERT INTO cell_mappings (name, database_connection) VALUES (?, ?)",
            ("c1", url),
            Exception("UNIQUE constraint failed: cell_mappings.uuid"),
        )

    monkeypatch.setattr(commands, "add_cell", fail)
    plain = cli("cell", "add", "c1", url, "--api-url", api)
    assert plain.code == ExitCode.OPERATIONAL
    assert plain.only_error() == (
        "unexpected IntegrityError: (builtins.Exception) "
        "UNIQUE constraint failed: cell_mappings.uuid"
    )
    debug = cli("cell", "add", "c1", url, "--api-url", api, "--debug")
    assert debug.code == ExitCode.OPERATIONAL
    assert "Traceback" in debug.err
    assert "[parameters: ('c1', 'mysql+pymysql://nova:***@127.0.0.1/nova')]" in debug.err
    assert debug.err.splitlines()[-1] == "shadowdb: error: " + plain.only_error()
    _assert_no_secret([plain, debug])


# --------------------------------------------------------------------------- real processes


def _entry_points() -> dict[str, list[str]]:
    script = Path(sys.executable).parent / "shadowdb"
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    return {"script": [str(script)], "module": [sys.executable, "-m", "shadowdb"]}


def _process_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith("SHADOWDB_") and k != "FORCE_COLOR"
    }


def _spawn(cmd: list[str], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *argv], cwd=cwd, env=_process_env(), capture_output=True, text=True, timeout=120
    )


def test_console_script_and_python_m_run_shadowdb(tmp_path: Path) -> None:
    entry = _entry_points()
    done = _spawn(entry["script"], "db", "sync", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-1] == "phase: cell-only (initial)"
    assert (tmp_path / "shadowdb-data" / "api.sqlite").is_file()

    added = _spawn(
        entry["module"],
        "cell",
        "add",
        "c1",
        "sqlite:///c1.sqlite",
        "--create",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert (added.returncode, added.stderr) == (0, "")
    info = json.loads(added.stdout)
    assert info["url"] == f"sqlite+pysqlite:///{(tmp_path / 'c1.sqlite').resolve()}"
    assert info["default"] is True

    synced = _spawn(entry["module"], "db", "sync", cwd=tmp_path)
    assert synced.returncode == 0
    assert (
        f"cell c1: upgraded empty -> {schema.head_revision('cell')}" in synced.stdout.splitlines()
    )
    status = _spawn(entry["script"], "status", "--format", "json", cwd=tmp_path)
    assert status.returncode == 0
    assert json.loads(status.stdout)["cells"] == [info]
    assert json.loads(status.stdout)["phase"] == "cell-only"

    usage = _spawn(entry["script"], "frobnicate", cwd=tmp_path)
    assert usage.returncode == ExitCode.BAD_INPUT
    assert usage.stdout == ""
    assert re.fullmatch(r"shadowdb: error: .*invalid choice: 'frobnicate'.*\n", usage.stderr)
    missing = _spawn(
        entry["module"], "status", "--api-url", "sqlite:///elsewhere/api.sqlite", cwd=tmp_path
    )
    assert missing.returncode == ExitCode.OPERATIONAL
    assert missing.stdout == ""
    assert re.fullmatch(r"shadowdb: error: .*no such file.*db sync.*\n", missing.stderr)
    assert not (tmp_path / "elsewhere").exists()


def test_console_script_reads_every_backend(topology: Topology, tmp_path: Path) -> None:
    cmd = _entry_points()["script"]
    done = _spawn(
        cmd, "status", "--format", "json", "--api-url", topology.api_url_text, cwd=tmp_path
    )
    assert (done.returncode, done.stderr) == (0, "")
    status = json.loads(done.stdout)
    assert (status["phase"], status["epoch"]) == ("cell-only", 0)
    assert [(c["name"], c["default"]) for c in status["cells"]] == [
        ("cell1", True),
        ("cell2", False),
    ]
    assert [c["url"] for c in status["cells"]] == [
        _shown(topology.cell_urls["cell1"]),
        _shown(topology.cell_urls["cell2"]),
    ]
