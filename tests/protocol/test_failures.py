"""The protocol's known failures, each attacked at its interleaving point (issue 10).

Every test names the failure it reproduces. None sleeps to make its interleaving
happen: the stale process, the cut-off process, the killed connection, the lagging
cell and the rollback are set up deterministically, then the write is attempted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import cli, commands, diff, models, signals
from shadowdb import switcher as switcher_module
from shadowdb.backfill import BatchStep, backfill
from shadowdb.cleanup import cleanup
from shadowdb.databases import Databases, connect, reader
from shadowdb.errors import (
    DatabaseUnreachable,
    GroupNotFound,
    GuardRefused,
    JournalConflict,
    OperationalError,
)
from shadowdb.journals import OUTBOX, drain_journals
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from shadowdb.switcher import Switcher
from tests.conftest import Topology, _db_name
from tests.protocol.test_faults import SERVERS
from tests.support.backends import Server
from tests.support.helpers import group_state, put_in_phase, seed_api_group, seed_cell_group
from tests.support.proxy import Proxy

C, CR, AR, A = (
    Phase.CELL_ONLY,
    Phase.DUAL_WRITE_CELL_READS,
    Phase.DUAL_WRITE_API_READS,
    Phase.API_ONLY,
)


def migrated(topology: Topology, name: str = "g") -> str:
    """A group level in cell1 and in the API database."""
    uuid = seed_cell_group(topology.cell_engine("cell1"), name=name, policies=("affinity",))
    seed_api_group(topology.dbs.api, uuid=uuid, name=name, policies=("affinity",))
    return uuid


def name_of(engine: sa.Engine, side: str, uuid: str) -> str | None:
    state = group_state(engine, side, uuid)
    return None if state is None else str(state[0])


def ctx_of(dbs: Databases) -> RequestContext:
    return RequestContext(dbs, "p1", "u1")


@pytest.fixture
def stale(topology: Topology) -> Iterator[Databases]:
    """A second service process whose phase cache lives for a minute."""
    slow = dataclasses.replace(topology.settings, phase_ttl=60.0)
    dbs = connect(topology.api_url_text, settings=slow)
    try:
        yield dbs
    finally:
        dbs.dispose()


# --------------------------------------------------------------------------- the fence


def test_f11_a_longer_phase_ttl_is_stopped_by_the_cell_it_writes(
    topology: Topology, stale: Databases
) -> None:
    group = migrated(topology)
    assert stale.phases.get().phase is C  # cached for a minute
    put_in_phase(topology.dbs, CR)
    put_in_phase(topology.dbs, AR)
    g = InstanceGroup.get_by_uuid(ctx_of(stale), group)
    g.name = "renamed"
    g.save()  # planned as cell-only; the cell's phase row says dual-write-api-reads
    assert name_of(topology.dbs.api, "api", group) == "renamed"
    assert name_of(topology.cell_engine("cell1"), "cell", group) == "renamed"
    assert stale.phases.get().phase is AR  # learnt from the cell, under its lock


def _kill_connections(topology: Topology) -> int:
    """Kill, server side, every connection to the API database but this one."""
    name = topology.api_url.database
    admin = topology.dbs.api
    with admin.connect() as conn:
        if topology.backend == "mysql":
            ids = conn.scalars(
                sa.text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = :db AND id <> CONNECTION_ID()"
                ),
                {"db": name},
            ).all()
            for pid in ids:
                conn.execute(sa.text(f"KILL {int(pid)}"))
            return len(ids)
        killed = conn.scalars(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": name},
        ).all()
        return len(killed)


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f3_killed_idle_connections_do_not_let_a_stale_phase_write(topology: Topology) -> None:
    group = migrated(topology)
    quick = dataclasses.replace(topology.settings, phase_ttl=0.0)
    with connect(topology.api_url_text, settings=quick) as service:
        ctx = ctx_of(service)
        assert InstanceGroup.get_by_uuid(ctx, group).name == "g"  # pools warm, cell-only
        put_in_phase(topology.dbs, CR)
        put_in_phase(topology.dbs, AR)
        assert _kill_connections(topology) >= 1
        g = InstanceGroup(ctx, uuid=group)
        g.obj_reset_changes()
        g.name = "renamed"
        g.save()
    assert name_of(topology.dbs.api, "api", group) == "renamed"
    assert name_of(topology.cell_engine("cell1"), "cell", group) == "renamed"


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f4_a_process_cut_off_from_the_api_database_cannot_write_a_moved_phase(
    topology: Topology, api_behind_proxy: tuple[Databases, Proxy]
) -> None:
    cut_off, proxy = api_behind_proxy
    group = migrated(topology)
    assert cut_off.phases.get().phase is C
    assert len(cut_off.cells) == 2  # a running service knows its cells
    put_in_phase(topology.dbs, CR)
    put_in_phase(topology.dbs, AR)
    proxy.cut()
    try:
        g = InstanceGroup(ctx_of(cut_off), uuid=group)
        g.obj_reset_changes()
        g.name = "lost?"
        with pytest.raises(DatabaseUnreachable):
            g.save()  # the cell names dual-write-api-reads: the API write is required
    finally:
        proxy.restore()
    assert name_of(topology.dbs.api, "api", group) == "g"
    assert name_of(topology.cell_engine("cell1"), "cell", group) == "g"


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f4_cut_off_in_dual_write_cell_reads_the_write_is_journaled_not_lost(
    topology: Topology, api_behind_proxy: tuple[Databases, Proxy]
) -> None:
    cut_off, proxy = api_behind_proxy
    group = migrated(topology)
    assert cut_off.phases.get().phase is C
    assert len(cut_off.cells) == 2  # a running service knows its cells
    put_in_phase(topology.dbs, CR)
    proxy.cut()
    try:
        g = InstanceGroup(ctx_of(cut_off), uuid=group)
        g.obj_reset_changes()
        g.name = "renamed"
        g.save()  # acknowledged: the cell is the authority, the API copy journaled
    finally:
        proxy.restore()
    with reader(topology.cell_engine("cell1")) as conn:
        assert [e.group_uuid for e in CELL.journal_pending(conn)] == [group]
    assert drain_journals(topology.dbs).errors == ()
    assert name_of(topology.dbs.api, "api", group) == "renamed"


def test_f5_reverse_sync_stops_at_the_batch_after_a_rollback_to_cell_only(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, CR)
    put_in_phase(dbs, AR)
    renamed = migrated(topology, "before")
    for i in range(3):  # API copies the reverse sync has to bring to the cells
        seed_api_group(dbs.api, name=f"api{i}")
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_groups.update()
            .where(models.api_groups.c.uuid == renamed)
            .values(name="api-name")
        )
    created: list[str] = []

    def after_batch(_name: str, _step: BatchStep) -> None:
        if created:
            return
        put_in_phase(dbs, CR)
        put_in_phase(dbs, C)
        ctx = ctx_of(dbs)
        g = InstanceGroup(ctx, name="cell-only", user_id="u1", project_id="p1")
        g.create()
        created.append(g.uuid)
        h = InstanceGroup.get_by_uuid(ctx, renamed)
        h.name = "cell-only rename"
        h.save()

    result = backfill(dbs, reverse=True, batch_size=1, on_batch=after_batch)
    assert created, "the rollback happened after the first batch"
    assert sum(t.done for t in result.totals) == 1  # nothing after the rollback
    assert any("cell-only" in e for e in result.errors)
    cell1 = topology.cell_engine("cell1")
    assert name_of(cell1, "cell", created[0]) == "cell-only"
    assert name_of(cell1, "cell", renamed) == "cell-only rename"


# --------------------------------------------------------------------------- tombstones


def test_f1_a_group_destroyed_in_api_only_stays_deleted_after_the_rollback(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    group = migrated(topology)
    put_in_phase(dbs, CR)
    put_in_phase(dbs, AR)
    put_in_phase(dbs, A)
    InstanceGroup.get_by_uuid(ctx_of(dbs), group).destroy()
    put_in_phase(dbs, AR)  # the catch-up has not run: the cell copy is still live
    assert name_of(topology.cell_engine("cell1"), "cell", group) == "g"
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_uuid(ctx_of(dbs), group)
    assert group not in {g.uuid for g in InstanceGroupList.get_all(ctx_of(dbs))}
    with pytest.raises(GroupNotFound):
        InstanceGroup.add_members(ctx_of(dbs), group, ["00000000-0000-4000-8000-00000000000a"])
    assert group_state(dbs.api, "api", group) is None
    assert group_state(topology.cell_engine("cell1"), "cell", group) is None  # retired
    report = commands.diff_report(dbs)
    assert report.clean


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f2_a_destroy_during_a_cell_outage_stays_deleted_when_the_cell_is_back(
    topology: Topology, cell_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = cell_behind_proxy
    group = migrated(topology)
    put_in_phase(topology.dbs, CR)
    put_in_phase(topology.dbs, AR)
    ctx = ctx_of(dbs)
    g = InstanceGroup.get_by_uuid(ctx, group)
    proxy.cut()
    try:
        g.destroy()  # acknowledged: API delete, tombstone and journal entry
    finally:
        proxy.restore()
    with reader(topology.dbs.api) as conn:
        assert API.tombstoned(conn, [group]) == {group}
        entries = [e.id for e in API.journal_pending(conn) if e.group_uuid == group]
    assert entries
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_uuid(ctx, group)
    assert group not in {x.uuid for x in InstanceGroupList.get_all(ctx)}
    with pytest.raises(GroupNotFound):
        InstanceGroup.add_members(ctx, group, ["00000000-0000-4000-8000-00000000000b"])
    with reader(topology.dbs.api) as conn:
        still = [e.id for e in API.journal_pending(conn) if e.group_uuid == group]
    assert still == entries  # the destroy's entry is not another writer's to erase
    assert drain_journals(topology.dbs).errors == ()
    assert group_state(topology.cell_engine("cell1"), "cell", group) is None


# --------------------------------------------------------------------------- journals


def test_f8_a_group_journaled_on_both_sides_is_a_conflict_not_a_silent_win(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    group = migrated(topology)
    put_in_phase(dbs, CR)
    put_in_phase(dbs, AR)
    state = dbs.phases.fresh()
    cell1 = topology.cell_engine("cell1")
    with cell1.begin() as conn:
        conn.execute(
            models.cell_groups.update()
            .where(models.cell_groups.c.uuid == group)
            .values(name="cut-off writer")
        )
        CELL.journal_add(conn, group, state.epoch, "API unreachable")
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_groups.update()
            .where(models.api_groups.c.uuid == group)
            .values(name="outage writer")
        )
        API.journal_add(conn, group, state.epoch, "cell unreachable")
    seen: list[dict[str, Any]] = []

    def receiver(_sender: object, **kwargs: Any) -> None:
        seen.append(kwargs)

    with signals.divergence.connected_to(receiver), pytest.raises(JournalConflict):
        InstanceGroup.add_members(ctx_of(dbs), group, ["00000000-0000-4000-8000-00000000000c"])
    assert [s["kind"] for s in seen] == ["journal-conflict"]
    assert name_of(cell1, "cell", group) == "cut-off writer"
    assert name_of(dbs.api, "api", group) == "outage writer"
    assert drain_journals(dbs).conflicts == (group, group)


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f15_a_raising_receiver_neither_rolls_back_nor_fails_the_write(
    topology: Topology, api_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = api_behind_proxy
    group = migrated(topology)
    put_in_phase(topology.dbs, CR)

    def broken(_sender: object, **_kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    g = InstanceGroup.get_by_uuid(ctx_of(dbs), group)
    proxy.cut()
    try:
        with (
            signals.shadow_write_failed.connected_to(broken),
            signals.group_updated.connected_to(broken),
        ):
            g.name = "renamed"
            g.save()
    finally:
        proxy.restore()
    assert name_of(topology.cell_engine("cell1"), "cell", group) == "renamed"
    with reader(topology.cell_engine("cell1")) as conn:
        assert [e.group_uuid for e in CELL.journal_pending(conn)] == [group]


# --------------------------------------------------------------------------- cleanup


def test_f13_cleanup_never_retires_a_group_the_api_database_lacks(topology: Topology) -> None:
    dbs = topology.dbs
    migrated(topology)
    put_in_phase(dbs, CR)
    put_in_phase(dbs, AR)
    put_in_phase(dbs, A)
    assert commands.diff_report(dbs).clean
    stray = seed_cell_group(topology.cell_engine("cell2"), name="never migrated")
    report = commands.diff_report(dbs)
    assert not report.clean
    with pytest.raises(GuardRefused, match="no pending API journal entry explains"):
        cleanup(dbs)
    # Even with a clean newest report (the stray row written after it), it stays live.
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_diff_results.delete().where(models.api_diff_results.c.outcome != "clean")
        )
    result = cleanup(dbs)
    assert result.kept == 1
    assert name_of(topology.cell_engine("cell2"), "cell", stray) == "never migrated"


def test_f13_cleanup_refuses_a_report_that_missed_a_cell(topology: Topology) -> None:
    dbs = topology.dbs
    migrated(topology)
    put_in_phase(dbs, CR)
    put_in_phase(dbs, AR)
    put_in_phase(dbs, A)
    assert commands.diff_report(dbs).clean
    with dbs.api.begin() as conn:
        conn.execute(models.api_diff_results.update().values(cells=dbs.cells[0].uuid))
    with pytest.raises(GuardRefused, match="did not compare every registered cell"):
        cleanup(dbs)


# --------------------------------------------------------------------------- rollback


def test_f16_leaving_api_only_under_writes_passes_without_force(topology: Topology) -> None:
    dbs = topology.dbs
    groups = [migrated(topology, f"g{i}") for i in range(3)]
    put_in_phase(dbs, CR)
    put_in_phase(dbs, AR)
    put_in_phase(dbs, A)
    ctx = ctx_of(dbs)
    for i, group in enumerate(groups[:2]):  # api-only writes: the cells lag, journaled
        g = InstanceGroup.get_by_uuid(ctx, group)
        g.name = f"api-only {i}"
        g.save()
    InstanceGroup.get_by_uuid(ctx, groups[2]).destroy()
    report = commands.diff_report(dbs)
    assert report.total == 3 and all(f.journal_pending for f in report.findings)
    g = InstanceGroup.get_by_uuid(ctx, groups[0])
    g.name = "after the diff"
    g.save()  # also journaled (one entry per group)
    switched = Switcher(dbs).run(AR)  # no force
    assert switched.catch_up == ()
    cell1 = topology.cell_engine("cell1")
    assert name_of(cell1, "cell", groups[0]) == "after the diff"
    assert name_of(cell1, "cell", groups[1]) == "api-only 1"
    assert group_state(cell1, "cell", groups[2]) is None
    assert commands.diff_report(dbs).clean


# --------------------------------------------------------------------------- diff-report


def _kill_sql(backend: str, whom: str) -> list[str]:
    """Statements that kill, server side, this connection or every other of the topology."""
    if whom == "self":
        if backend == "mysql":
            return ["KILL CONNECTION_ID()"]
        return ["SELECT pg_terminate_backend(pg_backend_pid())"]
    # The topology's databases share a name up to their role (api, cell1, cell2).
    if backend == "mysql":
        return [
            "SELECT id FROM information_schema.processlist "
            "WHERE db LIKE CONCAT(SUBSTRING_INDEX(DATABASE(), '_', 3), '\\_%') "
            "AND id <> CONNECTION_ID()"
        ]
    return [
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname LIKE split_part(current_database(), '_', 1) || '\\_' "
        "|| split_part(current_database(), '_', 2) || '\\_' "
        "|| split_part(current_database(), '_', 3) || '\\_%' AND pid <> pg_backend_pid()"
    ]


@contextlib.contextmanager
def _connection_killed_mid_scan(
    backend: str, after: int, whom: str = "self"
) -> Iterator[list[str]]:
    """At the ``after``-th group read, kill its connection (or the others of its database).

    ``whom="others"`` kills every other connection of the topology: the idle ones in the
    pools, which the next checkout finds dead.
    """
    killed: list[str] = []
    seen = [0]

    def before(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if (
            killed
            or "instance_group" not in statement
            or not statement.lstrip().upper().startswith("SELECT")
        ):
            return
        seen[0] += 1
        if seen[0] < after:
            return
        killed.append(statement)
        with contextlib.suppress(Exception):
            for sql in _kill_sql(backend, whom):
                cursor.execute(sql)
            if backend == "mysql" and whom == "others":
                for (pid,) in cursor.fetchall():
                    cursor.execute(f"KILL {int(pid)}")

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before)
    try:
        yield killed
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", before)


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f12_diff_report_under_killed_connections_exits_2_and_is_recorded_incomplete(
    topology: Topology,
) -> None:
    """The snapshot connection killed by the server between two of its statements.

    An incomplete run, one line, exit 2 (never an unexpected error, never a clean run).
    """
    for i in range(30):
        migrated(topology, f"g{i}")
    put_in_phase(topology.dbs, CR)
    with (
        _connection_killed_mid_scan(topology.backend, after=4) as killed,
        pytest.raises(OperationalError),
    ):
        commands.diff_report(topology.dbs, chunk_size=1)
    assert killed
    with reader(topology.dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None and last.outcome == "incomplete"
    # And the command line says so in one line, exit 2.
    err = io.StringIO()
    argv = ["diff-report", "--api-url", topology.api_url_text]
    with _connection_killed_mid_scan(topology.backend, after=4) as killed:
        code = cli.main(argv, stdout=io.StringIO(), stderr=err)
    assert killed
    assert code == 2, err.getvalue()
    assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()
    assert "unexpected" not in err.getvalue()


# --------------------------------------------------------------------------- in flight

#: How long a step of an interleaving may take before the test gives up (not a timing
#: assumption of the test: the conditions waited for are states of the databases).
_PATIENCE = 30.0


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _lock_waits(backend: str, engine: sa.Engine, statement: str) -> int:
    """Sessions of ``engine``'s database waiting for a row lock in ``statement`` (LIKE).

    PostgreSQL names the wait. MariaDB does not always (a primary-key lookup waits in the
    optimizer, before InnoDB lists a transaction), so there a session counts if it is
    running ``statement``: these are single-row statements that only last while waiting.
    """
    with engine.connect() as conn:
        if backend == "mysql":
            query = (
                "SELECT COUNT(*) FROM information_schema.processlist "
                "WHERE db = :db AND command = 'Query' AND info LIKE :like "
                "AND id <> CONNECTION_ID()"
            )
        else:
            query = (
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = :db "
                "AND wait_event_type = 'Lock' AND query LIKE :like"
            )
        found = conn.scalar(sa.text(query), {"db": engine.url.database, "like": statement})
    return int(found or 0)


@contextlib.contextmanager
def _paused_before(
    engine: sa.Engine, prefix: str
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the first statement on ``engine`` starting with ``prefix`` until released."""
    reached, release = threading.Event(), threading.Event()

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if reached.is_set() or not statement.lstrip().upper().startswith(prefix):
            return
        reached.set()
        release.wait(_PATIENCE)

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield reached, release
    finally:
        release.set()
        sa.event.remove(engine, "before_cursor_execute", before)


