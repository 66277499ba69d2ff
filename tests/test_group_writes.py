"""``shadowdb.group_writes``: the writes a side delegates, on both kinds of database."""

from __future__ import annotations

import sqlalchemy as sa

from shadowdb.databases import writer
from shadowdb.queries import API, CELL, GroupRecord, Side
from shadowdb.state import utcnow
from tests.conftest import Topology
from tests.support.helpers import new_uuid


def _record(uuid: str, members: tuple[str, ...]) -> GroupRecord:
    now = utcnow().replace(microsecond=0)
    return GroupRecord(0, uuid, "g", "u", "p", ("affinity",), members, now, now)


def _round_trip(engine: sa.Engine, side: Side) -> None:
    uuid, one, two, three = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    with writer(engine, side.name) as conn:
        side.insert(conn, _record(uuid, (one,)))
        record = side.get(conn, uuid, lock=True)
        assert record is not None and record.members == (one,)
        assert side.add_members(conn, record, [one, two, two]) == [two]
        record = side.get(conn, uuid)
        assert record is not None and record.members == (one, two)
        assert side.remove_members(conn, record, [one, three]) == [one]
        record = side.get(conn, uuid)
        assert record is not None and record.members == (two,)
        assert side.set_policies(conn, record, ["anti-affinity"])
        record = side.get(conn, uuid)
        assert record is not None and record.policies == ("anti-affinity",)
        side.delete(conn, record)
        assert side.get(conn, uuid) is None
        # A tombstone marks the API copy's deletion; a cell soft-deletes and keeps none.
        assert side.tombstoned(conn, [uuid]) == ({uuid} if side is API else set())


def test_the_api_side_writes_hard_and_tombstones(topology: Topology) -> None:
    _round_trip(topology.dbs.api, API)


def test_a_cell_side_writes_soft(topology: Topology) -> None:
    _round_trip(topology.cell_engine("cell1"), CELL)
    g = CELL.groups
    with topology.cell_engine("cell1").connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(g).where(g.c.deleted != 0))


def test_the_side_delegates_to_its_parts() -> None:
    assert API.add_members == API.writes.add_members
    assert CELL.journal_add == CELL.journal_rows.add
