"""Read the copies of groups: by uuid, chunk by chunk (ranges or one ordered pass), orphans.

Level two of :mod:`shadowdb.diff`. Every row-by-row read is counted against the
database's own count in the same snapshot: a read that comes back short raises
:class:`~shadowdb.errors.ScanIncomplete`, never a report built on fewer rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from shadowdb.bulk import chunks
from shadowdb.databases import Cell, Databases, database_errors, reader
from shadowdb.diff.checksums import SPACE, Copy, Tally, bucket_of, make_copy, rows_of
from shadowdb.errors import OperationalError, ScanIncomplete
from shadowdb.queries import API, CELL, GroupTables
from shadowdb.transactions import transaction

__all__ = [
    "ChunkReader",
    "Orphan",
    "RangeReader",
    "Seen",
    "StreamReader",
    "account",
    "chunk_range",
    "count",
    "observe",
    "read_copies",
    "read_orphans",
    "snapshot",
]


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A live policy or member row whose group is absent (or, on a cell, deleted)."""

    database: str
    table: str
    row_id: int
    group_id: int
    value: str | None
    group_uuid: str | None


@dataclasses.dataclass(frozen=True)
class Seen:
    """Both sides of one key at one re-check."""

    api: Copy | None
    cells: tuple[tuple[str, Copy], ...]
    journaled: tuple[str, ...]


@contextlib.contextmanager
def snapshot(engine: sa.Engine, label: str) -> Iterator[Connection]:
    """Open a read transaction whose statements all see one snapshot."""
    with database_errors(label), engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def count(conn: Connection, table: sa.FromClause, *where: sa.ColumnElement[bool]) -> int:
    """Return the rows of ``table`` (a join too) that match ``where``."""
    stmt = sa.select(sa.func.count()).select_from(table)
    if where:
        stmt = stmt.where(*where)
    return int(conn.execute(stmt).scalar_one())


def _build(
    rows: Iterable[sa.Row[Any]], policies: dict[int, list[str]], members: dict[int, list[str]]
) -> dict[str, Copy]:
    return {
        row.uuid: make_copy(
            row.uuid,
            row.name,
            row.user_id,
            row.project_id,
            row.created_at,
            policies.get(row.id, ()),
            members.get(row.id, ()),
        )
        for row in rows
    }


def _group_columns(side: GroupTables) -> list[sa.ColumnElement[Any]]:
    g = side.groups
    return [g.c.id, g.c.uuid, g.c.name, g.c.user_id, g.c.project_id, g.c.created_at]


def _live(side: GroupTables, table: sa.Table) -> list[sa.ColumnElement[bool]]:
    return [table.c.deleted == 0] if side.soft_delete else []


def read_copies(
    conn: Connection, side: GroupTables, uuids: Sequence[str], *, lock: bool = False
) -> dict[str, Copy]:
    """Load the live copies of ``uuids`` on one side; with ``lock``, lock their rows.

    Rows are locked through the primary key in ascending id order, the order in which
    the backfill locks its batches: two lockers of many rows never wait on each other in
    a cycle (writers lock a single group row). Matching is exact: a backend whose
    collation folds case does not pair ``ABC`` with ``abc``.
    """
    g, p, m = side.groups, side.policies, side.members
    wanted = set(uuids)
    rows: list[sa.Row[Any]] = []
    for chunk in chunks(sorted(wanted)):
        stmt = sa.select(*_group_columns(side)).where(g.c.uuid.in_(chunk), *_live(side, g))
        rows.extend(r for r in conn.execute(stmt) if r.uuid in wanted)
    if lock:
        ids = sorted(r.id for r in rows)
        rows = []
        for chunk in chunks(ids):
            # Read again under the lock: a row deleted meanwhile is no longer live (a group
            # created meanwhile is a write in flight, seen by the next re-check).
            stmt = (
                sa.select(*_group_columns(side))
                .where(g.c.id.in_(chunk), *_live(side, g))
                .order_by(g.c.id)
                .with_for_update()
            )
            rows.extend(r for r in conn.execute(stmt) if r.uuid in wanted)
    policies: dict[int, list[str]] = {}
    members: dict[int, list[str]] = {}
    for chunk in chunks([r.id for r in rows]):
        for gid, policy in conn.execute(
            sa.select(p.c.group_id, p.c.policy).where(p.c.group_id.in_(chunk), *_live(side, p))
        ):
            policies.setdefault(gid, []).append(policy)
        for gid, member in conn.execute(
            sa.select(m.c.group_id, side.member_col).where(m.c.group_id.in_(chunk), *_live(side, m))
        ):
            members.setdefault(gid, []).append(member)
    return _build(rows, policies, members)