class _Run(threading.Thread):
    """Run one call in a thread, keeping its result or exception."""

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as err:  # handed to the test
            self.error = err

    def outcome(self) -> object:
        self.join(_PATIENCE)
        assert not self.is_alive(), "the call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f6_an_api_journal_entry_of_a_write_in_flight_refuses_the_move_to_cell_reads(
    topology: Topology, cell_behind_proxy: tuple[Databases, Proxy]
) -> None:
    service, proxy = cell_behind_proxy
    group = migrated(topology)
    put_in_phase(topology.dbs, CR)
    put_in_phase(topology.dbs, AR)
    assert commands.diff_report(topology.dbs).clean
    switcher = Switcher(topology.dbs)
    steps = switcher.plan(CR)  # the preview: no entry yet
    g = InstanceGroup.get_by_uuid(ctx_of(service), group)
    proxy.cut()
    try:
        with _paused_before(service.api, "INSERT INTO SHADOWDB_JOURNAL") as (reached, release):
            g.name = "acknowledged"
            write = _Run(g.save)  # cell unreachable: API copy and its journal entry
            write.start()
            _until(reached.is_set, "the write to reach its journal entry")
            change = _Run(lambda: switcher.execute(steps))
            change.start()
            _until(
                lambda: _lock_waits(topology.backend, topology.dbs.api, "%shadowdb_state%") > 0,
                "phase set to wait for the writer's fence",
            )
            release.set()
            write.outcome()
            with pytest.raises(GuardRefused, match="API journal holds 1 entry"):
                change.outcome()
    finally:
        proxy.restore()
    assert topology.dbs.phases.fresh().phase is AR
    assert name_of(topology.dbs.api, "api", group) == "acknowledged"
    assert name_of(topology.cell_engine("cell1"), "cell", group) == "g"  # lags, journaled
    assert drain_journals(topology.dbs).errors == ()
    Switcher(topology.dbs).run(CR)
    assert InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group).name == "acknowledged"


