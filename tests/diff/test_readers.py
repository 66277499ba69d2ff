"""The diff's reads: copies by uuid, orphans, chunks by index range or one ordered pass."""

from __future__ import annotations

import gc
import sys
import uuid as uuidlib
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from shadowdb.databases import reader, writer
from shadowdb.diff.checksums import Copy, bucket_of, rows_of
from shadowdb.diff.readers import (
    RangeReader,
    StreamReader,
    account,
    chunk_range,
    observe,
    read_copies,
    read_orphans,
    snapshot,
)
from shadowdb.errors import ScanIncomplete, ShadowDBError
from shadowdb.queries import API, CELL
from tests.conftest import Topology
from tests.support.backends import Server
from tests.support.helpers import seed_api_group, seed_cell_group

N = 4


def _uuid(prefix: str) -> str:
    return prefix + str(uuidlib.uuid4())[len(prefix) :]


@pytest.fixture
def cell(topology: Topology) -> sa.Engine:
    """cell1: a group in every chunk, a non-canonical uuid, and a deleted group."""
    engine = topology.cell_engine("cell1")
    for i, prefix in enumerate(("0", "5", "9", "c", "ff")):
        seed_cell_group(
            engine,
            uuid=_uuid(prefix),
            name=f"g{i}",
            policies=("affinity",),
            members=tuple(f"i{i}-{j}" for j in range(i)),
        )
    seed_cell_group(engine, uuid="LEGACY-not-a-canonical-uuid", name="odd")
    seed_cell_group(engine, name="gone", policies=("anti-affinity",), members=("x",), deleted=True)
    return engine


def _all(engine: sa.Engine) -> dict[str, Copy]:
    with reader(engine) as conn:
        return read_copies(conn, CELL, sorted(CELL.uuids(conn)))


def test_read_copies_loads_live_copies_with_sorted_sets(topology: Topology) -> None:
    engine = topology.cell_engine("cell1")
    group = seed_cell_group(engine, name="web", policies=("b", "a"), members=("i2", "i1", "i1"))
    gone = seed_cell_group(engine, deleted=True)
    with reader(engine) as conn:
        copies = read_copies(conn, CELL, [group, gone, "nothing"])
    assert list(copies) == [group]
    copy = copies[group]
    assert (copy.name, copy.policies, copy.members, copy.duplicates) == (
        "web",
        ("a", "b"),
        ("i1", "i2"),
        1,
    )
    with writer(engine) as conn:  # the same under the lock
        assert read_copies(conn, CELL, [group, gone], lock=True) == copies


def test_read_copies_matches_uuids_exactly(topology: Topology) -> None:
    lower = _uuid("abcdef")
    seed_api_group(topology.dbs.api, uuid=lower)
    with reader(topology.dbs.api) as conn:
        # A collation that folds case must not pair ABC with abc.
        assert read_copies(conn, API, [lower.upper()]) == {}
        assert list(read_copies(conn, API, [lower])) == [lower]


def test_the_live_children_of_a_deleted_group_are_orphans(topology: Topology) -> None:
    engine = topology.cell_engine("cell1")
    seed_cell_group(engine, members=("kept",))
    gone = seed_cell_group(engine, policies=("affinity",), members=("x",), deleted=True)
    with reader(engine) as conn:
        orphans = read_orphans(conn, CELL, "cell1")
    assert sorted((o.table, o.value, o.group_uuid, o.database) for o in orphans) == [
        ("instance_group_member", "x", gone, "cell1"),
        ("instance_group_policy", "affinity", gone, "cell1"),
    ]


def test_chunk_ranges_let_through_every_uuid_of_their_chunk(cell: sa.Engine) -> None:
    everything = _all(cell)
    for chunk in range(N + 1):
        with snapshot(cell, "cell1") as conn:
            inside = chunk_range(CELL, conn.dialect.name, chunk, N)
            got = set(conn.scalars(sa.select(CELL.groups.c.uuid).where(inside)))
        mine = {u for u in everything if bucket_of(u, N) == chunk}
        assert mine and mine <= got, chunk


