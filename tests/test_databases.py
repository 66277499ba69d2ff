"""Cells as Nova leaves them: cell0 mapped first, the default cell, ``cell set-default``.

``nova-manage cell_v2 map_cell0`` runs before any other cell is mapped, so cell0 (uuid
``00000000-0000-0000-0000-000000000000``) is the first row of ``cell_mappings``. Nova's
services never look for groups there: shadowdb never writes one into it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from shadowdb import cli, commands, models
from shadowdb.backfill import backfill
from shadowdb.cleanup import cleanup
from shadowdb.databases import Databases, connect, reader
from shadowdb.errors import GuardRefused, InvalidInput, NoDefaultCell, UnknownCell
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import CELL
from shadowdb.state import Phase, read_state
from tests.conftest import FreshDatabases, Topology
from tests.support.backends import Server, worker_id
from tests.support.helpers import (
    cutover_through,
    map_cell0,
    new_uuid,
    put_in_phase,
    seed_cell_group,
)


def _text(url: sa.URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture
def nova_like(fresh: FreshDatabases) -> Iterator[tuple[Databases, FreshDatabases]]:
    """cell0 mapped first (on the ``cell2`` database), then ``cell1``; both synced."""
    dbs = connect(_text(fresh.api_url), create=True)
    try:
        commands.sync_schema(dbs)
        map_cell0(dbs, fresh.cell_urls["cell2"])
        commands.add_cell(dbs, "cell1", _text(fresh.cell_urls["cell1"]))
        commands.sync_schema(dbs)
        yield dbs, fresh
    finally:
        dbs.dispose()


def _groups_in(url: sa.URL) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            g = CELL.groups
            return list(conn.scalars(sa.select(g.c.uuid).where(g.c.deleted == 0)))
    finally:
        engine.dispose()


def test_cell0_is_never_the_default_and_never_receives_a_group(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    dbs, fresh = nova_like
    listed = commands.list_cells(dbs)
    assert [(c.name, c.default) for c in listed] == [("cell0", False), ("cell1", True)]
    ctx = RequestContext(dbs, "p1", "u1")
    made = {}
    for phase in (
        Phase.CELL_ONLY,
        Phase.DUAL_WRITE_CELL_READS,
        Phase.DUAL_WRITE_API_READS,
    ):
        if phase is not Phase.CELL_ONLY:
            put_in_phase(dbs, phase)
        g = InstanceGroup(ctx, name=f"new in {phase.value}", user_id="u1", project_id="p1")
        g.create()
        made[phase] = g.uuid
    assert sorted(_groups_in(fresh.cell_urls["cell1"])) == sorted(made.values())
    assert _groups_in(fresh.cell_urls["cell2"]) == []  # cell0


def test_several_cells_and_none_chosen_refuse_a_create_until_set_default(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    dbs, fresh = nova_like
    extra = fresh.server.create(f"{fresh.cell_urls['cell1'].database}_x".rsplit("/", 1)[-1])
    try:
        commands.add_cell(dbs, "cell3", _text(extra))
        commands.sync_schema(dbs)
        assert [c.default for c in commands.list_cells(dbs)] == [False, False, False]
        ctx = RequestContext(dbs, "p1", "u1")
        g = InstanceGroup(ctx, name="where?", user_id="u1", project_id="p1")
        with pytest.raises(NoDefaultCell, match=r"cell set-default NAME") as err:
            g.create()
        assert "cell1, cell3" in str(err.value)
        assert _groups_in(fresh.cell_urls["cell1"]) == [] and _groups_in(extra) == []
        info = commands.set_default_cell(dbs, "cell3")
        assert info.default and info.name == "cell3"
        dbs.phases.invalidate()
        g = InstanceGroup(ctx, name="here", user_id="u1", project_id="p1")
        g.create()
        assert _groups_in(extra) == [g.uuid]
        commands.set_default_cell(dbs, "cell1")
        dbs.phases.invalidate()
        h = InstanceGroup(ctx, name="there", user_id="u1", project_id="p1")
        h.create()
        assert _groups_in(fresh.cell_urls["cell1"]) == [h.uuid]
    finally:
        dbs.dispose()
        fresh.server.drop(str(extra.database))


def _default_uuid(dbs: Databases) -> str | None:
    with reader(dbs.api) as conn:
        return read_state(conn).default_cell_uuid


def test_set_default_refuses_cell0_and_unknown_cells_writing_nothing(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    dbs, fresh = nova_like
    with pytest.raises(InvalidInput, match="cell0"):
        commands.set_default_cell(dbs, "cell0")
    with pytest.raises(UnknownCell):
        commands.set_default_cell(dbs, "nowhere")
    assert _default_uuid(dbs) is None
    api = _text(fresh.api_url)
    for name in ("cell0", "nowhere"):
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["cell", "set-default", name, "--api-url", api], stdout=out, stderr=err)
        assert code == 127, err.getvalue()
        assert err.getvalue().count("\n") == 1 and name in err.getvalue()
        assert out.getvalue() == ""
    assert _default_uuid(dbs) is None
    out = io.StringIO()
    code = cli.main(
        ["cell", "set-default", "cell1", "--api-url", api, "--format", "json"],
        stdout=out,
        stderr=io.StringIO(),
    )
    assert code == 0
    shown = json.loads(out.getvalue())
    assert (shown["name"], shown["default"]) == ("cell1", True)
    assert _default_uuid(dbs) == dbs.cell("cell1").uuid


# --------------------------------------------------------------------------- cell add refusals


def _mappings(dbs: Databases) -> list[tuple[str, str]]:
    with dbs.api.connect() as conn:
        t = models.api_cell_mappings
        return [tuple(r) for r in conn.execute(sa.select(t.c.name, t.c.database_connection))]


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _same_database_spelled_otherwise(url: sa.URL) -> str:
    """Another URL text for the same database: the host by name, or a detour in the path."""
    if url.get_backend_name() == "sqlite":
        path = str(url.database)
        parent, _, leaf = path.rpartition("/")
        return f"sqlite:///{parent}/./{leaf}"
    return _text(url.set(host="localhost"))


def test_cell_add_refuses_the_api_database_and_one_registered_twice(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    dbs, fresh = nova_like
    api = _text(fresh.api_url)
    before = _mappings(dbs)
    code, out, err = _cli("cell", "add", "api-again", api, "--api-url", api)
    assert (code, out) == (127, "")
    assert "that is the API database" in err and err.count("\n") == 1
    twice = _same_database_spelled_otherwise(fresh.cell_urls["cell1"])
    code, out, err = _cli("cell", "add", "cell1-again", twice, "--api-url", api)
    assert (code, out) == (127, "")
    assert "already registered as cell cell1" in err and err.count("\n") == 1
    assert _mappings(dbs) == before


def test_cell_add_stores_the_url_as_given(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    dbs, fresh = nova_like
    extra = fresh.server.create(f"{fresh.cell_urls['cell1'].database}_g".rsplit("/", 1)[-1])
    try:
        given = _text(extra)
        if extra.get_backend_name() == "mysql":
            given = given.replace("mysql+pymysql://", "mysql://", 1)  # Nova's own spelling
        commands.add_cell(dbs, "given", given)
        assert ("given", given) in _mappings(dbs)
    finally:
        dbs.dispose()
        fresh.server.drop(str(extra.database))


@pytest.mark.sqlite
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_missing_sqlite_file_is_never_created_except_by_cell_add_create(
    nova_like: tuple[Databases, FreshDatabases], tmp_path: Path
) -> None:
    dbs, fresh = nova_like
    api = _text(fresh.api_url)
    missing = tmp_path / "cell9.sqlite"
    before = _mappings(dbs)
    code, out, err = _cli("cell", "add", "cell9", f"sqlite:///{missing}", "--api-url", api)
    assert (code, out) == (2, "")
    assert "no such file" in err and "--create" in err and err.count("\n") == 1
    assert not missing.exists() and _mappings(dbs) == before
    code, out, err = _cli(
        "cell", "add", "cell9", f"sqlite:///{missing}", "--create", "--api-url", api
    )
    assert code == 0, err
    assert missing.exists()
    # A registered cell whose file has gone: an error naming it, never an empty new file.
    cell1 = Path(str(fresh.cell_urls["cell1"].database))
    cell1.unlink()
    code, out, err = _cli("db", "sync", "--api-url", api)
    assert code == 2 and "cell cell1" in err, err
    assert not cell1.exists()


# --------------------------------------------------------------------------- cell remove


def test_cell_remove_deletes_only_a_mapping_that_holds_nothing(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    dbs, fresh = nova_like
    api = _text(fresh.api_url)
    extra = fresh.server.create(f"{fresh.cell_urls['cell1'].database}_r".rsplit("/", 1)[-1])
    try:
        commands.add_cell(dbs, "mistake", _text(extra))
        commands.sync_schema(dbs)
        commands.set_default_cell(dbs, "cell1")
        before = _mappings(dbs)
        # cell1 holds a group, and is the default: refused, exit 3, nothing written.
        InstanceGroup(
            RequestContext(dbs, "p1", "u1"), name="g", user_id="u1", project_id="p1"
        ).create()
        code, out, err = _cli("cell", "remove", "cell1", "--api-url", api)
        assert (code, out) == (3, "")
        assert "1 live group" in err and "default cell" in err and err.count("\n") == 1
        code, _out, err = _cli("cell", "remove", "nowhere", "--api-url", api)
        assert code == 127 and "nowhere" in err
        assert _mappings(dbs) == before
        code, out, err = _cli("cell", "remove", "mistake", "--api-url", api)
        assert code == 0, err
        assert [name for name, _url in _mappings(dbs)] == ["cell0", "cell1"]
    finally:
        dbs.dispose()
        fresh.server.drop(str(extra.database))


def test_cell_remove_deletes_the_mapping_of_a_database_never_synced(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    # The runbook's slip: `cell add --create` to a new database, then `cell remove` before
    # any `db sync`: the database holds no table at all, so it holds nothing.
    dbs, fresh = nova_like
    api = _text(fresh.api_url)
    extra = fresh.server.create(f"{fresh.cell_urls['cell1'].database}_u".rsplit("/", 1)[-1])
    try:
        commands.add_cell(dbs, "cell3", _text(extra))
        with reader(dbs.cell("cell3").engine, "cell3") as conn:
            assert not sa.inspect(conn).has_table("instance_groups")
        code, _out, err = _cli("cell", "remove", "cell3", "--api-url", api)
        assert code == 0, err
        assert "cell3" not in [name for name, _url in _mappings(dbs)]
    finally:
        dbs.dispose()
        fresh.server.drop(str(extra.database))


def test_errors_about_a_cell_never_synced_name_it_and_db_sync(
    nova_like: tuple[Databases, FreshDatabases],
) -> None:
    dbs, fresh = nova_like
    api = _text(fresh.api_url)
    commands.set_default_cell(dbs, "cell1")
    commands.set_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    extra = fresh.server.create(f"{fresh.cell_urls['cell1'].database}_n".rsplit("/", 1)[-1])
    try:
        commands.add_cell(dbs, "cell3", _text(extra))
        code, out, err = _cli("diff-report", "--cell", "cell3", "--api-url", api)
        assert code == 2 and out == "", err
        assert "cell cell3" in err and "shadowdb db sync" in err, err
        code, out, err = _cli("phase", "set", "dual-write-api-reads", "--dry-run", "--api-url", api)
        assert code == 3, err
        assert "cell cell3 not checked: it is not synced (run `shadowdb db sync`)" in err
        assert "API database" not in err and "no such table" not in err, err
    finally:
        dbs.dispose()
        fresh.server.drop(str(extra.database))


def test_every_phase_change_of_a_deployment_without_cells_is_refused(
    fresh: FreshDatabases,
) -> None:
    api = _text(fresh.api_url)
    with connect(api, create=True) as dbs:
        commands.sync_schema(dbs)
        for force in ((), ("--force",)):
            code, out, err = _cli("phase", "set", "dual-write-cell-reads", *force, "--api-url", api)
            assert (code, out) == (3, ""), err
            assert "no cell besides cell0 is registered" in err
        map_cell0(dbs, fresh.cell_urls["cell2"])  # cell0 alone is not a deployment
        code, _out, err = _cli("phase", "set", "dual-write-cell-reads", "--api-url", api)
        assert code == 3 and "no cell besides cell0" in err
        with reader(dbs.api) as conn:
            assert read_state(conn).phase is Phase.CELL_ONLY


# --------------------------------------------------------------------------- late cells


@pytest.fixture
def late_cell(server: Server, tmp_path: Path) -> Iterator[sa.URL]:
    """An empty database for a cell registered after the cutover started."""
    if server.backend == "sqlite":
        server = Server("sqlite", folder=tmp_path)
    name = f"sdbtest_late_{os.getpid()}_{worker_id()}"
    url = server.create(name)
    yield url
    server.drop(name)


def test_a_cell_registered_in_api_only_is_copied_never_retired(
    topology: Topology, late_cell: sa.URL
) -> None:
    """Its groups are a backlog every guard, the diff and cleanup see, until copied."""
    dbs = topology.dbs
    early = seed_cell_group(topology.cell_engine("cell1"), name="early")
    cutover_through(dbs)
    commands.add_cell(dbs, "late", _text(late_cell))
    commands.sync_schema(dbs)
    late = seed_cell_group(dbs.cell("late").engine, name="forgotten", members=[new_uuid()])
    health = {h.name: h for h in commands.status(dbs).health}
    assert (health["late"].backlog, health["cell1"].backlog) == (1, 0)
    # The diff sees it, trusts the only copy there is, and says how to copy it.
    report = commands.diff_report(dbs, repair=True)
    (finding,) = report.findings
    assert (finding.key, finding.kind.value, finding.authoritative) == (
        late,
        "missing-in-api",
        "cell",
    )
    assert "never copied there" in finding.detail
    assert finding.repair is not None and "phase set dual-write-api-reads" in finding.repair
    assert report.repaired == 0
    with pytest.raises(GuardRefused, match="no pending API journal entry explains"):
        cleanup(dbs)
    # Back to the phase that copies, where it is read from its cell meanwhile.
    commands.set_phase(dbs, "dual-write-api-reads")
    ctx = RequestContext(dbs, "p1", "u1")
    assert InstanceGroup.get_by_uuid(ctx, late).name == "forgotten"
    with pytest.raises(
        GuardRefused, match=r"1 live cell group not in the API database \(late: 1\)"
    ):
        commands.set_phase(dbs, "api-only")
    backfill(dbs, sleep=lambda _s: None)
    assert commands.diff_report(dbs).clean
    commands.set_phase(dbs, "api-only")
    result = cleanup(dbs)
    assert result.kept == 0
    dbs.phases.invalidate()
    for uuid, name in ((early, "early"), (late, "forgotten")):
        assert InstanceGroup.get_by_uuid(ctx, uuid).name == name
    with reader(dbs.cell("late").engine) as conn:
        assert CELL.uuids(conn) == set()  # its copy retired, after it was copied
    assert [(h.name, h.backlog, h.journal) for h in commands.status(dbs).health] == [
        ("cell1", 0, 0),
        ("cell2", 0, 0),
        ("late", 0, 0),
    ]
