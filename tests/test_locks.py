"""A group's write transactions: fenced, locked in the one order, the copy read once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.databases import Databases, writer
from shadowdb.fence import CellBehind, EpochChanged
from shadowdb.locks import api_transaction, cell_transaction, lock_api, lock_cell
from shadowdb.queries import CELL
from shadowdb.state import Phase, PhaseState, read_state
from shadowdb.transactions import commit
from tests.conftest import Topology
from tests.support.helpers import new_uuid, seed_api_group, seed_cell_group


def _plan(dbs: Databases) -> PhaseState:
    with dbs.api.connect() as conn:
        return read_state(conn)


def test_lock_cell_yields_the_live_copy_and_its_journal_entries(topology: Topology) -> None:
    dbs = topology.dbs
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine, name="web", members=("i1",))
    with writer(cell.engine) as conn:
        entry = CELL.journal_add(conn, group, 0, "API unreachable")
    with lock_cell(dbs, cell, _plan(dbs), group) as (_, record, journal):
        assert record is not None
        assert (record.uuid, record.name, record.members) == (group, "web", ("i1",))
        assert journal == [entry]
    with lock_cell(dbs, cell, _plan(dbs), new_uuid()) as (_, record, journal):
        assert (record, journal) == (None, [])


def test_lock_api_yields_the_api_copy(topology: Topology) -> None:
    dbs = topology.dbs
    group = seed_api_group(dbs.api, name="db", policies=("affinity",))
    with lock_api(dbs, _plan(dbs), group) as (_, record, journal):
        assert record is not None and (record.name, record.policies) == ("db", ("affinity",))
        assert journal == []
    with api_transaction(dbs, _plan(dbs), group) as (_conn, record):
        assert record is not None and record.uuid == group


def test_the_transaction_commits_only_when_told(topology: Topology) -> None:
    dbs = topology.dbs
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine, name="before")
    g = models.cell_groups
    rename = g.update().where(g.c.uuid == group)
    with cell_transaction(dbs, cell, _plan(dbs), group) as (conn, record):
        assert record is not None
        conn.execute(rename.values(name="left open"))
    with cell_transaction(dbs, cell, _plan(dbs), group) as (conn, record):
        assert record is not None and record.name == "before"  # rolled back
        conn.execute(rename.values(name="committed"))
        commit(conn, cell.label)
    with cell.engine.connect() as conn:
        assert CELL.get(conn, group) is not None
        assert conn.scalar(sa.select(g.c.name).where(g.c.uuid == group)) == "committed"


def test_a_plan_from_another_epoch_is_refused_before_anything_is_read(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    cell = dbs.cell("cell1")
    plan = _plan(dbs)
    with writer(dbs.api) as conn:
        conn.execute(models.api_state.update().values(phase="dual-write-cell-reads", epoch=1))
    with pytest.raises(EpochChanged), lock_api(dbs, plan, new_uuid()):
        pass
    ahead = PhaseState(Phase.DUAL_WRITE_CELL_READS, 1, plan.changed_at, None)
    with pytest.raises(CellBehind), lock_cell(dbs, cell, ahead, new_uuid()):
        pass  # the cell has not taken epoch 1 yet


def _second_waits_for_first(
    lock: Callable[[], AbstractContextManager[Any]], check: Callable[[Any], None]
) -> list[str]:
    """Hold ``lock`` in a thread for a while, take it here; return the order of events."""
    held = threading.Event()
    order: list[str] = []

    def first() -> None:
        with lock():
            held.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert held.wait(10)
        with lock() as taken:
            order.append("second in")
            check(taken)
    finally:
        thread.join()
    return order


@pytest.mark.parametrize("existing", [True, False], ids=["live-group", "no-row-yet"])
def test_two_writers_of_one_group_take_turns(topology: Topology, existing: bool) -> None:
    dbs = topology.dbs
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine) if existing else new_uuid()
    plan = _plan(dbs)
    order = _second_waits_for_first(lambda: lock_cell(dbs, cell, plan, group), lambda _: None)
    assert order == ["first done", "second in"]


def test_the_api_copy_is_locked_until_its_writer_ends(topology: Topology) -> None:
    dbs = topology.dbs
    group = seed_api_group(dbs.api)
    plan = _plan(dbs)

    def found(taken: Any) -> None:
        _, record, _ = taken
        assert record is not None

    order = _second_waits_for_first(lambda: lock_api(dbs, plan, group), found)
    assert order == ["first done", "second in"]