def read_orphans(conn: Connection, side: GroupTables, database: str) -> list[Orphan]:
    """List live child rows whose group is absent (or, on a cell, deleted)."""
    g = side.groups
    orphans: list[Orphan] = []
    for table, column in (
        (side.policies, side.policies.c.policy),
        (side.members, side.member_col),
    ):
        live_group = g.alias("live_group")
        any_group = g.alias("any_group")
        on = table.c.group_id == live_group.c.id
        if side.soft_delete:
            on = sa.and_(on, live_group.c.deleted == 0)
        stmt = (
            sa.select(table.c.id, table.c.group_id, column, any_group.c.uuid)
            .select_from(
                table.outerjoin(live_group, on).outerjoin(
                    any_group, table.c.group_id == any_group.c.id
                )
            )
            .where(live_group.c.id.is_(None), *_live(side, table))
            .order_by(table.c.id)
        )
        orphans.extend(
            Orphan(database, table.name, row_id, group_id, value, group_uuid)
            for row_id, group_id, value, group_uuid in conn.execute(stmt)
        )
    return orphans


def account(
    conn: Connection,
    side: GroupTables,
    label: str,
    chunks: Mapping[int, Tally],
    orphans: Sequence[Orphan],
) -> int:
    """Prove the rows hashed plus the orphans are every live row, in the same snapshot.

    Returns the live rows counted. Raises :class:`~shadowdb.errors.ScanIncomplete` if
    the tallies of ``chunks`` account for fewer (or more).
    """
    expected = {
        "instance_groups": count(conn, side.groups, *_live(side, side.groups)),
        side.policies.name: count(conn, side.policies, *_live(side, side.policies)),
        side.members.name: count(conn, side.members, *_live(side, side.members)),
    }
    by_table = Counter(o.table for o in orphans)
    for slot, table in enumerate(expected):
        seen = sum(t[slot] for t in chunks.values()) + by_table.get(table, 0)
        if seen != expected[table]:
            raise ScanIncomplete(label, table, expected[table], seen)
    return sum(expected.values())


