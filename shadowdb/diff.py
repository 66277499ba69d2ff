"""Compare every cell's live groups with the API database's copies, by uuid: the diff report.

The diff report is what ``phase set`` trusts before the API database becomes the
authority, so it is built against the ways such tools mislead: it never samples, a scan
that read fewer rows than the database holds is an error, its checksum has no practical
collisions, and a write in flight is not reported as a divergence.

Two levels
==========

1. **Checksums per chunk.** The uuid key space is cut into ``n`` chunks by the uuid's
   first eight hex digits (``bucket = prefix * n >> 32``, ``n`` sized so that a chunk
   holds about ``chunk_size`` groups; uuids whose first eight characters are not
   lowercase hex share one extra chunk, ``n``). For every database, one aggregate query
   per table computes, per chunk, the number of rows and a checksum: every live row
   (group, policy, member) is written as a canonical line (``g``/``p``/``m``, then each
   field as ``<length>:<value>`` or ``~`` for NULL; ``created_at`` to the second), its
   MD5 digest is read as a 128-bit number, and the numbers are summed modulo 2**128.
   MariaDB (``MD5``, ``CONV``, exact ``SUM`` of two 64-bit halves) and PostgreSQL
   (``md5`` once per row, exact sums of four 32-bit quarters) compute this inside the
   database; SQLite streams the rows through the same function in Python. Sums are
   additive, so the cell side of a chunk is the sum over every cell, and it must equal
   the API side.
2. **Rows, only where a chunk differs.** Each differing chunk is read from every
   database and compared group by group: fields, the policy multiset, the member
   multiset. A database is read either chunk by chunk through an index range on
   ``uuid`` (MariaDB, whose InnoDB indexes the children's ``group_id``, while at most a
   quarter of the chunks differ) or in one pass ordered by ``uuid`` that keeps only the
   differing chunks, one at a time (PostgreSQL and SQLite, where Nova's schema has no
   index to find a group's children by, so a per-chunk read would scan them all each
   time; or when many chunks differ). Memory holds one chunk either way.

Why this checksum
    Each row contributes the 128 bits of its MD5 digest, and the sums are compared
    together with the exact row counts of each table. For data nobody crafted to collide,
    two different chunks agree with probability 2**-128 per chunk: no practical
    collision. (MD5's known weakness is crafted collisions of binary blocks, which no
    length-prefixed line of short text fields can carry; it is the hash both servers
    compute fastest, and an additive sum would be the weaker link against an adversary
    whatever the hash.) Unlike a ``BIT_XOR`` of row hashes (pt-table-checksum), a sum
    does not cancel out a duplicated row, and the length-prefixed encoding makes field boundaries
    unambiguous (``"ab" + "c"`` never hashes like ``"a" + "bc"``; NULL is not ``""``).
    The Python implementation is the reference: tests check that each backend's SQL
    yields the same sums on the same rows, odd values included.

Counting every row
==================

Each database's checksums are computed in one snapshot (``REPEATABLE READ`` on the
servers, one read transaction on SQLite), together with plain ``count(*)`` of its three
tables and the list of orphan rows. The rows hashed, chunk by chunk, plus the orphans
must equal the plain counts exactly: otherwise :class:`~shadowdb.errors.ScanIncomplete`
is raised and the run ends in error (exit 2), never "clean". Rows read row by row are
checked the same way: a chunk read by range against a count of that range in its
snapshot, a pass against counts taken in the pass's snapshot, once it has read to the end.

Live traffic
============

The databases are scanned one after the other while writers go on, so a group written
between the two scans differs. Every key that differs is therefore *re-checked* before it
is reported: its live cell row is locked the way every writer locks it (cell first,
``SELECT ... FOR UPDATE``; :mod:`shadowdb.sync`), then both copies and both journals are
read. A dual-write writer holds that lock until both of its commits are done, and a write
whose second half failed leaves a journal entry, so:

* a key that is level under the lock is dropped (it was a write in flight);
* a key with pending journal entries is re-checked after they drain;
* a key is reported only when it differs, with no journal entry pending, in two re-checks
  at least ``Settings.write_grace`` apart (the longest a write takes) that saw exactly the
  same copies. A key still changing after every re-check is reported as last seen, with
  its pending journal flagged.

What is authoritative, and ``--repair``
=======================================

Every difference is reported with the side the current phase trusts: the cell in
``cell-only`` and ``dual-write-cell-reads``; the API database in ``dual-write-api-reads``
and ``api-only``, except that in ``dual-write-api-reads`` a group missing from the API
database is still the cell's (the phase adopts cell copies it has not seen yet). With
``repair`` every such key gets an entry in the journal of its authoritative side: the API
journal, or the journal of the cell that holds the group (the default cell for a group no
cell holds). The next ``shadowdb backfill`` replays it, copying the authoritative state to
the other side under the lock. Keys with no authoritative copy (a uuid live in two cells,
orphan rows) are reported and not enqueued.

Duplicate rows
==============

Nova's tables have no unique constraint on a group's policies or members, and legacy
cells hold groups with two live rows for one member. A group's policies and members are
*sets*: every copy shadowdb writes holds each once, and two copies are compared as sets
(:data:`shadowdb.queries.COMPARED_FIELDS`, the one definition backfill and the
synchroniser use too). Duplicate rows are therefore not a difference and never block a
phase change: the report counts the groups that hold them (``legacy_duplicates``) as
legacy noise. The checksums still hash every row, so a chunk holding such a group is
always compared row by row, where the sets decide; the cost is that chunk's rows.
Nothing rewrites them in the cell: the reverse copy (``backfill --reverse``) writes the
set, as any copy does.

``cell`` limits a run to one cell's groups: with the API holding every cell's groups, no
checksum can stand for one cell's share, so that cell is compared row by row with the API
copies of its uuids. Such a run cannot see API groups that no cell holds, and does not
admit a phase change (:class:`shadowdb.switcher.CleanRecentDiff`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from shadowdb import signals
from shadowdb.databases import Cell, Databases, database_errors, reader, writer
from shadowdb.errors import InvalidInput, OperationalError, ScanIncomplete, ShadowDBError
from shadowdb.fence import lagging, settle
from shadowdb.models import api_diff_results
from shadowdb.phase import Phase, PhaseState, utcnow
from shadowdb.queries import API, CELL, COMPARED_FIELDS, GroupTables, to_second
from shadowdb.sync import default_cell, one_line, transaction

__all__ = [
    "DEFAULT_CHUNK",
    "Copy",
    "DiffKind",
    "DiffReport",
    "Differ",
    "Finding",
    "Progress",
    "RowCounts",
    "StoredResult",
    "authority",
    "bucket_of",
    "canonical_lines",
    "last_result",
    "run_diff",
]

log = structlog.get_logger(__name__)

#: Groups per chunk unless told otherwise.
DEFAULT_CHUNK = 1000
#: Re-checks of a differing key before it is reported as last seen.
RECHECKS = 4

_SPACE = 1 << 32
_MASK = (1 << 128) - 1
_PREFIX = re.compile(r"[0-9a-f]{8}")
#: Rows per ``IN (...)`` list: under every backend's bind-parameter limit.
_IN = 500

#: Called with (stage, done, total) as a run progresses.
Progress = Callable[[str, int, int], None]


class DiffKind(enum.Enum):
    """The kinds of difference, in the order reports list them."""

    MISSING_IN_API = "missing-in-api"
    MISSING_IN_CELLS = "missing-in-cells"
    FIELD_MISMATCH = "field-mismatch"
    POLICY_MISMATCH = "policy-mismatch"
    MEMBER_MISMATCH = "member-mismatch"
    LIVE_IN_TWO_CELLS = "live-in-two-cells"
    ORPHAN = "orphan"

    @property
    def order(self) -> int:
        """Position in reports."""
        return list(DiffKind).index(self)


def authority(phase: Phase, kind: DiffKind) -> str | None:
    """Return the side ``phase`` trusts for a difference of ``kind``: "api", "cell" or None."""
    if kind in (DiffKind.LIVE_IN_TWO_CELLS, DiffKind.ORPHAN):
        return None
    if phase in (Phase.CELL_ONLY, Phase.DUAL_WRITE_CELL_READS):
        return "cell"
    if phase is Phase.DUAL_WRITE_API_READS and kind is DiffKind.MISSING_IN_API:
        # The phase's writers adopt a cell copy the API database lacks: it is the group.
        return "cell"
    return "api"


# --------------------------------------------------------------------------- canonical rows


def bucket_of(uuid: str, n: int) -> int:
    """Return the chunk of ``uuid`` among ``n`` (``n`` itself for a non-canonical uuid)."""
    head = uuid[:8]
    if _PREFIX.fullmatch(head):
        return int(head, 16) * n >> 32
    return n


def _enc(value: str | None) -> str:
    return "~" if value is None else f"{len(value)}:{value}"


def _stamp(when: dt.datetime | None) -> str | None:
    if when is None:
        return None
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )


def _group_line(
    uuid: str, name: str | None, user: str | None, project: str | None, created: dt.datetime | None
) -> str:
    return "g" + _enc(uuid) + _enc(name) + _enc(user) + _enc(project) + _enc(_stamp(created))


def _hash(line: str) -> int:
    """Return the MD5 digest of a canonical line as a 128-bit number."""
    return int.from_bytes(hashlib.md5(line.encode("utf-8"), usedforsecurity=False).digest())


#: How SQLAlchemy stores a DateTime in SQLite; ``created_at`` to the second is its head.
_SQLITE_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?")


@dataclasses.dataclass(frozen=True)
class Copy:
    """One live copy of a group, as compared: the per-database id left out.

    ``policies`` and ``members`` are sorted sets (:data:`~shadowdb.queries.COMPARED_FIELDS`):
    duplicate live rows, which Nova's tables allowed, are one policy or member, and
    ``duplicates`` counts the rows beyond the first (not compared; the report notes them).
    ``created_at`` is kept to the second (the precision of Nova's MySQL columns).
    """

    uuid: str
    name: str | None
    user_id: str | None
    project_id: str | None
    created_at: dt.datetime | None
    policies: tuple[str, ...]
    members: tuple[str, ...]
    duplicates: int = dataclasses.field(default=0, compare=False)

    def values(self) -> dict[str, Any]:
        """Return the compared data, JSON-ready."""
        return {
            "name": self.name,
            "user_id": self.user_id,
            "project_id": self.project_id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "policies": list(self.policies),
            "members": list(self.members),
        }


def canonical_lines(copy: Copy) -> list[str]:
    """Return the canonical lines of one copy: the group row, then each policy and member."""
    lines = [_group_line(copy.uuid, copy.name, copy.user_id, copy.project_id, copy.created_at)]
    lines.extend("p" + _enc(copy.uuid) + _enc(p) for p in copy.policies)
    lines.extend("m" + _enc(copy.uuid) + _enc(m) for m in copy.members)
    return lines


# --------------------------------------------------------------------------- per-backend SQL


class _ServerSql:
    """The checksum SQL of MariaDB/MySQL or PostgreSQL, as text with bound parameters."""

    def __init__(self, dialect: str) -> None:
        self.mysql = dialect in ("mysql", "mariadb")

    def canonical_prefix(self, uuid: str) -> str:
        if self.mysql:
            return f"(CAST(SUBSTRING({uuid}, 1, 8) AS BINARY) REGEXP :pat)"
        return f"(substr({uuid}, 1, 8) ~ :pat)"

    def bucket(self, uuid: str) -> str:
        if self.mysql:
            value = f"CAST(CONV(SUBSTRING({uuid}, 1, 8), 16, 10) AS UNSIGNED)"
            scaled = f"{value} * :n DIV 4294967296"
        else:
            value = f"('x' || substr({uuid}, 1, 8))::bit(32)::bigint"
            scaled = f"({value} * :n) / 4294967296"
        return f"CASE WHEN {self.canonical_prefix(uuid)} THEN {scaled} ELSE :n END"

    def enc(self, expr: str) -> str:
        if self.mysql:
            return f"COALESCE(CONCAT(CHAR_LENGTH({expr}), ':', {expr}), '~')"
        return f"COALESCE(char_length({expr})::text || ':' || {expr}, '~')"

    def stamp(self, expr: str) -> str:
        if self.mysql:
            return f"DATE_FORMAT({expr}, :fmt)"
        return f"to_char({expr}, :fmt)"

    @property
    def stamp_format(self) -> str:
        return "%Y-%m-%d %H:%i:%s" if self.mysql else "YYYY-MM-DD HH24:MI:SS"

    def cat(self, parts: Sequence[str]) -> str:
        if self.mysql:
            return f"CONCAT({', '.join(parts)})"
        return "(" + " || ".join(parts) + ")"

    @property
    def widths(self) -> tuple[int, ...]:
        """The bits of each part the digest is summed in, most significant first."""
        return (64, 64) if self.mysql else (32, 32, 32, 32)

    def tally(self, side: GroupTables, kind: str) -> sa.TextClause:
        """Return the aggregate of one table: (chunk, rows hashed, part sums...) per chunk."""
        live = "g.deleted = 0" if side.soft_delete else "1 = 1"
        if kind == "g":
            line = self.cat(
                [
                    "'g'",
                    self.enc("g.uuid"),
                    self.enc("g.name"),
                    self.enc("g.user_id"),
                    self.enc("g.project_id"),
                    self.enc(self.stamp("g.created_at")),
                ]
            )
            source = f"{side.groups.name} g"
        else:
            table, column = (
                (side.policies, "policy") if kind == "p" else (side.members, side.member_col.key)
            )
            line = self.cat([f"'{kind}'", self.enc("g.uuid"), self.enc(f"c.{column}")])
            source = f"{table.name} c JOIN {side.groups.name} g ON g.id = c.group_id"
            if side.soft_delete:
                live += " AND c.deleted = 0"
        bucket = self.bucket("g.uuid")
        if self.mysql:
            # Unsigned 64-bit halves (CONV), summed exactly as DECIMAL. COUNT of a half,
            # not of the row: a row whose hash came out NULL would not be counted, and the
            # plain count would then show the scan as short.
            one, two = (
                f"CAST(CONV(SUBSTRING(MD5({line}), {start}, 16), 16, 10) AS UNSIGNED)"
                for start in (1, 17)
            )
            sql = (
                f"SELECT {bucket} AS chunk, COUNT({one}) AS hashed, SUM({one}), SUM({two}) "
                f"FROM {source} WHERE {live} GROUP BY 1"
            )
        else:
            # md5 once per row (OFFSET 0 keeps the subquery from being folded into the
            # aggregate, which would evaluate it once per use); unsigned 32-bit quarters
            # (bit(32) -> bigint), summed exactly as numeric.
            quarters = ", ".join(
                f"SUM(('x' || substr(h, {start}, 8))::bit(32)::bigint)" for start in (1, 9, 17, 25)
            )
            sql = (
                f"SELECT chunk, COUNT(h) AS hashed, {quarters} FROM "
                f"(SELECT {bucket} AS chunk, md5({line}) AS h FROM {source} WHERE {live} "
                "OFFSET 0) AS hashed_rows GROUP BY 1"
            )
        params: dict[str, Any] = {"pat": "^[0-9a-f]{8}$"}
        if kind == "g":
            params["fmt"] = self.stamp_format
        return sa.text(sql).bindparams(**params)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Finding:
    """One differing key.

    Attributes:
        kind: what differs.
        key: the group uuid, or ``<database>:<table>:<row id>`` for an orphan row.
        group_uuid: the group concerned (for an orphan, its deleted group's uuid if known).
        authoritative: the side the phase trusts ("api" or "cell"), None if neither.
        cells: the cells holding a live copy.
        api: the API side's values (``None`` if absent or with ``keys_only``).
        cell: the cell side's values (per cell name for ``live-in-two-cells``).
        detail: one readable line.
        journal_pending: journal entries were still pending at the last re-check.
        repair: what ``repair`` did for this key (``None`` without ``repair``).
    """

    kind: DiffKind
    key: str
    group_uuid: str | None
    authoritative: str | None
    cells: tuple[str, ...]
    api: dict[str, Any] | None
    cell: dict[str, Any] | None
    detail: str
    journal_pending: bool = False
    repair: str | None = None


@dataclasses.dataclass(frozen=True)
class RowCounts:
    """How much a run read, side by side.

    Attributes:
        api_hashed: API rows checksummed (groups, policies, members, orphans).
        cells_hashed: cell rows checksummed, every cell together.
        api_compared: API rows read row by row (chunks that differed, re-checks excluded).
        cells_compared: cell rows read row by row.
        chunks: chunks of the key space.
        chunks_differing: chunks whose checksums differed.
        rechecked: keys re-checked under the lock.
        cleared: re-checked keys that turned out level (writes in flight).
        legacy_duplicates: groups read row by row whose copies hold duplicate live policy
            or member rows (compared as sets: noted, not a difference).
    """

    api_hashed: int = 0
    cells_hashed: int = 0
    api_compared: int = 0
    cells_compared: int = 0
    chunks: int = 0
    chunks_differing: int = 0
    rechecked: int = 0
    cleared: int = 0
    legacy_duplicates: int = 0


@dataclasses.dataclass(frozen=True)
class DiffReport:
    """What a diff-report run found.

    Attributes:
        started_at: when the run started (UTC).
        finished_at: when it finished.
        phase: the phase at the start.
        epoch: the phase epoch at the start.
        scope: "all", or the one cell compared.
        clean: no difference at all.
        total: differing keys found (every one, whatever ``limit``).
        counts: differing keys per kind.
        findings: the differing keys, by kind then key (the first ``limit`` if given).
        limit: the ``limit`` asked for.
        keys_only: values were left out.
        rows: how much was read.
        repaired: keys enqueued for repair.
        not_repaired: differing keys ``repair`` left alone (no authoritative copy).
    """

    started_at: dt.datetime
    finished_at: dt.datetime
    phase: str
    epoch: int
    scope: str
    clean: bool
    total: int
    counts: dict[str, int]
    findings: tuple[Finding, ...]
    limit: int | None
    keys_only: bool
    rows: RowCounts
    repaired: int
    not_repaired: int


@dataclasses.dataclass(frozen=True)
class StoredResult:
    """A diff-report run as recorded in ``shadowdb_diff_results``."""

    id: int
    started_at: dt.datetime
    finished_at: dt.datetime
    phase: str
    epoch: int
    scope: str
    outcome: str
    differences: int
    counts: dict[str, int]
    rows_api: int
    rows_cells: int
    repaired: int
    actor: str
    detail: str | None
    #: The uuids of the cells the run compared (empty for runs recorded before shadowdb
    #: kept them: such a run gates nothing).
    cells: tuple[str, ...] = ()
    #: Differences no pending journal entry explained (None: not recorded).
    unexplained: int | None = None
    #: Of those, in ``api-only``: cell groups the API database never had, with no
    #: deletion on record (a cell registered late). ``dual-write-api-reads`` copies them.
    never_copied: int | None = None


def last_result(conn: Connection) -> StoredResult | None:
    """Return the newest recorded diff-report run, if any."""
    t = api_diff_results
    row = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    return StoredResult(
        id=row.id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        phase=row.phase,
        epoch=row.epoch,
        scope=row.scope,
        outcome=row.outcome,
        differences=row.differences,
        counts=json.loads(row.counts) if row.counts else {},
        rows_api=row.rows_api,
        rows_cells=row.rows_cells,
        repaired=row.repaired,
        actor=row.actor,
        detail=row.detail,
        cells=tuple(c for c in (row.cells or "").split(",") if c),
        unexplained=row.unexplained,
        never_copied=row.never_copied,
    )


# --------------------------------------------------------------------------- the differ


@dataclasses.dataclass(frozen=True)
class _Orphan:
    database: str
    table: str
    row_id: int
    group_id: int
    value: str | None
    group_uuid: str | None


@dataclasses.dataclass
class _Scan:
    """One database's checksums, counted."""

    label: str
    chunks: dict[int, list[int]]  # chunk -> [groups, policies, members, sum of digests]
    orphans: list[_Orphan]
    hashed: int = 0


@dataclasses.dataclass(frozen=True)
class _Seen:
    """Both sides of one key at one re-check."""

    api: Copy | None
    cells: tuple[tuple[str, Copy], ...]
    journaled: tuple[str, ...]


@contextlib.contextmanager
def _snapshot(engine: sa.Engine, label: str) -> Iterator[Connection]:
    """Open a read transaction whose statements all see one snapshot."""
    with database_errors(label), engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def _count(conn: Connection, table: sa.FromClause, *where: sa.ColumnElement[bool]) -> int:
    stmt = sa.select(sa.func.count()).select_from(table)
    if where:
        stmt = stmt.where(*where)
    return int(conn.execute(stmt).scalar_one())


def _delivered(rows: Iterable[Any]) -> Iterable[Any]:
    """Pass on the rows of a row-by-row read as the driver delivers them.

    Every row that comes through here is counted against the database's own count.
    """
    return rows


def _fetch(conn: Connection, stmt: sa.Select[Any]) -> list[sa.Row[Any]]:
    """Run a row-by-row read and return its rows, as delivered."""
    return list(_delivered(conn.execute(stmt)))


def _chunked(values: Sequence[Any], size: int = _IN) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _make_copy(
    uuid: str,
    name: str | None,
    user: str | None,
    project: str | None,
    created: dt.datetime | None,
    policies: Sequence[str],
    members: Sequence[str],
) -> Copy:
    """Build the compared form of one copy from its rows (:class:`Copy`)."""
    distinct_policies, distinct_members = sorted(set(policies)), sorted(set(members))
    return Copy(
        uuid=uuid,
        name=name,
        user_id=user,
        project_id=project,
        created_at=to_second(created),
        policies=tuple(distinct_policies),
        members=tuple(distinct_members),
        duplicates=len(policies) - len(distinct_policies) + len(members) - len(distinct_members),
    )


def _build(
    rows: Iterable[sa.Row[Any]], policies: dict[int, list[str]], members: dict[int, list[str]]
) -> dict[str, Copy]:
    return {
        row.uuid: _make_copy(
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
    for chunk in _chunked(sorted(wanted)):
        stmt = sa.select(*_group_columns(side)).where(g.c.uuid.in_(chunk), *_live(side, g))
        rows.extend(r for r in conn.execute(stmt) if r.uuid in wanted)
    if lock:
        ids = sorted(r.id for r in rows)
        rows = []
        for chunk in _chunked(ids):
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
    for chunk in _chunked([r.id for r in rows]):
        for gid, policy in conn.execute(
            sa.select(p.c.group_id, p.c.policy).where(p.c.group_id.in_(chunk), *_live(side, p))
        ):
            policies.setdefault(gid, []).append(policy)
        for gid, member in conn.execute(
            sa.select(m.c.group_id, side.member_col).where(m.c.group_id.in_(chunk), *_live(side, m))
        ):
            members.setdefault(gid, []).append(member)
    return _build(rows, policies, members)


class _Ranges:
    """Read a database's chunks one at a time, each by an index range on ``uuid``.

    For MariaDB/MySQL, where InnoDB indexes every foreign key: a chunk's policies and
    members are found through ``group_id``, so a chunk costs its own rows. Each chunk is
    read in its own snapshot and checked against plain counts of the same range in it.
    """

    def __init__(self, differ: Differ, engine: sa.Engine, label: str, side: GroupTables) -> None:
        self.differ, self.engine, self.label, self.side = differ, engine, label, side

    def take(self, chunk: int) -> tuple[dict[str, Copy], int]:
        """Read ``chunk``; return its copies and the rows they hold."""
        side, label = self.side, self.label
        g, p, m = side.groups, side.policies, side.members
        with _snapshot(self.engine, label) as conn:
            inside = self.differ._superset(side, conn, chunk)
            rows = _fetch(conn, sa.select(*_group_columns(side)).where(inside, *_live(side, g)))
            policies: dict[int, list[str]] = {}
            members: dict[int, list[str]] = {}
            counts = [len(rows), 0, 0]
            for slot, table, column, into in (
                (1, p, p.c.policy, policies),
                (2, m, side.member_col, members),
            ):
                joined = table.join(g, table.c.group_id == g.c.id)
                where = [inside, *_live(side, g), *_live(side, table)]
                stmt = sa.select(table.c.group_id, column).select_from(joined).where(*where)
                pairs: list[Any] = _fetch(conn, stmt)
                for gid, value in pairs:
                    into.setdefault(gid, []).append(value)
                    counts[slot] += 1
                expected = _count(conn, joined, *where)
                if counts[slot] != expected:
                    raise ScanIncomplete(label, table.name, expected, counts[slot])
            expected = _count(conn, g, inside, *_live(side, g))
            if counts[0] != expected:
                raise ScanIncomplete(label, g.name, expected, counts[0])
        mine = [r for r in rows if bucket_of(r.uuid, self.differ.n) == chunk]
        kept = {r.id for r in mine}
        read = len(mine)
        read += sum(len(v) for k, v in policies.items() if k in kept)
        read += sum(len(v) for k, v in members.items() if k in kept)
        return _build(mine, policies, members), read

    def close(self) -> None:
        """Nothing to release: each chunk had its own snapshot."""


class _Stream:
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
        self, differ: Differ, engine: sa.Engine, label: str, side: GroupTables, wanted: set[int]
    ) -> None:
        self.n, self.label, self.side, self.wanted = differ.n, label, side, wanted
        self._stack = contextlib.ExitStack()
        try:
            conn = self._stack.enter_context(_snapshot(engine, label))
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
            self.expected = [_count(conn, g, *live)]
            for kind, table, column in ((1, p, p.c.policy), (2, m, side.member_col)):
                joined = table.join(g, table.c.group_id == g.c.id)
                where = [*live, *_live(side, table)]
                selects.append(
                    sa.select(g.c.uuid, g.c.id, sa.literal(kind), column, text, text, stamp)
                    .select_from(joined)
                    .where(*where)
                )
                self.expected.append(_count(conn, joined, *where))
            ordered = sa.union_all(*selects).order_by("uuid", "gid", "kind")
            result = conn.execute(
                ordered, execution_options={"stream_results": True, "max_row_buffer": 1000}
            )
        except BaseException:
            self._stack.close()
            raise
        self.seen = [0, 0, 0]
        self._items = self._groups(_delivered(result))
        self._pending: tuple[int, Copy] | None = None
        self._odd: dict[str, Copy] = {}

    def _groups(self, rows: Iterable[Any]) -> Iterator[tuple[int, Copy]]:
        """Yield (chunk, copy) for each live group of a wanted chunk, in chunk order."""
        n, wanted, seen = self.n, self.wanted, self.seen
        current: list[Any] | None = None
        chunk = last = -1
        for uuid, _gid, kind, a, b, c, d in rows:
            seen[kind] += 1
            if kind == 0:
                if current is not None:
                    yield chunk, _copy(current)
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
            yield chunk, _copy(current)

    def take(self, chunk: int) -> tuple[dict[str, Copy], int]:
        """Return the copies of ``chunk`` (asked for in ascending order) and their rows."""
        out: dict[str, Copy] = {}
        while True:
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
        return out, sum(_rows_of(c) for c in out.values())

    def close(self) -> None:
        """Read to the end, check every row was delivered, release the snapshot."""
        try:
            for _ in self._items:
                pass
            tables = (self.side.groups, self.side.policies, self.side.members)
            for table, expected, seen in zip(tables, self.expected, self.seen, strict=True):
                if seen != expected:
                    raise ScanIncomplete(self.label, table.name, expected, seen)
        finally:
            self._stack.close()


def _rows_of(copy: Copy) -> int:
    """Return the live rows one copy was read from."""
    return 1 + len(copy.policies) + len(copy.members) + copy.duplicates


def _copy(parts: list[Any]) -> Copy:
    return _make_copy(*parts)


class Differ:
    """Compare the cells with the API database (module docstring); report nothing unproven."""

    def __init__(
        self,
        dbs: Databases,
        *,
        cell: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rechecks: int = RECHECKS,
    ) -> None:
        if chunk_size < 1:
            raise InvalidInput("chunk size must be a whole number >= 1")
        if rechecks < 2:
            raise InvalidInput("a key needs at least two re-checks")
        self.dbs = dbs
        self.cells: tuple[Cell, ...] = dbs.refresh_cells()
        self.only: Cell | None = dbs.cell(cell) if cell else None
        self.chunk_size = chunk_size
        self._progress = progress
        self._sleep = sleep
        self.rechecks = rechecks
        self.state: PhaseState = dbs.phases.fresh()
        self.n = 1
        self._rows = dict.fromkeys(
            (
                "api_hashed",
                "cells_hashed",
                "api_compared",
                "cells_compared",
                "chunks",
                "chunks_differing",
                "rechecked",
                "cleared",
            ),
            0,
        )
        self._seen: dict[str, _Seen] = {}
        self._orphans: list[_Orphan] = []
        self._duplicated: set[str] = set()

    # ------------------------------------------------------------------ running

    def run(self) -> tuple[list[Finding], RowCounts]:
        """Compare, re-check and return every confirmed difference, by kind then key.

        Raises:
            ScanIncomplete: a database held rows the scan did not account for.
            DatabaseUnreachable: a database could not be read (nothing is skipped).
        """
        if self.only is not None:
            self._run_one_cell(self.only)
        else:
            self._run_all()
        findings = self._findings()
        findings.sort(key=lambda f: (f.kind.order, f.key))
        return findings, RowCounts(**self._rows, legacy_duplicates=len(self._duplicated))

    def _report(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(stage, done, total)

    def _size(self, groups: int) -> None:
        self.n = max(1, -(-groups // self.chunk_size))
        self._rows["chunks"] = self.n + 1

    def _run_all(self) -> None:
        with reader(self.dbs.api, self.dbs.api_label) as conn:
            biggest = _count(conn, API.groups)
        for cell in self.cells:
            with reader(cell.engine, cell.label) as conn:
                biggest = max(biggest, _count(conn, CELL.groups, CELL.groups.c.deleted == 0))
        self._size(biggest)
        databases = 1 + len(self.cells)
        self._report("checksums", 0, databases)
        api = self._scan(self.dbs.api, self.dbs.api_label, API, "api")
        self._rows["api_hashed"] = api.hashed
        self._report("checksums", 1, databases)
        cells: dict[int, list[int]] = {}
        for done, cell in enumerate(self.cells, start=2):
            scan = self._scan(cell.engine, cell.label, CELL, cell.name)
            self._rows["cells_hashed"] += scan.hashed
            for chunk, tally in scan.chunks.items():
                total = cells.setdefault(chunk, [0, 0, 0, 0])
                for i, value in enumerate(tally):
                    total[i] += value
            self._report("checksums", done, databases)
        differing = [
            chunk
            for chunk in range(self.n + 1)
            if _norm(api.chunks.get(chunk)) != _norm(cells.get(chunk))
        ]
        self._rows["chunks_differing"] = len(differing)
        log.debug("diff_checksums", chunks=self.n + 1, differing=len(differing))
        if differing:
            self._compare(differing)

    # ------------------------------------------------------------------ level one

    def _scan(self, engine: sa.Engine, label: str, side: GroupTables, database: str) -> _Scan:
        """Checksum one database per chunk, in one snapshot, and prove every row counted."""
        with _snapshot(engine, label) as conn:
            scan = _Scan(label, {}, [])
            if conn.dialect.name == "sqlite":
                self._python_tallies(conn, side, scan)
            else:
                sql = _ServerSql(conn.dialect.name)
                for slot, kind in enumerate(("g", "p", "m")):
                    for chunk, hashed, *parts in conn.execute(sql.tally(side, kind), {"n": self.n}):
                        tally = scan.chunks.setdefault(int(chunk), [0, 0, 0, 0])
                        tally[slot] += int(hashed)
                        total = 0
                        for width, part in zip(sql.widths, parts, strict=True):
                            total = (total << width) + int(part or 0)
                        tally[3] += total
            scan.chunks = self._checked_chunks(scan.chunks)
            scan.orphans = self._read_orphans(conn, side, database)
            self._orphans.extend(scan.orphans)
            self._verify(conn, side, label, scan)
        return scan

    def _checked_chunks(self, chunks: dict[int, list[int]]) -> dict[int, list[int]]:
        """Keep the chunks of the key space; a row counted nowhere shows in the totals."""
        return {c: t for c, t in chunks.items() if 0 <= c <= self.n}

    def _python_tallies(self, conn: Connection, side: GroupTables, scan: _Scan) -> None:
        """Compute the checksums in Python, streaming (SQLite has no MD5).

        The hot loop of a SQLite diff: the driver's own cursor, the canonical line inlined
        (:func:`canonical_lines` spells it out), one digest per row.
        """
        n, chunks = self.n, scan.chunks
        md5, from_bytes, canonical = hashlib.md5, int.from_bytes, _PREFIX.fullmatch
        stamp_of = self._sqlite_stamp(conn)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            live = " WHERE g.deleted = 0" if side.soft_delete else ""
            cursor.execute(
                "SELECT g.uuid, g.name, g.user_id, g.project_id, g.created_at "
                f"FROM {side.groups.name} g{live}"
            )
            for uuid, name, user, project, created in cursor:
                stamp = stamp_of(created)
                line = (
                    f"g{len(uuid)}:{uuid}"
                    + ("~" if name is None else f"{len(name)}:{name}")
                    + ("~" if user is None else f"{len(user)}:{user}")
                    + ("~" if project is None else f"{len(project)}:{project}")
                    + ("~" if stamp is None else f"{len(stamp)}:{stamp}")
                )
                head = uuid[:8]
                chunk = int(head, 16) * n >> 32 if canonical(head) else n
                tally = chunks.get(chunk)
                if tally is None:
                    tally = chunks[chunk] = [0, 0, 0, 0]
                tally[0] += 1
                tally[3] += from_bytes(md5(line.encode(), usedforsecurity=False).digest())
            for slot, kind, table, column in (
                (1, "p", side.policies, "policy"),
                (2, "m", side.members, side.member_col.key),
            ):
                live = " WHERE g.deleted = 0 AND c.deleted = 0" if side.soft_delete else ""
                cursor.execute(
                    f"SELECT g.uuid, c.{column} FROM {table.name} c "
                    f"JOIN {side.groups.name} g ON g.id = c.group_id{live}"
                )
                last: str | None = None
                prefix = ""
                tally = []
                for uuid, value in cursor:
                    if uuid != last:
                        # Children mostly come grouped: work out their group's part once.
                        last, prefix = uuid, f"{kind}{len(uuid)}:{uuid}"
                        head = uuid[:8]
                        chunk = int(head, 16) * n >> 32 if canonical(head) else n
                        tally = chunks.get(chunk) or chunks.setdefault(chunk, [0, 0, 0, 0])
                    line = prefix + ("~" if value is None else f"{len(value)}:{value}")
                    tally[slot] += 1
                    tally[3] += from_bytes(md5(line.encode(), usedforsecurity=False).digest())
        finally:
            cursor.close()

    @staticmethod
    def _sqlite_stamp(conn: Connection) -> Callable[[Any], str | None]:
        """Return how a raw SQLite ``created_at`` becomes its canonical text, fast."""
        parse = sa.DateTime().dialect_impl(conn.dialect).result_processor(conn.dialect, None)

        def stamp(raw: Any) -> str | None:
            if raw is None:
                return None
            if isinstance(raw, str) and _SQLITE_STAMP.fullmatch(raw):
                return raw[:19]
            # Stored some other way: read it as SQLAlchemy does, then format it.
            return _stamp(parse(raw) if parse is not None else raw)

        return stamp

    def _read_orphans(self, conn: Connection, side: GroupTables, database: str) -> list[_Orphan]:
        """List live child rows whose group is absent (or, on a cell, deleted)."""
        g = side.groups
        orphans: list[_Orphan] = []
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
                _Orphan(database, table.name, row_id, group_id, value, group_uuid)
                for row_id, group_id, value, group_uuid in conn.execute(stmt)
            )
        return orphans

    def _verify(self, conn: Connection, side: GroupTables, label: str, scan: _Scan) -> None:
        """Compare the rows hashed (plus orphans) with plain counts, in the same snapshot."""
        expected = {
            "instance_groups": _count(conn, side.groups, *_live(side, side.groups)),
            side.policies.name: _count(conn, side.policies, *_live(side, side.policies)),
            side.members.name: _count(conn, side.members, *_live(side, side.members)),
        }
        orphans = Counter(o.table for o in scan.orphans)
        for slot, table in enumerate(expected):
            seen = sum(t[slot] for t in scan.chunks.values()) + orphans.get(table, 0)
            if seen != expected[table]:
                raise ScanIncomplete(label, table, expected[table], seen)
        scan.hashed = sum(expected.values())

    # ------------------------------------------------------------------ level two

    def _superset(self, side: GroupTables, conn: Connection, chunk: int) -> sa.ColumnElement[bool]:
        """Select every row of ``chunk`` by an index range on uuid (a few more are filtered)."""
        uuid = side.groups.c.uuid
        if chunk == self.n:
            pattern = "^[0-9a-f]{8}$"
            head = sa.func.substr(uuid, 1, 8)
            if conn.dialect.name == "sqlite":
                return sa.not_(head.bool_op("GLOB")("[0-9a-f]" * 8))
            if conn.dialect.name == "postgresql":
                return sa.not_(head.bool_op("~")(pattern))
            binary = sa.cast(head, mysql.BINARY())
            return sa.not_(binary.bool_op("REGEXP")(sa.literal(pattern, sa.String())))
        low = -(-chunk * _SPACE // self.n)
        high = -(-(chunk + 1) * _SPACE // self.n)
        # Bounds one prefix wider than the chunk: for uuids starting with eight lowercase hex
        # digits, the order is settled by those digits in every collation.
        where: list[sa.ColumnElement[bool]] = []
        if low > 0:
            where.append(uuid >= f"{low - 1:08x}")
        if high < _SPACE:
            where.append(uuid < f"{high:08x}")
        return sa.and_(sa.true(), *where)

    def _source(
        self, engine: sa.Engine, label: str, side: GroupTables, wanted: set[int], *, ranges: bool
    ) -> _Ranges | _Stream:
        """Choose how one database's chunks are read row by row (see the two classes)."""
        if ranges and engine.dialect.name in ("mysql", "mariadb"):
            return _Ranges(self, engine, label, side)
        return _Stream(self, engine, label, side, wanted)

    def _compare(self, chunks: list[int]) -> None:
        """Compare the given chunks row by row, re-checking suspects as they gather."""
        wanted = set(chunks)
        # Index ranges pay per chunk, one pass pays for the whole database: ranges while at
        # most a quarter of the chunks differ.
        ranges = len(chunks) * 4 <= self.n + 1
        with contextlib.ExitStack() as stack:
            api = self._source(self.dbs.api, self.dbs.api_label, API, wanted, ranges=ranges)
            stack.callback(api.close)
            cells = []
            for cell in self.cells:
                source = self._source(cell.engine, cell.label, CELL, wanted, ranges=ranges)
                stack.callback(source.close)
                cells.append((cell, source))
            suspects: dict[str, tuple[str, ...]] = {}
            for done, chunk in enumerate(chunks, start=1):
                suspects.update(self._compare_chunk(chunk, api, cells))
                if len(suspects) >= self.chunk_size:
                    self._recheck(suspects)
                    suspects = {}
                self._report("compare", done, len(chunks))
            # Every source proves its reads complete as it closes (ScanIncomplete if not).
            stack.close()
        self._recheck(suspects)

    def _compare_chunk(
        self, chunk: int, api_source: _Ranges | _Stream, cells: list[tuple[Cell, _Ranges | _Stream]]
    ) -> dict[str, tuple[str, ...]]:
        """Compare one differing chunk row by row; return suspects and where they live."""
        api, read = api_source.take(chunk)
        self._rows["api_compared"] += read
        held: dict[str, list[tuple[str, Copy]]] = {}
        for cell, source in cells:
            copies, read = source.take(chunk)
            self._rows["cells_compared"] += read
            for uuid, copy in copies.items():
                held.setdefault(uuid, []).append((cell.name, copy))
        suspects: dict[str, tuple[str, ...]] = {}
        for uuid in sorted(set(api) | set(held)):
            here = tuple(held.get(uuid, ()))
            self._note_duplicates(uuid, api.get(uuid), here)
            if self._classify(api.get(uuid), here):
                suspects[uuid] = tuple(name for name, _ in here)
        return suspects

    def _run_one_cell(self, only: Cell) -> None:
        """Compare one cell's groups with their API copies, row by row, in one pass each.

        No checksum can stand for one cell's share of the API database, so every chunk is
        read; both databases are streamed in uuid order and counted in full.
        """
        with reader(only.engine, only.label) as conn:
            self._size(_count(conn, CELL.groups, CELL.groups.c.deleted == 0))
        chunks = list(range(self.n + 1))
        wanted = set(chunks)
        with contextlib.ExitStack() as stack:
            mine = self._source(only.engine, only.label, CELL, wanted, ranges=False)
            stack.callback(mine.close)
            api = self._source(self.dbs.api, self.dbs.api_label, API, wanted, ranges=False)
            stack.callback(api.close)
            others = [c for c in self.cells if c.uuid != only.uuid]
            suspects: dict[str, tuple[str, ...]] = {}
            for chunk in chunks:
                copies, read = mine.take(chunk)
                self._rows["cells_compared"] += read
                api_copies, _ = api.take(chunk)
                twins: dict[str, list[str]] = {}
                for other in others:
                    with reader(other.engine, other.label) as conn:
                        for uuid in CELL.present(conn, list(copies)):
                            twins.setdefault(uuid, []).append(other.name)
                for uuid, copy in copies.items():
                    theirs = api_copies.get(uuid)
                    if theirs is not None:
                        self._rows["api_compared"] += _rows_of(theirs)
                    # A twin's data does not matter here: being live twice is the finding,
                    # and the re-check reads every copy in full.
                    held = [(only.name, copy)] + [(name, copy) for name in twins.get(uuid, ())]
                    held.sort(key=self._cell_order)
                    self._note_duplicates(uuid, theirs, held)
                    if self._classify(theirs, held):
                        suspects[uuid] = tuple(name for name, _ in held)
                if len(suspects) >= self.chunk_size:
                    self._recheck(suspects)
                    suspects = {}
                self._report("compare", chunk + 1, len(chunks))
            stack.close()
        with _snapshot(only.engine, only.label) as conn:
            self._orphans.extend(self._read_orphans(conn, CELL, only.name))
        self._recheck(suspects)

    def _note_duplicates(
        self, uuid: str, api: Copy | None, cells: Sequence[tuple[str, Copy]]
    ) -> None:
        if (api is not None and api.duplicates) or any(copy.duplicates for _, copy in cells):
            self._duplicated.add(uuid)

    def _cell_order(self, held: tuple[str, Copy]) -> int:
        names = [c.name for c in self.cells]
        return names.index(held[0]) if held[0] in names else len(names)

    # ------------------------------------------------------------------ classification

    def _classify(self, api: Copy | None, cells: Sequence[tuple[str, Copy]]) -> list[DiffKind]:
        """Return what differs between the API copy and the cell copies of one key."""
        if len(cells) > 1:
            return [DiffKind.LIVE_IN_TWO_CELLS]
        cell = cells[0][1] if cells else None
        if api is None and cell is None:
            return []
        if api is None:
            return [DiffKind.MISSING_IN_API]
        if cell is None:
            # cell-only does not write the API database: its copies there are leftovers.
            return [] if self.state.phase is Phase.CELL_ONLY else [DiffKind.MISSING_IN_CELLS]
        kinds = []
        if any(getattr(api, f) != getattr(cell, f) for f in COMPARED_FIELDS):
            kinds.append(DiffKind.FIELD_MISMATCH)
        if api.policies != cell.policies:
            kinds.append(DiffKind.POLICY_MISMATCH)
        if api.members != cell.members:
            kinds.append(DiffKind.MEMBER_MISMATCH)
        return kinds

    # ------------------------------------------------------------------ live traffic

    def _recheck(self, suspects: dict[str, tuple[str, ...]]) -> None:
        """Re-check suspects under the writers' lock until each settles (module docstring)."""
        if not suspects:
            return
        self._rows["rechecked"] += len(suspects)
        pending = dict(suspects)
        last: dict[str, _Seen] = {}
        pause = max(self.dbs.settings.write_grace, 0.01)
        for attempt in range(self.rechecks):
            if attempt:
                self._sleep(pause)
            seen = self._observe(pending)
            for uuid in list(pending):
                now = seen[uuid]
                if not self._classify(now.api, now.cells):
                    del pending[uuid]
                    last.pop(uuid, None)
                    self._rows["cleared"] += 1
                    continue
                if not now.journaled and last.get(uuid) == now:
                    # The same difference, twice, a whole write apart and with nothing
                    # journaled: no write in flight explains it.
                    self._seen[uuid] = now
                    del pending[uuid]
                    continue
                last[uuid] = now
                pending[uuid] = tuple(name for name, _ in now.cells)
            self._report("recheck", len(suspects) - len(pending), len(suspects))
            if not pending:
                return
        for uuid in pending:
            self._seen[uuid] = last[uuid]

    def _observe(self, pending: dict[str, tuple[str, ...]]) -> dict[str, _Seen]:
        """Read both sides of each pending key, holding its live cell row's lock."""
        by_cell: dict[str | None, list[str]] = {}
        for uuid, held in pending.items():
            by_cell.setdefault(held[0] if held else None, []).append(uuid)
        seen: dict[str, _Seen] = {}
        for name, uuids in by_cell.items():
            holder = next((c for c in self.cells if c.name == name), None)
            with contextlib.ExitStack() as stack:
                locked: dict[str, Copy] = {}
                if holder is not None:
                    # The writers' lock order: the cell row first, then the API database.
                    conn = stack.enter_context(transaction(holder.engine, holder.label))
                    locked = read_copies(conn, CELL, uuids, lock=True)
                seen.update(self._read_both(uuids, holder, locked))
        return seen

    def _read_both(
        self, uuids: list[str], holder: Cell | None, locked: dict[str, Copy]
    ) -> dict[str, _Seen]:
        with reader(self.dbs.api, self.dbs.api_label) as conn:
            api = read_copies(conn, API, uuids)
            journaled = {u: ["api"] for u in API.journaled(conn, uuids)}
        cells: dict[str, list[tuple[str, Copy]]] = {}
        for cell in self.cells:
            if holder is not None and cell.uuid == holder.uuid:
                copies = locked
            else:
                with reader(cell.engine, cell.label) as conn:
                    copies = read_copies(conn, CELL, uuids)
            with reader(cell.engine, cell.label) as conn:
                for uuid in CELL.journaled(conn, uuids):
                    journaled.setdefault(uuid, []).append(cell.name)
            for uuid, copy in copies.items():
                cells.setdefault(uuid, []).append((cell.name, copy))
        return {
            uuid: _Seen(api.get(uuid), tuple(cells.get(uuid, ())), tuple(journaled.get(uuid, ())))
            for uuid in uuids
        }

    # ------------------------------------------------------------------ findings

    def _findings(self) -> list[Finding]:
        phase = self.state.phase
        findings: list[Finding] = []
        for uuid, seen in self._seen.items():
            for kind in self._classify(seen.api, seen.cells):
                findings.append(_finding(phase, uuid, kind, seen))
        for orphan in self._orphans:
            side = "API database" if orphan.database == "api" else f"cell {orphan.database}"
            whose = f"deleted group {orphan.group_uuid}" if orphan.group_uuid else "no such group"
            values = {
                "table": orphan.table,
                "id": orphan.row_id,
                "group_id": orphan.group_id,
                "value": orphan.value,
            }
            findings.append(
                Finding(
                    kind=DiffKind.ORPHAN,
                    key=f"{orphan.database}:{orphan.table}:{orphan.row_id}",
                    group_uuid=orphan.group_uuid,
                    authoritative=None,
                    cells=() if orphan.database == "api" else (orphan.database,),
                    api=values if orphan.database == "api" else None,
                    cell=None if orphan.database == "api" else values,
                    detail=(
                        f"{orphan.table} row {orphan.row_id} in the {side} points at group "
                        f"id {orphan.group_id} ({whose})"
                    ),
                )
            )
        return findings


def _norm(tally: list[int] | None) -> tuple[int, ...]:
    if tally is None:
        return (0, 0, 0, 0)
    return (tally[0], tally[1], tally[2], tally[3] & _MASK)


def _finding(phase: Phase, uuid: str, kind: DiffKind, seen: _Seen) -> Finding:
    api = seen.api
    cell = seen.cells[0][1] if seen.cells else None
    names = tuple(name for name, _ in seen.cells)
    api_values: dict[str, Any] | None = api.values() if api else None
    cell_values: dict[str, Any] | None = cell.values() if cell else None
    if kind is DiffKind.MISSING_IN_API:
        detail = f"live in cell {names[0]}, not in the API database"
    elif kind is DiffKind.MISSING_IN_CELLS:
        detail = "in the API database, live in no cell"
    elif kind is DiffKind.LIVE_IN_TWO_CELLS:
        detail = f"live in cells {', '.join(names)}"
        cell_values = {name: copy.values() for name, copy in seen.cells}
    else:
        assert api is not None and cell is not None
        if kind is DiffKind.FIELD_MISMATCH:
            fields = [f for f in COMPARED_FIELDS if getattr(api, f) != getattr(cell, f)]
            detail = f"{', '.join(fields)} differ{'s' if len(fields) == 1 else ''}"
            keep = set(fields)
        else:
            what = "policies" if kind is DiffKind.POLICY_MISMATCH else "members"
            detail = f"{what} differ"
            keep = {what}
        api_values = {k: v for k, v in api.values().items() if k in keep}
        cell_values = {k: v for k, v in cell.values().items() if k in keep}
    if seen.journaled:
        detail += f"; journal entries pending ({', '.join(seen.journaled)})"
    return Finding(
        kind=kind,
        key=uuid,
        group_uuid=uuid,
        authoritative=authority(phase, kind),
        cells=names,
        api=api_values,
        cell=cell_values,
        detail=detail,
        journal_pending=bool(seen.journaled),
    )


# --------------------------------------------------------------------------- repair


def _unrepairable(finding: Finding, seen: _Seen | None, phase: Phase) -> str | None:
    """Say why a replay cannot level this key, or None if it can."""
    if finding.authoritative is None or seen is None:
        return "no authoritative copy"
    if finding.authoritative == "cell" and phase is Phase.API_ONLY:
        return (
            "api-only copies nothing from the cells; run `shadowdb phase set "
            "dual-write-api-reads`, then `shadowdb backfill`"
        )
    return None


def _repair(
    dbs: Databases, state: PhaseState, findings: list[Finding], seen: dict[str, _Seen]
) -> tuple[list[Finding], int, int]:
    """Enqueue each repairable key in its authoritative side's journal (module docstring)."""
    fresh = dbs.phases.fresh()
    by_key: dict[str, list[Finding]] = {}
    for finding in findings:
        by_key.setdefault(finding.key, []).append(finding)
    notes: dict[str, str] = {}
    api_keys: list[str] = []
    cell_keys: dict[str, list[str]] = {}
    for key, group in by_key.items():
        first = group[0]
        why = _unrepairable(first, seen.get(key), state.phase)
        if why is None:
            why = next(
                (
                    w
                    for f in group[1:]
                    if (w := _unrepairable(f, seen.get(key), state.phase)) is not None
                ),
                None,
            )
        if why is None and fresh.epoch != state.epoch:
            why = f"the phase changed during the run (epoch {state.epoch} -> {fresh.epoch})"
        if why is not None:
            notes[key] = f"not enqueued: {why}"
        elif first.authoritative == "api":
            api_keys.append(key)
        else:
            name = first.cells[0] if first.cells else default_cell(dbs, fresh).name
            cell_keys.setdefault(name, []).append(key)
    kinds = {key: ", ".join(f.kind.value for f in group) for key, group in by_key.items()}
    enqueued = 0
    if api_keys:
        with writer(dbs.api, dbs.api_label) as conn:
            other = _journaled_in_cells(dbs, api_keys)
            for key in api_keys:
                if key in other:
                    notes[key] = f"not enqueued: journaled in cell {other[key]}; run backfill first"
                    continue
                API.journal_add(conn, key, state.epoch, f"diff-report: {kinds[key]}")
                notes[key] = "enqueued in the API journal"
                enqueued += 1
    for name, keys in cell_keys.items():
        cell = dbs.cell(name)
        with reader(dbs.api, dbs.api_label) as conn:
            other_api = API.journaled(conn, keys)
        with writer(cell.engine, cell.label) as conn:
            for key in keys:
                if key in other_api:
                    notes[key] = "not enqueued: journaled in the API database; run backfill first"
                    continue
                CELL.journal_add(conn, key, state.epoch, f"diff-report: {kinds[key]}")
                notes[key] = f"enqueued in the journal of cell {name}"
                enqueued += 1
    log.info("diff_repair_enqueued", enqueued=enqueued, keys=len(by_key))
    out = [dataclasses.replace(f, repair=notes.get(f.key)) for f in findings]
    return out, enqueued, len(by_key) - enqueued


def _authority_by_tombstone(dbs: Databases, phase: Phase, findings: list[Finding]) -> list[Finding]:
    """Decide, by its tombstone, who holds a group live in a cell and absent from the API.

    Every deletion from the API database leaves a tombstone in its transaction, so the
    absence of a copy there means "deleted" only with one. ``dual-write-api-reads``
    trusts such a cell copy (not migrated yet) unless the uuid is tombstoned: then the
    group was deleted there, and the cell copy is a leftover to retire, never a group to
    bring back. ``api-only`` trusts the API database, except for a copy it never had (no
    tombstone): a cell registered after the cutover, for instance, whose groups must be
    copied, never retired.
    """
    keys = [f.key for f in findings if f.kind is DiffKind.MISSING_IN_API]
    if not keys or phase not in (Phase.DUAL_WRITE_API_READS, Phase.API_ONLY):
        return findings
    with reader(dbs.api, dbs.api_label) as conn:
        buried = API.tombstoned(conn, keys)
    out = []
    for f in findings:
        if f.kind is DiffKind.MISSING_IN_API and f.key in buried:
            f = dataclasses.replace(
                f, authoritative="api", detail=f"{f.detail} (deleted in the API database)"
            )
        elif f.kind is DiffKind.MISSING_IN_API and phase is Phase.API_ONLY:
            f = dataclasses.replace(
                f,
                authoritative="cell",
                detail=f"{f.detail} (never copied there: no deletion on record)",
            )
        out.append(f)
    return out


def _journaled_in_cells(dbs: Databases, keys: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for cell in dbs.cells:
        with reader(cell.engine, cell.label) as conn:
            for key in CELL.journaled(conn, keys):
                found.setdefault(key, cell.name)
    return found


# --------------------------------------------------------------------------- the command


def _record(
    dbs: Databases,
    *,
    started: dt.datetime,
    state: PhaseState,
    scope: str,
    outcome: str,
    counts: dict[str, int],
    rows: RowCounts,
    repaired: int,
    detail: str | None,
    cells: Sequence[str] = (),
    unexplained: int | None = None,
    never_copied: int | None = None,
) -> dt.datetime:
    finished = utcnow()
    with writer(dbs.api, dbs.api_label) as conn:
        _insert_result(
            conn,
            started=started,
            finished=finished,
            state=state,
            scope=scope,
            outcome=outcome,
            counts=counts,
            rows=rows,
            repaired=repaired,
            actor=dbs.settings.actor,
            detail=detail,
            cells=cells,
            unexplained=unexplained,
            never_copied=never_copied,
        )
    return finished


def _insert_result(
    conn: Connection,
    *,
    started: dt.datetime,
    finished: dt.datetime,
    state: PhaseState,
    scope: str,
    outcome: str,
    counts: dict[str, int],
    rows: RowCounts,
    repaired: int,
    actor: str,
    detail: str | None,
    cells: Sequence[str],
    unexplained: int | None,
    never_copied: int | None,
) -> None:
    conn.execute(
        api_diff_results.insert().values(
            started_at=started,
            finished_at=finished,
            phase=state.phase.value,
            epoch=state.epoch,
            scope=scope,
            outcome=outcome,
            differences=sum(counts.values()),
            counts=json.dumps(counts, sort_keys=True),
            rows_api=rows.api_hashed + rows.api_compared,
            rows_cells=rows.cells_hashed + rows.cells_compared,
            repaired=repaired,
            actor=actor,
            detail=detail,
            cells=",".join(cells),
            unexplained=unexplained,
            never_copied=never_copied,
        )
    )


def record_superseded(conn: Connection, state: PhaseState, actor: str, why: str) -> None:
    """Record, on ``conn``, a result that supersedes every earlier run and gates nothing.

    For a step that changes what the last run compared (``cleanup``): the newest result
    is then incomplete, so ``phase set`` and ``cleanup`` wait for a new run.
    """
    now = utcnow()
    _insert_result(
        conn,
        started=now,
        finished=now,
        state=state,
        scope="all",
        outcome="incomplete",
        counts={},
        rows=RowCounts(),
        repaired=0,
        actor=actor,
        detail=f"{why}; run `shadowdb diff-report` before the next move",
        cells=(),
        unexplained=None,
        never_copied=None,
    )


def run_diff(
    dbs: Databases,
    *,
    cell: str | None = None,
    keys_only: bool = False,
    limit: int | None = None,
    repair: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DiffReport:
    """Run the diff report, record its result in the API database and return it.

    Raises:
        InvalidInput: ``limit`` or ``chunk_size`` below 1, an unknown cell.
        ScanIncomplete: a database held rows the scan did not account for (recorded
            as an incomplete run).
        OperationalError: a database could not be read (recorded if the API database
            can be written).
    """
    if limit is not None and limit < 1:
        raise InvalidInput("--limit must be a whole number >= 1")
    started = utcnow()
    clock = time.monotonic()
    # A run gates a phase change only if the whole deployment had taken the phase when it
    # began: finish a half-done change first, and say so if a cell still lags.
    settle(dbs)
    differ = Differ(dbs, cell=cell, chunk_size=chunk_size, progress=progress, sleep=sleep)
    scope = differ.only.name if differ.only is not None else "all"
    compared = [c.uuid for c in (differ.cells if differ.only is None else (differ.only,))]
    try:
        behind = lagging(dbs, differ.state)
        if behind:
            raise OperationalError(
                "the deployment is not settled in one phase: " + "; ".join(behind)
            )
        try:
            findings, rows = differ.run()
        except sa.exc.SQLAlchemyError as err:
            # A connection killed mid-scan, a transaction the server rolled back: the run
            # is incomplete, and said so as one line (never an unexpected traceback).
            raise OperationalError(f"the comparison was cut short: {one_line(err)}") from err
    except ShadowDBError as err:
        with contextlib.suppress(ShadowDBError, sa.exc.DBAPIError):
            _record(
                dbs,
                started=started,
                state=differ.state,
                scope=scope,
                outcome="incomplete",
                counts={},
                rows=RowCounts(),
                repaired=0,
                detail=one_line(err),
            )
        # The caller reports the error itself (the CLI: one line on stderr); this is the
        # command's canonical line, quiet unless debugging.
        log.info("diff_report", outcome="incomplete", scope=scope, error=one_line(err))
        raise
    findings = _authority_by_tombstone(dbs, differ.state.phase, findings)
    counts = dict(Counter(f.kind.value for f in findings))
    unexplained = sum(1 for f in findings if not f.journal_pending)
    never_copied = sum(
        1
        for f in findings
        if not f.journal_pending
        and f.kind is DiffKind.MISSING_IN_API
        and f.authoritative == "cell"
        and differ.state.phase is Phase.API_ONLY
    )
    repaired = not_repaired = 0
    if repair and findings:
        findings, repaired, not_repaired = _repair(dbs, differ.state, findings, differ._seen)
    for finding in findings:
        if finding.group_uuid is not None and finding.kind is not DiffKind.ORPHAN:
            signals.send(
                signals.divergence,
                dbs,
                group_uuid=finding.group_uuid,
                kind=finding.kind.value,
                detail=finding.detail,
            )
    total = len(findings)
    shown = findings[:limit] if limit is not None else findings
    if keys_only:
        shown = [dataclasses.replace(f, api=None, cell=None) for f in shown]
    outcome = "clean" if not findings else "differences"
    finished = _record(
        dbs,
        started=started,
        state=differ.state,
        scope=scope,
        outcome=outcome,
        counts=counts,
        rows=rows,
        repaired=repaired,
        detail=None,
        cells=compared,
        unexplained=unexplained,
        never_copied=never_copied,
    )
    log.info(
        "diff_report",
        outcome=outcome,
        scope=scope,
        phase=differ.state.phase.value,
        differences=total,
        counts=counts,
        rows_api=rows.api_hashed,
        rows_cells=rows.cells_hashed,
        chunks=rows.chunks,
        chunks_differing=rows.chunks_differing,
        rechecked=rows.rechecked,
        cleared=rows.cleared,
        repaired=repaired,
        elapsed_ms=int((time.monotonic() - clock) * 1000),
    )
    return DiffReport(
        started_at=started,
        finished_at=finished,
        phase=differ.state.phase.value,
        epoch=differ.state.epoch,
        scope=scope,
        clean=not findings,
        total=total,
        counts=counts,
        findings=tuple(shown),
        limit=limit,
        keys_only=keys_only,
        rows=rows,
        repaired=repaired,
        not_repaired=not_repaired,
    )
