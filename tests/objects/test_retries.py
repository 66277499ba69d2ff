"""Safe retries: a write the database rolled back whole runs again; one that may have
committed never does.

The errors are the servers' own, raised by the servers: the statement a write sends is
swapped, once, for one that makes the server raise the error class under test (MariaDB
``SIGNAL ... MYSQL_ERRNO``, PostgreSQL ``RAISE ... ERRCODE``), so the real driver
reports the real code. Each class is retried with a logged backoff; a commit whose
connection dies is reported and not repeated; an error after the first half committed is
journaled, never retried by the write.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from shadowdb import models, objects
from shadowdb.backfill import backfill
from shadowdb.databases import Databases
from shadowdb.errors import CommitUncertain, DatabaseUnreachable, TransientError
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.diff import seed_pair
from tests.support.helpers import live_members, new_uuid, put_in_phase
from tests.support.proxy import Proxy

_RAISE = {
    "1213": "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, "
    "MESSAGE_TEXT = 'Deadlock found when trying to get lock; try restarting transaction'",
    "1205": "SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1205, "
    "MESSAGE_TEXT = 'Lock wait timeout exceeded; try restarting transaction'",
    "40P01": "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$",
    "40001": "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access due to concurrent "
    "update' USING ERRCODE = '40001'; END $$",
}

CLASSES = [
    pytest.param("mysql", "1213", marks=pytest.mark.mysql, id="mariadb-deadlock"),
    pytest.param("mysql", "1205", marks=pytest.mark.mysql, id="mariadb-lock-wait-timeout"),
    pytest.param("postgresql", "40P01", marks=pytest.mark.postgresql, id="postgresql-deadlock"),
    pytest.param(
        "postgresql", "40001", marks=pytest.mark.postgresql, id="postgresql-serialization"
    ),
]
SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]
_MEMBER_INSERT = "INSERT INTO instance_group_member"


@contextmanager
def server_raises(engine: sa.Engine, code: str, *, times: int = 1) -> Iterator[list[str]]:
    """Make the server raise ``code`` for the next ``times`` member inserts on ``engine``.

    Yields the member inserts actually sent (the swapped ones included), in order.
    """
    sent: list[str] = []
    left = [times]

    def swap(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> Any:
        if not statement.startswith(_MEMBER_INSERT):
            return statement, params
        sent.append(statement)
        if left[0] > 0:
            left[0] -= 1
            return _RAISE[code], {} if isinstance(params, dict) else ()
        return statement, params

    event.listen(engine, "before_cursor_execute", swap, retval=True)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", swap)


@pytest.fixture
def retried(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The ``write_retried`` events the object layer logs."""
    seen: list[dict[str, Any]] = []
    real = objects.log.warning

    def spy(event_name: str, **kw: Any) -> Any:
        if event_name == "write_retried":
            seen.append(kw)
        return real(event_name, **kw)

    monkeypatch.setattr(objects.log, "warning", spy, raising=False)
    return seen


def _group_in_cell_reads(topology: Topology) -> tuple[str, RequestContext]:
    """A migrated group in ``dual-write-cell-reads`` (the cell writes first), a caller."""
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    return seed_pair(topology), RequestContext(topology.dbs, "p1", "u1")


@pytest.mark.parametrize(("backend", "code"), CLASSES, indirect=["backend"])
def test_a_write_rolled_back_whole_runs_again_with_backoff(
    topology: Topology, code: str, retried: list[dict[str, Any]]
) -> None:
    dbs = topology.dbs
    uuid, ctx = _group_in_cell_reads(topology)
    member = new_uuid()
    with server_raises(topology.cell_engine("cell1"), code, times=2) as sent:
        InstanceGroup.add_members(ctx, uuid, [member])
    assert len(sent) == 3  # twice refused by the server, then written
    assert [(r["code"], r["attempt"]) for r in retried] == [(code, 1), (code, 2)]
    assert retried[1]["pause_ms"] >= retried[0]["pause_ms"] // 3  # backing off
    assert live_members(topology.cell_engine("cell1"), "cell", uuid).count(member) == 1
    assert live_members(dbs.api, "api", uuid).count(member) == 1