def chunk_range(side: GroupTables, dialect: str, chunk: int, n: int) -> sa.ColumnElement[bool]:
    """Select every row of ``chunk`` among ``n`` by an index range on uuid (a few more).

    The rows of the neighbouring chunks it lets through are filtered by the caller.
    """
    uuid = side.groups.c.uuid
    if chunk == n:
        pattern = "^[0-9a-f]{8}$"
        head = sa.func.substr(uuid, 1, 8)
        if dialect == "sqlite":
            return sa.not_(head.bool_op("GLOB")("[0-9a-f]" * 8))
        if dialect == "postgresql":
            return sa.not_(head.bool_op("~")(pattern))
        binary = sa.cast(head, mysql.BINARY())
        return sa.not_(binary.bool_op("REGEXP")(sa.literal(pattern, sa.String())))
    low = -(-chunk * SPACE // n)
    high = -(-(chunk + 1) * SPACE // n)
    # Bounds one prefix wider than the chunk: for uuids starting with eight lowercase hex
    # digits, the order is settled by those digits in every collation.
    where: list[sa.ColumnElement[bool]] = []
    if low > 0:
        where.append(uuid >= f"{low - 1:08x}")
    if high < SPACE:
        where.append(uuid < f"{high:08x}")
    return sa.and_(sa.true(), *where)


class RangeReader:
    """Read a database's chunks one at a time, each by an index range on ``uuid``.

    For MariaDB/MySQL, where InnoDB indexes every foreign key: a chunk's policies and
    members are found through ``group_id``, so a chunk costs its own rows. Each chunk is
    read in its own snapshot and checked against plain counts of the same range in it.
    """

    def __init__(self, engine: sa.Engine, label: str, side: GroupTables, n: int) -> None:
        self.engine, self.label, self.side, self.n = engine, label, side, n

    def take(self, chunk: int) -> tuple[dict[str, Copy], int]:
        """Read ``chunk``; return its copies and the rows they hold."""
        side, label = self.side, self.label
        g, p, m = side.groups, side.policies, side.members
        with snapshot(self.engine, label) as conn:
            inside = chunk_range(side, conn.dialect.name, chunk, self.n)
            stmt = sa.select(*_group_columns(side)).where(inside, *_live(side, g))
            groups = conn.execute(stmt).all()
            policies: dict[int, list[str]] = {}
            members: dict[int, list[str]] = {}
            counts = [len(groups), 0, 0]
            for slot, table, column, into in (
                (1, p, p.c.policy, policies),
                (2, m, side.member_col, members),
            ):
                joined = table.join(g, table.c.group_id == g.c.id)
                where = [inside, *_live(side, g), *_live(side, table)]
                stmt = sa.select(table.c.group_id, column).select_from(joined).where(*where)
                for gid, value in conn.execute(stmt).all():
                    into.setdefault(gid, []).append(value)
                    counts[slot] += 1
                expected = count(conn, joined, *where)
                if counts[slot] != expected:
                    raise ScanIncomplete(label, table.name, expected, counts[slot])
            expected = count(conn, g, inside, *_live(side, g))
            if counts[0] != expected:
                raise ScanIncomplete(label, g.name, expected, counts[0])
        mine = [r for r in groups if bucket_of(r.uuid, self.n) == chunk]
        kept = {r.id for r in mine}
        read = len(mine)
        read += sum(len(v) for k, v in policies.items() if k in kept)
        read += sum(len(v) for k, v in members.items() if k in kept)
        return _build(mine, policies, members), read

    def close(self) -> None:
        """Nothing to release: each chunk had its own snapshot."""

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StreamReader:
    """Serve a database's chunks from one pass over it in ``uuid`` order.

    For PostgreSQL and SQLite, where Nova's schema indexes policies and members by nothing
    but their own id: reading a chunk's children would scan the whole table, chunk after
    chunk. Instead one statement (groups, policies and members, as one ``UNION ALL``
    ordered by uuid) streams the whole database once, in one snapshot; rows of chunks not
    asked for are counted and dropped, so memory holds one chunk. For eight lowercase hex
    digits every collation agrees with the numeric order, so chunks arrive in order (the
    extra chunk of odd uuids is collected on the way and served last). When the stream is
    closed, every row it delivered is checked against plain counts taken in its snapshot.
    """

    def __init__(
        self, engine: sa.Engine, label: str, side: GroupTables, n: int, wanted: set[int]
    ) -> None:
        self.n, self.label, self.side, self.wanted = n, label, side, wanted
        self._stack = contextlib.ExitStack()
        try:
            conn = self._stack.enter_context(snapshot(engine, label))
            g, p, m = side.groups, side.policies, side.members
            live = _live(side, g)
            text, stamp = sa.cast(sa.null(), sa.String()), sa.cast(sa.null(), sa.DateTime())
            selects = [
                sa.select(
                    g.c.uuid.label("uuid"),
                    g.c.id.label("gid"),
                    sa.literal(0).label("kind"),
                    g.c.name.label("a"),
                    g.c.user_id.label("b"),
                    g.c.project_id.label("c"),
                    g.c.created_at.label("d"),
                ).where(*live)
            ]
            self.expected = [count(conn, g, *live)]
            for kind, table, column in ((1, p, p.c.policy), (2, m, side.member_col)):
                joined = table.join(g, table.c.group_id == g.c.id)
                where = [*live, *_live(side, table)]
                selects.append(
                    sa.select(g.c.uuid, g.c.id, sa.literal(kind), column, text, text, stamp)
                    .select_from(joined)
                    .where(*where)
                )
                self.expected.append(count(conn, joined, *where))
            ordered = sa.union_all(*selects).order_by("uuid", "gid", "kind")
            with database_errors(label):
                result = conn.execute(
                    ordered, execution_options={"stream_results": True, "max_row_buffer": 1000}
                )
            # The server-side cursor is closed before its transaction ends, on every path:
            # a connection lost mid-stream would otherwise leave it to the garbage collector.
            self._stack.callback(result.close)
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        self.seen = [0, 0, 0]
        self._items = self._groups(result)
        self._pending: tuple[int, Copy] | None = None
        self._odd: dict[str, Copy] = {}

    def _groups(self, rows: Iterable[Any]) -> Iterator[tuple[int, Copy]]:
        """Yield (chunk, copy) for each live group of a wanted chunk, in chunk order.

        Every row delivered is counted here, against the counts :meth:`close` checks.
        """
        n, wanted, seen = self.n, self.wanted, self.seen
        current: list[Any] | None = None
        chunk = last = -1
        for uuid, _gid, kind, a, b, c, d in rows:
            seen[kind] += 1
            if kind == 0:
                if current is not None:
                    yield chunk, make_copy(*current)
                chunk = bucket_of(uuid, n)
                if chunk < n:
                    if chunk < last:
                        raise OperationalError(
                            f"{self.label}: rows came back out of uuid order; cannot compare"
                        )
                    last = chunk
                current = [uuid, a, b, c, d, [], []] if chunk in wanted else None
            elif current is not None:
                current[4 + kind].append(a)
        if current is not None:
            yield chunk, make_copy(*current)

    def take(self, chunk: int) -> tuple[dict[str, Copy], int]:
        """Return the copies of ``chunk`` (asked for in ascending order) and their rows."""
        out: dict[str, Copy] = {}
        while True:
            with database_errors(self.label):
                item = self._pending or next(self._items, None)
            self._pending = None
            if item is None:
                break
            found, copy = item
            if found == self.n:
                self._odd[copy.uuid] = copy  # odd uuids come anywhere: served last
            elif found > chunk:
                self._pending = item
                break
            elif found == chunk:
                out[copy.uuid] = copy
        if chunk == self.n:
            out = self._odd
        return out, sum(rows_of(c) for c in out.values())

    def close(self) -> None:
        """Read to the end, check every row was delivered, release the snapshot.

        If the reading fails, the snapshot is rolled back and the error raised is the
        reading's, translated like any other.
        """
        with self._stack, database_errors(self.label):
            for _ in self._items:
                pass
            tables = (self.side.groups, self.side.policies, self.side.members)
            for table, expected, seen in zip(tables, self.expected, self.seen, strict=True):
                if seen != expected:
                    raise ScanIncomplete(self.label, table.name, expected, seen)

    def release(self, *exc_info: Any) -> None:
        """Give up the stream without checking it (a failure elsewhere ended the diff).

        Nothing more is parsed or counted. PostgreSQL closes its cursor with one
        ``CLOSE``; PyMySQL closes a streaming cursor only by reading the rows left off the
        socket, so on MariaDB/MySQL the rest of the stream is still downloaded (and
        dropped) before the snapshot ends. Dropping the connection instead leaves the
        cursor to fail in the garbage collector.
        """
        self._stack.__exit__(*(exc_info or (None, None, None)))

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Prove the reads complete on a clean exit; on an error, only let go (:meth:`release`)."""
        if exc_info[0] is None:
            self.close()
        else:
            self.release(*exc_info)


#: How one database's chunks are read row by row.
ChunkReader = RangeReader | StreamReader


def observe(
    dbs: Databases, cells: Sequence[Cell], pending: Mapping[str, tuple[str, ...]]
) -> dict[str, Seen]:
    """Read both sides of each pending key, holding its live cell row's lock.

    ``pending`` maps each key to the cells that held it live when last read; the first
    one is locked the way writers lock it (:mod:`shadowdb.locks`).
    """
    by_cell: dict[str | None, list[str]] = {}
    for uuid, held in pending.items():
        by_cell.setdefault(held[0] if held else None, []).append(uuid)
    seen: dict[str, Seen] = {}
    for name, uuids in by_cell.items():
        holder = next((c for c in cells if c.name == name), None)
        with contextlib.ExitStack() as stack:
            locked: dict[str, Copy] = {}
            if holder is not None:
                # The writers' lock order: the cell row first, then the API database.
                conn = stack.enter_context(transaction(holder.engine, holder.label))
                locked = read_copies(conn, CELL, uuids, lock=True)
            seen.update(_read_both(dbs, cells, uuids, holder, locked))
    return seen


def _read_both(
    dbs: Databases,
    cells: Sequence[Cell],
    uuids: list[str],
    holder: Cell | None,
    locked: dict[str, Copy],
) -> dict[str, Seen]:
    with reader(dbs.api, dbs.api_label) as conn:
        api = read_copies(conn, API, uuids)
        journaled = {u: ["api"] for u in API.journaled(conn, uuids)}
    held: dict[str, list[tuple[str, Copy]]] = {}
    for cell in cells:
        if holder is not None and cell.uuid == holder.uuid:
            copies = locked
        else:
            with reader(cell.engine, cell.label) as conn:
                copies = read_copies(conn, CELL, uuids)
        with reader(cell.engine, cell.label) as conn:
            for uuid in CELL.journaled(conn, uuids):
                journaled.setdefault(uuid, []).append(cell.name)
        for uuid, copy in copies.items():
            held.setdefault(uuid, []).append((cell.name, copy))
    return {
        uuid: Seen(api.get(uuid), tuple(held.get(uuid, ())), tuple(journaled.get(uuid, ())))
        for uuid in uuids
    }