@pytest.mark.parametrize("kind", ["ranges", "stream"])
def test_both_readers_serve_every_live_copy_chunk_by_chunk(cell: sa.Engine, kind: str) -> None:
    everything = _all(cell)
    source = (
        RangeReader(cell, "cell1", CELL, N)
        if kind == "ranges"
        else StreamReader(cell, "cell1", CELL, N, set(range(N + 1)))
    )
    served: dict[str, Copy] = {}
    try:
        for chunk in range(N + 1):
            copies, rows = source.take(chunk)
            assert all(bucket_of(u, N) == chunk for u in copies)
            assert rows == sum(rows_of(c) for c in copies.values())
            served.update(copies)
    finally:
        source.close()
    assert served == everything


def test_the_stream_drops_the_chunks_not_asked_for(cell: sa.Engine) -> None:
    everything = _all(cell)
    source = StreamReader(cell, "cell1", CELL, N, {1, N})
    try:
        one, _ = source.take(1)
        odd, _ = source.take(N)
    finally:
        source.close()  # every row delivered was counted, the dropped ones too
    assert one == {u: c for u, c in everything.items() if bucket_of(u, N) == 1}
    assert list(odd) == ["LEGACY-not-a-canonical-uuid"]


def test_a_stream_left_on_an_error_is_released_unchecked(cell: sa.Engine) -> None:
    """A failure elsewhere ends the diff: the stream lets go without parsing the rest or
    checking its counts, and the error that ended it is the one raised."""
    with (
        pytest.raises(RuntimeError, match="elsewhere"),
        StreamReader(cell, "cell1", CELL, N, set(range(N + 1))) as source,
    ):
        source.take(0)
        raise RuntimeError("elsewhere")
    assert sum(source.seen) < sum(source.expected)  # not parsed to the end
    with StreamReader(cell, "cell1", CELL, N, {0}) as source:
        source.take(0)
    assert source.seen == source.expected  # a clean exit reads on and checks


SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_stream_whose_connection_is_killed_leaves_no_cursor_open(
    cell: sa.Engine, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends the stream's connection mid-read: the read fails, and the
    server-side cursor is closed with it rather than left to the garbage collector."""
    streams: list[int] = []

    def note(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "UNION ALL" in statement:
            raw = conn.connection.dbapi_connection
            ident = raw.thread_id() if hasattr(raw, "thread_id") else raw.info.backend_pid
            streams.append(int(ident))

    event.listen(cell, "after_cursor_execute", note)
    try:
        source = StreamReader(cell, "cell1", CELL, N, set(range(N + 1)))
    finally:
        event.remove(cell, "after_cursor_execute", note)
    source.take(0)
    server.kill_connection(streams[0])
    with pytest.raises(ShadowDBError):
        source.close()
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    del source
    gc.collect()
    assert [u.exc_value for u in unraisable] == []


def test_account_proves_every_live_row_was_hashed(cell: sa.Engine) -> None:
    everything = _all(cell)
    tallies: dict[int, list[int]] = {}
    for uuid, copy in everything.items():
        tally = tallies.setdefault(bucket_of(uuid, N), [0, 0, 0, 0])
        tally[0] += 1
        tally[1] += len(copy.policies)
        tally[2] += len(copy.members)
    with snapshot(cell, "cell1") as conn:
        orphans = read_orphans(conn, CELL, "cell1")
        total = account(conn, CELL, "cell1", tallies, orphans)
        assert total == sum(sum(t[:3]) for t in tallies.values()) + len(orphans)
        tallies[0][2] -= 1  # one member row short
        with pytest.raises(ScanIncomplete) as caught:
            account(conn, CELL, "cell1", tallies, orphans)
    assert (caught.value.what, caught.value.expected - caught.value.seen) == (
        "instance_group_member",
        1,
    )


def test_observe_reads_both_sides_and_the_journals(topology: Topology) -> None:
    dbs = topology.dbs
    held = seed_cell_group(topology.cell_engine("cell2"), name="held")
    seed_api_group(dbs.api, uuid=held, name="api copy")
    with writer(dbs.api) as conn:
        API.journal_add(conn, held, 0)
    only_api = seed_api_group(dbs.api, name="only api")
    seen = observe(dbs, dbs.cells, {held: ("cell2",), only_api: ()})
    assert seen[held].api is not None and seen[held].api.name == "api copy"
    assert [(name, copy.name) for name, copy in seen[held].cells] == [("cell2", "held")]
    assert seen[held].journaled == ("api",)
    assert seen[only_api].cells == () and seen[only_api].journaled == ()
    assert seen[only_api].api is not None