def test_f7_a_diff_report_gates_only_the_epoch_it_ran_in(
    topology: Topology, stale: Databases
) -> None:
    dbs = topology.dbs
    group = migrated(topology)
    assert stale.phases.get().phase is C  # a cell-only cache, good for a minute
    Switcher(dbs).run(CR)
    # Run inside what used to be the drain wait: the move is recorded in every database
    # already, so the stale writer's rename is fenced into dual-write-cell-reads.
    report = commands.diff_report(dbs)
    assert report.clean
    with reader(dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None and last.epoch == dbs.phases.fresh().epoch
    g = InstanceGroup.get_by_uuid(ctx_of(stale), group)
    g.name = "stale writer"
    g.save()
    assert name_of(dbs.api, "api", group) == "stale writer"  # not lost to the API copy
    Switcher(dbs).run(AR)
    assert InstanceGroup.get_by_uuid(ctx_of(dbs), group).name == "stale writer"
    # A report from an earlier epoch never gates a later move.
    put_in_phase(dbs, CR)
    with pytest.raises(GuardRefused, match="the phase changed since the last diff-report"):
        Switcher(dbs).run(AR)


def test_f9_the_catch_up_levels_a_row_a_writer_inserted_first(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, CR)
    put_in_phase(dbs, AR)
    put_in_phase(dbs, A)
    ctx = ctx_of(dbs)
    g = InstanceGroup(ctx, name="made in api-only", user_id="u1", project_id="p1")
    g.create()  # the cells lack it: one API journal entry
    assert commands.diff_report(dbs).total == 1
    raced: list[str] = []

    def writer_first(_sender: object, **_kwargs: Any) -> None:
        # Between the record and the catch-up, a dual-write-api-reads writer inserts
        # the group's cell row itself.
        h = InstanceGroup.get_by_uuid(ctx, g.uuid)
        h.name = "writer first"
        h.save()
        raced.append(str(name_of(topology.cell_engine("cell1"), "cell", g.uuid)))

    with signals.phase_changed.connected_to(writer_first):
        switched = Switcher(dbs).run(AR)
    assert raced == ["writer first"]
    assert switched.catch_up == ()
    assert name_of(topology.cell_engine("cell1"), "cell", g.uuid) == "writer first"
    with reader(dbs.api) as conn:
        assert API.journal_pending(conn) == []
    assert commands.diff_report(dbs).clean


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_f10_writers_of_a_group_with_no_cell_row_share_its_identity_lock(
    topology: Topology,
) -> None:
    group = seed_api_group(topology.dbs.api, name="api only copy")
    put_in_phase(topology.dbs, CR)
    put_in_phase(topology.dbs, AR)
    with (
        connect(topology.api_url_text, settings=topology.settings) as first,
        connect(topology.api_url_text, settings=topology.settings) as second,
    ):
        g1 = InstanceGroup.get_by_uuid(ctx_of(first), group)
        g2 = InstanceGroup.get_by_uuid(ctx_of(second), group)
        cell1 = first.cell("cell1").engine
        with _paused_before(cell1, "INSERT INTO INSTANCE_GROUPS") as (reached, release):
            g1.name = "older"
            w1 = _Run(g1.save)  # API committed, its cell copy about to be written
            w1.start()
            _until(reached.is_set, "the first writer to reach its cell insert")
            g2.name = "newer"
            w2 = _Run(g2.save)
            w2.start()
            _until(
                lambda: (
                    not w2.is_alive()
                    or _lock_waits(
                        topology.backend, topology.cell_engine("cell1"), "%shadowdb_group_locks%"
                    )
                    > 0
                ),
                "the second writer to finish or wait",
            )
            assert w2.is_alive(), "the second writer took no lock the first one holds"
            release.set()
            w1.outcome()
            w2.outcome()
    assert name_of(topology.dbs.api, "api", group) == "newer"
    assert name_of(topology.cell_engine("cell1"), "cell", group) == "newer"
    assert commands.diff_report(topology.dbs).clean


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_pooled_connections_killed_while_idle_are_replaced_not_an_outage(
    topology: Topology,
) -> None:
    for i in range(10):
        migrated(topology, f"g{i}")
    put_in_phase(topology.dbs, CR)
    # At the diff's first read of the groups (the API database's count, before the scans
    # start together), every other connection of the topology is idle in its pool.
    with _connection_killed_mid_scan(topology.backend, after=1, whom="others") as killed:
        report = commands.diff_report(topology.dbs, chunk_size=1)
    assert killed and "count" in killed[0].lower()
    assert report.clean and report.total == 0
    with reader(topology.dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None and last.outcome == "clean"


# --------------------------------------------------------------------------- prepared cells


def _cell_row(engine: sa.Engine) -> tuple[int, int | None]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(models.cell_state.c.epoch, models.cell_state.c.next_epoch))
        epoch, prepared = row.one()
    return int(epoch), prepared


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_cell_left_prepared_refuses_a_writer_that_cannot_ask_the_api_database(
    topology: Topology,
    api_behind_proxy: tuple[Databases, Proxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the model check: a lagging cell once let a cut-off writer acknowledge.

    ``phase set`` commits the API database, then loses cell1 before cell1 takes the new
    phase. A dual-write-cell-reads writer cut off from the API database used to journal
    its rename in cell1 and acknowledge it, while every reader had moved on to the API
    copy. Now cell1's row says a change is prepared, and only the API row can say more.
    """
    service, api_proxy = api_behind_proxy
    group = migrated(topology)
    put_in_phase(topology.dbs, CR)
    assert commands.diff_report(topology.dbs).clean
    g = InstanceGroup.get_by_uuid(ctx_of(service), group)  # the service plans in CR
    before = topology.dbs.phases.fresh().epoch
    finish = switcher_module.settle_cell

    def cell1_lost(dbs: Databases, cell: Any, hint: Any = None) -> bool:
        if cell.name == "cell1":
            raise DatabaseUnreachable(cell.label, "lost after the commit point")
        return finish(dbs, cell, hint)

    monkeypatch.setattr(switcher_module, "settle_cell", cell1_lost)
    Switcher(topology.dbs).run(AR)
    monkeypatch.undo()
    cell1 = topology.cell_engine("cell1")
    assert topology.dbs.phases.fresh().phase is AR
    assert _cell_row(cell1) == (before, before + 1)  # prepared, never finished
    api_proxy.cut()
    try:
        g.name = "lost?"
        with pytest.raises(DatabaseUnreachable):
            g.save()
    finally:
        api_proxy.restore()
    assert name_of(cell1, "cell", group) == "g"
    with reader(cell1) as conn:
        assert CELL.journal_pending(conn) == []
    g.save()  # reachable again: cell1 is settled, the write goes through the new phase
    assert _cell_row(cell1) == (before + 1, None)
    assert InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group).name == "lost?"
    assert name_of(cell1, "cell", group) == "lost?"


def test_a_change_that_never_reached_its_commit_point_leaves_nothing_behind(
    topology: Topology,
) -> None:
    group = migrated(topology)
    put_in_phase(topology.dbs, CR)
    before = topology.dbs.phases.fresh().epoch

    def crash(step: str) -> None:
        if step == "prepared":
            raise RuntimeError("phase set dies before its API commit")

    with pytest.raises(RuntimeError):
        Switcher(topology.dbs, hook=crash).run(C)
    assert topology.dbs.phases.fresh().phase is CR
    cell1 = topology.cell_engine("cell1")
    assert _cell_row(cell1) == (before, before + 1)  # prepared; the API never took it
    g = InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group)
    g.name = "still dual-write"
    g.save()  # the writer asks the API row: the mark is cleared, the plan holds
    assert _cell_row(cell1) == (before, None)
    assert name_of(topology.dbs.api, "api", group) == "still dual-write"
    commands.status(topology.dbs)
    assert _cell_row(topology.cell_engine("cell2")) == (before, None)


# --------------------------------------------------------------------------- found by attack


def _server_id(dbapi_conn: Any) -> int:
    if hasattr(dbapi_conn, "thread_id"):
        return int(dbapi_conn.thread_id())  # PyMySQL
    return int(dbapi_conn.info.backend_pid)  # psycopg


def _kill_server_side(admin: sa.Engine, backend: str, sid: int) -> None:
    with admin.connect() as conn:
        if backend == "mysql":
            conn.execute(sa.text(f"KILL {sid}"))
        else:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": sid})
            conn.commit()

            def gone() -> bool:
                # pg_stat_activity is one snapshot per transaction: each look is its own.
                with admin.connect() as look:
                    return not look.scalar(
                        sa.text("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = :p"), {"p": sid}
                    )

            _until(gone, "the backend to go")
        conn.commit()


@contextlib.contextmanager
def _killed_at_commit(engine: sa.Engine, admin: sa.Engine, backend: str) -> Iterator[list[int]]:
    """Kill, server side, the first write connection of ``engine`` about to COMMIT.

    SQLite has no server: its commit raises instead, as a crash there would.
    """
    killed: list[int] = []

    def on_commit(conn: Any) -> None:
        if killed or not conn.get_execution_options().get("shadowdb_write"):
            return
        if backend == "sqlite":
            killed.append(0)
            raise RuntimeError("the cell commit fails")
        sid = _server_id(conn.connection.dbapi_connection)
        killed.append(sid)
        _kill_server_side(admin, backend, sid)

    sa.event.listen(engine, "commit", on_commit)
    try:
        yield killed
    finally:
        sa.event.remove(engine, "commit", on_commit)


@pytest.mark.parametrize("what", ["destroy", "rename"])
def test_a_write_whose_cell_commit_fails_in_cell_reads_leaves_nothing_anywhere(
    topology: Topology, what: str
) -> None:
    """The cell, the authority, commits first: a failed commit leaves no API copy ahead.

    It once committed the API copy inside the cell transaction: a cell commit killed by
    the server left the API copy holding a write nobody acknowledged, with no journal
    entry, and the next move into dual-write-api-reads served it (a group whose destroy
    failed vanished).
    """
    group = migrated(topology)
    put_in_phase(topology.dbs, CR)
    assert commands.diff_report(topology.dbs).clean  # the gate the move will use
    with connect(topology.api_url_text, settings=topology.settings) as service:
        g = InstanceGroup.get_by_uuid(ctx_of(service), group)
        cell1 = service.cell("cell1").engine
        with (
            _killed_at_commit(cell1, topology.dbs.api, topology.backend) as killed,
            pytest.raises(Exception) as failed,  # any failure: not acknowledged
        ):
            if what == "destroy":
                g.destroy()
            else:
                g.name = "failed rename"
                g.save()
        assert killed
        assert not isinstance(failed.value, AssertionError)  # the kill, not the test's wait
    assert name_of(topology.dbs.api, "api", group) == "g"
    with reader(topology.dbs.api) as conn:
        assert API.tombstoned(conn, [group]) == set()
    Switcher(topology.dbs).run(AR)
    assert InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group).name == "g"


def test_cell_reads_writes_under_traffic_do_not_block_the_move_to_api_reads(
    topology: Topology,
) -> None:
    """An outbox entry whose API half has not run yet is replayed by phase set itself."""
    group = migrated(topology)
    put_in_phase(topology.dbs, CR)
    assert commands.diff_report(topology.dbs).clean
    g = InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group)
    cell1 = topology.cell_engine("cell1")
    with cell1.begin() as conn:  # a write acknowledged, its API half still to run
        conn.execute(
            models.cell_groups.update()
            .where(models.cell_groups.c.uuid == group)
            .values(name="acknowledged")
        )
        CELL.journal_add(conn, group, topology.dbs.phases.fresh().epoch, OUTBOX)
    Switcher(topology.dbs).run(AR)
    assert InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group).name == "acknowledged"
    with reader(cell1) as conn:
        assert CELL.journal_pending(conn) == []
    del g


def test_a_process_that_missed_a_new_cell_re_reads_the_cells_before_it_writes(
    topology: Topology, server: Server, tmp_path: Path
) -> None:
    """A cell registered while a service runs: the service must not copy a group twice.

    A process's cell list was read once; writing, in dual-write-api-reads, a group of a
    cell registered since, it missed the group's cell copy, inserted a second one in the
    default cell, and after a destroy and the rollback the stale copy came back.
    """
    put_in_phase(topology.dbs, CR)
    put_in_phase(topology.dbs, AR)
    with connect(topology.api_url_text, settings=topology.settings) as service:
        assert [c.name for c in service.cells] == ["cell1", "cell2"]  # a running service
        if server.backend == "sqlite":
            server = Server("sqlite", folder=tmp_path)
        name = _db_name("cell3")
        url = server.create(name)
        try:
            commands.add_cell(topology.dbs, "cell3", url.render_as_string(hide_password=False))
            commands.sync_schema(topology.dbs)
            cell3 = topology.dbs.cell("cell3").engine
            group = seed_cell_group(cell3, name="g", policies=("affinity",))
            seed_api_group(topology.dbs.api, uuid=group, name="g", policies=("affinity",))
            g = InstanceGroup.get_by_uuid(ctx_of(service), group)
            g.name = "renamed"
            g.save()
            assert group_state(topology.cell_engine("cell1"), "cell", group) is None
            assert name_of(cell3, "cell", group) == "renamed"
            InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group).destroy()
            Switcher(topology.dbs).run(CR)
            with pytest.raises(GroupNotFound):
                InstanceGroup.get_by_uuid(ctx_of(topology.dbs), group)
        finally:
            topology.dbs.dispose()
            server.drop(name)
