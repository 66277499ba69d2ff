"""``shadowdb.journal_rows``: a side's journal, entry by entry."""

from __future__ import annotations

import pytest

from shadowdb.databases import writer
from shadowdb.queries import API, CELL, Side
from shadowdb.state import utcnow
from tests.conftest import Topology
from tests.support.helpers import new_uuid


@pytest.mark.parametrize("side_name", ["api", "cell"])
def test_entries_are_added_noted_listed_and_cleared_exactly(
    topology: Topology, side_name: str
) -> None:
    side: Side = API if side_name == "api" else CELL
    engine = topology.dbs.api if side is API else topology.cell_engine("cell1")
    rows = side.journal_rows
    group, other = new_uuid(), new_uuid()
    with writer(engine, side.name) as conn:
        first = rows.add(conn, group, 1)
        second = rows.add(conn, group, 1)
        kept = rows.add(conn, other, 1, "cell unreachable")
        rows.note(conn, first, "x" * 3000)
        assert rows.count(conn) == 3
        assert rows.ids_for(conn, group) == [first, second]
        pending = rows.pending(conn)
        assert [e.id for e in pending] == [first, second, kept]
        assert pending[0].error == "x" * 2000 and pending[2].error == "cell unreachable"
        assert rows.pending(conn, limit=1)[0].id == first
        assert rows.journaled(conn, [group, new_uuid()]) == {group}
        # Only the entries named, and only the group's: never a range.
        assert rows.clear(conn, group, [first, kept]) == 1
        assert rows.clear(conn, group, []) == 0
        assert rows.ids_for(conn, group) == [second]
        assert rows.count(conn) == 2


def test_a_long_list_of_uuids_is_checked_in_chunks(topology: Topology) -> None:
    # More entries than uuids asked about, and more uuids than one IN list holds: the
    # journal is not read whole but looked up list by list.
    rows = API.journal_rows
    journaled = [new_uuid() for _ in range(1200)]
    unknown = [new_uuid() for _ in range(5)]
    with writer(topology.dbs.api, "api") as conn:
        conn.execute(
            rows.journal.insert(),
            [{"group_uuid": u, "created_at": utcnow(), "epoch": 1} for u in journaled],
        )
        assert rows.journaled(conn, [*journaled[:600], *unknown]) == set(journaled[:600])
