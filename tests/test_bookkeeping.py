"""The SQL on shadowdb's own tables (:mod:`shadowdb.bookkeeping`), on every backend."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shadowdb import bookkeeping
from shadowdb.databases import reader, writer
from shadowdb.transactions import transaction
from tests.conftest import Topology
from tests.support.helpers import new_uuid

CELL_A, CELL_B = new_uuid(), new_uuid()


def test_chunks_are_added_covered_claimed_and_checkpointed(topology: Topology) -> None:
    api = topology.dbs.api
    with writer(api) as conn:
        assert bookkeeping.chunks_covered_to(conn, CELL_A) == 0
        bookkeeping.add_chunks(conn, CELL_A, [1, 11], 10)
        bookkeeping.add_chunks(conn, CELL_B, [1], 10)
        bookkeeping.add_chunks(conn, CELL_A, [], 10)  # nothing to add: no statement
        assert bookkeeping.chunks_covered_to(conn, CELL_A) == 20
        assert bookkeeping.chunks_covered_to(conn, CELL_B) == 10
    with reader(api) as conn:
        first = bookkeeping.claim_chunk(conn, [CELL_A], lock=False)
    assert first is not None
    assert (first.cell_uuid, first.start_id, first.end_id, first.next_id) == (CELL_A, 1, 10, 1)
    with writer(api) as conn:
        bookkeeping.move_checkpoint(conn, first.id, 6, done=False)
    with reader(api) as conn:
        again = bookkeeping.claim_chunk(conn, [CELL_A], lock=False)
    assert again is not None and (again.id, again.next_id) == (first.id, 6)
    with writer(api) as conn:
        bookkeeping.move_checkpoint(conn, first.id, 11, done=True)
    with reader(api) as conn:
        second = bookkeeping.claim_chunk(conn, [CELL_A], lock=False)
        other = bookkeeping.claim_chunk(conn, [CELL_B], lock=False)
        assert bookkeeping.claim_chunk(conn, [], lock=False) is None
    assert second is not None and second.start_id == 11
    assert other is not None and other.cell_uuid == CELL_B


def test_adding_a_planned_chunk_again_is_refused(topology: Topology) -> None:
    with writer(topology.dbs.api) as conn:
        bookkeeping.add_chunks(conn, CELL_A, [1], 10)
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
            bookkeeping.add_chunks(conn, CELL_A, [1], 10)
        assert bookkeeping.chunks_covered_to(conn, CELL_A) == 10


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ],
    indirect=True,
)
def test_a_locked_chunk_is_skipped_by_another_claim(topology: Topology) -> None:
    api = topology.dbs.api
    with writer(api) as conn:
        bookkeeping.add_chunks(conn, CELL_A, [1, 11], 10)
    with transaction(api, "api") as holder:
        held = bookkeeping.claim_chunk(holder, [CELL_A], lock=True)
        assert held is not None and held.start_id == 1
        with transaction(api, "api") as other:
            skipped = bookkeeping.claim_chunk(other, [CELL_A], lock=True)
            assert skipped is not None and skipped.start_id == 11


def test_a_conflict_is_recorded_once_listed_by_cell_and_forgotten(topology: Topology) -> None:
    group, twin = new_uuid(), new_uuid()
    with writer(topology.dbs.api) as conn:
        bookkeeping.record_conflict(conn, group, CELL_A, "live-in-two-cells", "first")
        bookkeeping.record_conflict(conn, group, CELL_A, "cannot-copy", "again")
        bookkeeping.record_conflict(conn, twin, CELL_A, "cannot-copy", "second")
        bookkeeping.record_conflict(conn, group, CELL_B, "api-copy-differs", "elsewhere")
    with reader(topology.dbs.api) as conn:
        mine = bookkeeping.recorded_conflicts(conn, [CELL_A], 10)
        assert [(c.group_uuid, c.kind, c.detail) for c in mine] == [
            (group, "live-in-two-cells", "first"),
            (twin, "cannot-copy", "second"),
        ]
        assert len(bookkeeping.recorded_conflicts(conn, [CELL_A, CELL_B], 10)) == 3
        assert len(bookkeeping.recorded_conflicts(conn, [CELL_A, CELL_B], 2)) == 2
    with writer(topology.dbs.api) as conn:
        bookkeeping.forget_conflict(conn, mine[0].id)
    with reader(topology.dbs.api) as conn:
        left = bookkeeping.recorded_conflicts(conn, [CELL_A], 10)
    assert [c.group_uuid for c in left] == [twin]
