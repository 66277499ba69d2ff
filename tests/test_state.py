"""The phase row: the four phases, reading and creating the row, and the short phase cache."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.databases import Databases, create_engine, writer
from shadowdb.errors import DatabaseUnreachable, InvalidInput, SchemaError, UnknownPhase
from shadowdb.settings import Settings
from shadowdb.state import (
    Phase,
    PhaseState,
    PhaseStore,
    initialise_state,
    read_cell_state,
    read_state,
    utcnow,
)
from tests.conftest import FreshDatabases, Topology
from tests.protocol.test_faults import SERVERS
from tests.support.helpers import new_uuid
from tests.support.proxy import Proxy


def test_phases_parse_from_what_the_database_stores_in_forward_order() -> None:
    names = ["cell-only", "dual-write-cell-reads", "dual-write-api-reads", "api-only"]
    assert [Phase.parse(n).index for n in names] == [0, 1, 2, 3]
    assert [p.value for p in Phase] == names


def test_an_unknown_phase_names_the_known_ones() -> None:
    with pytest.raises(UnknownPhase, match=r"unknown phase 'api_only' \(known: cell-only, ") as e:
        Phase.parse("api_only")
    assert e.value.phase == "api_only" and isinstance(e.value, InvalidInput)


def test_only_the_two_middle_phases_write_both_databases() -> None:
    assert [p.dual_write for p in Phase] == [False, True, True, False]


def test_utcnow_is_naive_utc_to_the_second() -> None:
    now = utcnow()
    assert now.tzinfo is None and now.microsecond == 0
    real = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert abs(real - now) < dt.timedelta(seconds=2)


def _set(dbs: Databases, **values: object) -> None:
    with writer(dbs.api) as conn:
        conn.execute(models.api_state.update().values(**values))


def _cell1_uuid(dbs: Databases) -> str:
    return dbs.cell("cell1").uuid


def test_a_synced_api_database_starts_in_cell_only_at_epoch_0(topology: Topology) -> None:
    with topology.dbs.api.connect() as conn:
        state = read_state(conn)
    assert (state.phase, state.epoch, state.cells_retired) == (Phase.CELL_ONLY, 0, False)
    assert state.default_cell_uuid == _cell1_uuid(topology.dbs)
    assert state.next_epoch is None


@pytest.mark.parametrize("lock", [{}, {"for_update": True}, {"share": True}])
def test_read_state_reads_the_row_with_or_without_a_lock(
    topology: Topology, lock: dict[str, bool]
) -> None:
    _set(topology.dbs, phase="dual-write-api-reads", epoch=7, cells_retired=True)
    with writer(topology.dbs.api) as conn:
        state = read_state(conn, **lock)
    assert (state.phase, state.epoch, state.cells_retired) == (Phase.DUAL_WRITE_API_READS, 7, True)


def test_a_cells_row_is_its_fence(topology: Topology) -> None:
    engine = topology.cell_engine("cell2")
    with engine.begin() as conn:
        conn.execute(models.cell_state.update().values(phase="api-only", epoch=3, next_epoch=4))
    with engine.begin() as conn:
        state = read_cell_state(conn, for_update=True)
    assert state is not None
    assert (state.phase, state.epoch, state.next_epoch) == (Phase.API_ONLY, 3, 4)
    assert state.default_cell_uuid is None
    with engine.begin() as conn:
        conn.execute(models.cell_state.delete())
    with engine.connect() as conn:
        assert read_cell_state(conn) is None


def test_a_database_never_synced_is_a_schema_error(fresh: FreshDatabases) -> None:
    engine = create_engine(fresh.api_url, Settings())
    try:
        with engine.connect() as conn, pytest.raises(SchemaError, match="API database"):
            read_state(conn)
        with engine.connect() as conn, pytest.raises(SchemaError, match="cell cellX"):
            read_cell_state(conn, label="cell cellX")
    finally:
        engine.dispose()


def test_an_api_database_without_its_phase_row_is_a_schema_error(topology: Topology) -> None:
    with writer(topology.dbs.api) as conn:
        conn.execute(models.api_state.delete())
    with topology.dbs.api.connect() as conn, pytest.raises(SchemaError, match="not synced"):
        read_state(conn)


def test_initialise_state_creates_the_row_once_with_its_history(topology: Topology) -> None:
    _set(topology.dbs, phase="api-only", epoch=5)
    with writer(topology.dbs.api) as conn:
        assert initialise_state(conn, "someone") is False  # never moves an existing row
        assert read_state(conn).phase is Phase.API_ONLY
        conn.execute(models.api_state.delete())
        conn.execute(models.api_phase_history.delete())
        assert initialise_state(conn, "someone") is True
        state = read_state(conn)
        history = conn.execute(sa.select(models.api_phase_history)).all()
    assert (state.phase, state.epoch) == (Phase.CELL_ONLY, 0)
    assert [(h.epoch, h.from_phase, h.to_phase, h.actor, h.reason) for h in history] == [
        (0, None, "cell-only", "someone", "initial state (db sync)")
    ]


def test_the_store_serves_its_cache_for_the_ttl(topology: Topology) -> None:
    store = PhaseStore(topology.dbs.api, ttl=60)
    assert store.ttl == 60
    assert store.get().phase is Phase.CELL_ONLY
    _set(topology.dbs, phase="dual-write-cell-reads", epoch=1)
    assert store.get().phase is Phase.CELL_ONLY  # cached
    assert store.fresh().phase is Phase.DUAL_WRITE_CELL_READS
    _set(topology.dbs, phase="dual-write-api-reads", epoch=2)
    store.invalidate()
    assert store.get().phase is Phase.DUAL_WRITE_API_READS


def test_a_zero_ttl_reads_every_time(topology: Topology) -> None:
    store = PhaseStore(topology.dbs.api, ttl=0)
    assert store.get().epoch == 0
    _set(topology.dbs, phase="dual-write-cell-reads", epoch=1)
    assert store.get().epoch == 1


def test_observe_keeps_only_a_newer_phase(topology: Topology) -> None:
    store = PhaseStore(topology.dbs.api, ttl=60)
    start = store.get()
    older = PhaseState(Phase.API_ONLY, -1, start.changed_at, None)
    store.observe(older)
    assert store.get() == start
    newer = PhaseState(Phase.DUAL_WRITE_CELL_READS, start.epoch + 1, start.changed_at, None)
    store.observe(newer)
    assert store.get() == newer  # a writer learnt it under its lock: no read needed


def test_the_store_notices_a_cell_registered_or_removed(topology: Topology) -> None:
    store = PhaseStore(topology.dbs.api, ttl=0)
    assert store.cells_seen is None
    store.get()
    before = store.cells_seen
    assert before is not None and before[0] == len(topology.dbs.cells)
    with writer(topology.dbs.api) as conn:
        conn.execute(models.api_cell_mappings.insert().values(uuid=new_uuid(), name="cell9"))
    store.get()
    added = store.cells_seen
    assert added is not None and added[0] == before[0] + 1 and added[1] > before[1]
    with writer(topology.dbs.api) as conn:
        conn.execute(
            models.api_cell_mappings.delete().where(models.api_cell_mappings.c.name == "cell9")
        )
    store.get()
    assert store.cells_seen is not None and store.cells_seen[0] == before[0]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_an_unreachable_api_database_serves_the_last_phase_read(
    topology: Topology, api_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = api_behind_proxy
    store = PhaseStore(dbs.api, ttl=0)
    never_read = PhaseStore(dbs.api, ttl=0)
    known = store.get()
    proxy.cut()
    try:
        assert store.get() == known
        with pytest.raises(DatabaseUnreachable):
            store.fresh()  # a decision that must not rest on a stale phase
        with pytest.raises(DatabaseUnreachable):
            never_read.get()  # nothing to serve
    finally:
        proxy.restore()