@pytest.mark.parametrize(("backend", "code"), CLASSES[:1] + CLASSES[2:3], indirect=["backend"])
def test_retries_are_bounded(topology: Topology, code: str, retried: list[dict[str, Any]]) -> None:
    dbs = topology.dbs
    uuid, ctx = _group_in_cell_reads(topology)
    cell1 = topology.cell_engine("cell1")
    with server_raises(cell1, code, times=100) as sent, pytest.raises(TransientError) as raised:
        InstanceGroup.add_members(ctx, uuid, [new_uuid()])
    assert raised.value.code == code
    assert len(sent) == objects._TRANSIENT_RETRIES + 1 == len(retried) + 1
    assert live_members(dbs.api, "api", uuid) == live_members(
        topology.cell_engine("cell1"), "cell", uuid
    )


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_commit_that_may_have_gone_through_is_never_run_again(
    topology: Topology,
    api_behind_proxy: tuple[Databases, Proxy],
    retried: list[dict[str, Any]],
) -> None:
    """The connection dies as the API half commits: the caller hears so, once."""
    service, proxy = api_behind_proxy
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    uuid = seed_pair(topology)
    ctx = RequestContext(service, "p1", "u1")
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(_MEMBER_INSERT):
            sent.append(statement)

    def cut_before_commit(conn: Any) -> None:
        if sent:
            proxy.cut()

    event.listen(service.api, "before_cursor_execute", count)
    event.listen(service.api, "commit", cut_before_commit)
    try:
        with pytest.raises(DatabaseUnreachable) as raised:
            InstanceGroup.add_members(ctx, uuid, [new_uuid()])
    finally:
        event.remove(service.api, "commit", cut_before_commit)
        event.remove(service.api, "before_cursor_execute", count)
        proxy.restore()
    assert len(sent) == 1 and retried == []
    assert isinstance(raised.value, CommitUncertain)


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_an_error_after_the_first_commit_is_journaled_not_rerun(
    topology: Topology, server: Any, retried: list[dict[str, Any]]
) -> None:
    dbs = topology.dbs
    uuid, ctx = _group_in_cell_reads(topology)
    member = new_uuid()
    code = "1213" if server.backend == "mysql" else "40P01"
    with server_raises(dbs.api, code, times=10) as sent:
        InstanceGroup.add_members(ctx, uuid, [member])  # acknowledged: the cell is the authority
    assert retried == []
    assert len(sent) >= 1
    assert live_members(topology.cell_engine("cell1"), "cell", uuid).count(member) == 1
    with topology.cell_engine("cell1").connect() as conn:
        journal = conn.scalar(sa.select(sa.func.count()).select_from(models.cell_journal))
    assert journal == 1  # the API copy lags, on record
    backfill(dbs, sleep=lambda _s: None)
    assert live_members(dbs.api, "api", uuid).count(member) == 1


def _backend_id(dbapi_connection: Any) -> int:
    if hasattr(dbapi_connection, "thread_id"):  # PyMySQL
        return int(dbapi_connection.thread_id())
    return int(dbapi_connection.info.backend_pid)  # psycopg


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_connection_killed_before_the_commit_runs_the_write_again(
    topology: Topology, server: Any, retried: list[dict[str, Any]]
) -> None:
    """The server kills the writer's connection mid-transaction: nothing committed."""
    dbs = topology.dbs
    uuid, ctx = _group_in_cell_reads(topology)
    member = new_uuid()
    cell1 = topology.cell_engine("cell1")
    killed: list[int] = []

    def kill_first(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(_MEMBER_INSERT) and not killed:
            ident = _backend_id(conn.connection.dbapi_connection)
            killed.append(ident)
            server.kill_connection(ident)

    event.listen(cell1, "before_cursor_execute", kill_first)
    try:
        InstanceGroup.add_members(ctx, uuid, [member])
    finally:
        event.remove(cell1, "before_cursor_execute", kill_first)
    assert len(killed) == 1
    assert [r["code"] for r in retried] == ["connection-lost"]
    assert live_members(cell1, "cell", uuid).count(member) == 1
    assert live_members(dbs.api, "api", uuid).count(member) == 1
