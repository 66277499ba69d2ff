"""The groups the backfill refuses to copy: recorded once, announced, listed for the next run."""

from __future__ import annotations

from typing import Any

from shadowdb import signals
from shadowdb.backfill.conflicts import ConflictStore
from shadowdb.backfill.results import CopyConflict
from shadowdb.databases import writer
from tests.conftest import Topology
from tests.support.helpers import new_uuid


def test_a_conflict_is_recorded_announced_and_kept_in_the_runs_list(topology: Topology) -> None:
    dbs = topology.dbs
    store = ConflictStore(dbs)
    cell1 = dbs.cell("cell1")
    group = new_uuid()
    announced: list[dict[str, Any]] = []
    with (
        signals.divergence.connected_to(lambda _, **kw: announced.append(kw), sender=dbs),
        writer(dbs.api) as conn,
    ):
        store.record(conn, group, cell1, "field-mismatch", "name differs")
    assert store.seen == (CopyConflict(group, "cell1", "field-mismatch", "name differs"),)
    assert announced == [{"group_uuid": group, "kind": "field-mismatch", "detail": "name differs"}]
    (recorded,) = ConflictStore(dbs).recorded([cell1], limit=10)  # another run sees it
    assert (recorded.group_uuid, recorded.cell_uuid, recorded.kind, recorded.detail) == (
        group,
        cell1.uuid,
        "field-mismatch",
        "name differs",
    )


def test_a_conflict_seen_again_is_one_conflict(topology: Topology) -> None:
    dbs = topology.dbs
    store = ConflictStore(dbs)
    cell1 = dbs.cell("cell1")
    group = new_uuid()
    for detail in ("first", "second"):
        with writer(dbs.api) as conn:
            store.record(conn, group, cell1, "field-mismatch", detail)
    assert [c.detail for c in store.seen] == ["second"]
    assert len(store.recorded([cell1], limit=10)) == 1


def test_a_record_rolled_back_with_its_transaction_is_not_kept(topology: Topology) -> None:
    dbs = topology.dbs
    store = ConflictStore(dbs)
    with dbs.api.connect() as conn, conn.begin() as tx:
        store.record(conn, new_uuid(), dbs.cell("cell1"), "deleted-in-api", "gone")
        tx.rollback()
    assert store.recorded(dbs.cells, limit=10) == []


def test_recorded_lists_the_cells_asked_for_oldest_first_up_to_limit(topology: Topology) -> None:
    dbs = topology.dbs
    store = ConflictStore(dbs)
    cell1, cell2 = dbs.cell("cell1"), dbs.cell("cell2")
    groups = [new_uuid() for _ in range(3)]
    with writer(dbs.api) as conn:
        store.record(conn, groups[0], cell1, "k", "d")
        store.record(conn, groups[1], cell2, "k", "d")
        store.record(conn, groups[2], cell1, "k", "d")
    assert [c.group_uuid for c in store.recorded([cell1], limit=10)] == [groups[0], groups[2]]
    assert [c.group_uuid for c in store.recorded([cell1, cell2], limit=2)] == groups[:2]


def test_a_resolved_conflict_is_forgotten(topology: Topology) -> None:
    dbs = topology.dbs
    store = ConflictStore(dbs)
    cell1 = dbs.cell("cell1")
    kept, resolved = new_uuid(), new_uuid()
    with writer(dbs.api) as conn:
        store.record(conn, kept, cell1, "k", "d")
        store.record(conn, resolved, cell1, "k", "d")
    (_, second) = store.recorded([cell1], limit=10)
    store.resolved(second)
    assert [c.group_uuid for c in store.recorded([cell1], limit=10)] == [kept]


def test_a_conflict_recorded_elsewhere_is_noted_in_the_runs_list(topology: Topology) -> None:
    store = ConflictStore(topology.dbs)
    noted = CopyConflict(new_uuid(), "cell2", "journal-conflict", "both sides")
    store.note(noted)
    store.note(noted)
    assert store.seen == (noted,)
    assert store.recorded(topology.dbs.cells, limit=10) == []
