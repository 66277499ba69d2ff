"""Write a group's rows in their canonical form and checksum them per chunk of the key space.

Level one of :mod:`shadowdb.diff`: every live row (group, policy, member) is written as a
canonical line, the first 64 bits of its MD5 digest are read as a number (:func:`digest`),
and the numbers are summed per chunk modulo 2**64. MariaDB/MySQL and PostgreSQL compute
the sums inside the database (:func:`tallies`); SQLite streams the rows through the same
function in Python. The Python code is the reference: tests check that each backend's SQL
yields the same sums.

Why a sum of 64-bit hashes, compared beside the exact row counts: two different chunks
with equal counts differ in the multiplicity of some row by ``d``, and their sums agree
with probability at most ``2**(v-64)`` (``v`` the power of 2 in ``d``; 2**-64 for a row on
one side only) on data nobody crafted to collide. A ``BIT_XOR`` would be cheaper on
MariaDB but cancels rows whose multiplicity differs by an even number, which Nova's
duplicate policy and member rows make a certain miss rather than an unlikely one. The full
argument is in :mod:`shadowdb.diff` ("Why this checksum").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.queries import GroupTables, to_second

__all__ = [
    "SPACE",
    "Copy",
    "bucket_of",
    "canonical_lines",
    "digest",
    "make_copy",
    "norm",
    "rows_of",
    "tallies",
]

#: The key space: a uuid's chunk is read from its first eight hex digits.
SPACE = 1 << 32
_MASK = (1 << 64) - 1
_PREFIX = re.compile(r"[0-9a-f]{8}")
#: How SQLAlchemy stores a DateTime in SQLite; ``created_at`` to the second is its head.
_SQLITE_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?")

#: Set for the checksum queries on PostgreSQL (``SET LOCAL``: until the snapshot ends). The
#: planner prices ``md5`` like an addition, so it would run the aggregate in one process
#: and, not knowing there are only ``n`` chunks, sort the rows to group them: parallel
#: workers (which share the transaction's snapshot) each hash a share of the rows, and a
#: hash aggregate groups them.
_PG_PARALLEL = {
    "parallel_setup_cost": "0",
    "parallel_tuple_cost": "0",
    "min_parallel_table_scan_size": "2MB",
    "work_mem": "64MB",
}

#: Per chunk: [groups, policies, members, sum of digests].
Tally = list[int]


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


def digest(line: str) -> int:
    """Return the hash of a canonical line: its MD5 digest's first 8 bytes, a 64-bit number."""
    return int.from_bytes(hashlib.md5(line.encode("utf-8"), usedforsecurity=False).digest()[:8])


def norm(tally: Tally | None) -> tuple[int, ...]:
    """Return a chunk's tally as compared: the counts, and the sum modulo 2**64."""
    if tally is None:
        return (0, 0, 0, 0)
    return (tally[0], tally[1], tally[2], tally[3] & _MASK)


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


def make_copy(
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


def rows_of(copy: Copy) -> int:
    """Return the live rows one copy was read from."""
    return 1 + len(copy.policies) + len(copy.members) + copy.duplicates


def canonical_lines(copy: Copy) -> list[str]:
    """Return the canonical lines of one copy: the group row, then each policy and member."""
    lines = [_group_line(copy.uuid, copy.name, copy.user_id, copy.project_id, copy.created_at)]
    lines.extend("p" + _enc(copy.uuid) + _enc(p) for p in copy.policies)
    lines.extend("m" + _enc(copy.uuid) + _enc(m) for m in copy.members)
    return lines


def tallies(conn: Connection, side: GroupTables, n: int) -> dict[int, Tally]:
    """Return the tally of every chunk among ``n`` of one side's live rows, read on ``conn``.

    Chunks are as :func:`bucket_of` numbers them; rows in no chunk are not counted (the
    caller compares the sums of the tallies with plain counts).
    """
    if conn.dialect.name == "sqlite":
        return _python_tallies(conn, side, n)
    chunks: dict[int, Tally] = {}
    sql = _ServerSql(conn.dialect.name)
    if not sql.mysql:
        for setting, value in _PG_PARALLEL.items():
            conn.execute(sa.text(f"SET LOCAL {setting} = '{value}'"))
    for slot, kind in enumerate(("g", "p", "m")):
        for chunk, hashed, total in conn.execute(sql.tally(side, kind), {"n": n}):
            tally = chunks.setdefault(int(chunk), [0, 0, 0, 0])
            tally[slot] += int(hashed)
            # Exact (DECIMAL or numeric), possibly negative on PostgreSQL: norm() takes
            # it modulo 2**64.
            tally[3] += int(total or 0)
    return chunks


# --------------------------------------------------------------------------- per-backend SQL


class _ServerSql:
    """The checksum SQL of MariaDB/MySQL or PostgreSQL, as text with bound parameters."""

    def __init__(self, dialect: str) -> None:
        self.mysql = dialect in ("mysql", "mariadb")

    def canonical_prefix(self, uuid: str) -> str:
        if self.mysql:
            return f"(CAST(SUBSTRING({uuid}, 1, 8) AS BINARY) REGEXP :pat)"
        # Eight characters, all lowercase hex digits: cheaper than a regular expression,
        # which cost PostgreSQL as much per row as the MD5.
        head = f"substr({uuid}, 1, 8)"
        return f"(char_length({head}) = 8 AND ltrim({head}, '0123456789abcdef') = '')"

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

    def tally(self, side: GroupTables, kind: str) -> sa.TextClause:
        """Return the aggregate of one table: (chunk, rows hashed, sum of row hashes) per chunk."""
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
            # MariaDB would walk the groups and fetch each child through the group_id
            # index and then its primary key: scanning the children in their own order
            # and finding each group by primary key reads every page once.
            join = "STRAIGHT_JOIN" if self.mysql else "JOIN"
            source = f"{table.name} c {join} {side.groups.name} g ON g.id = c.group_id"
            if side.soft_delete:
                live += " AND c.deleted = 0"
        bucket = self.bucket("g.uuid")
        if self.mysql:
            # The first 16 hex digits of the MD5 as an unsigned 64-bit number (CONV),
            # summed exactly as DECIMAL.
            hashed = f"CAST(CONV(LEFT(MD5({line}), 16), 16, 10) AS UNSIGNED)"
        else:
            # The same 64 bits as a signed bigint (bit(64) -> bigint is two's complement):
            # the sum, exact as numeric, is the unsigned sum modulo 2**64.
            hashed = f"('x' || left(md5({line}), 16))::bit(64)::bigint"
        # COUNT(*), not COUNT of the hash (which would hash every row twice): the line
        # is never NULL (every field is COALESCEd to its encoding), so neither is its hash,
        # and every row counted is a row summed.
        sql = (
            f"SELECT {bucket} AS chunk, COUNT(*) AS hashed, SUM({hashed}) AS total "
            f"FROM {source} WHERE {live} GROUP BY 1"
        )
        params: dict[str, Any] = {"pat": "^[0-9a-f]{8}$"} if self.mysql else {}
        if kind == "g":
            params["fmt"] = self.stamp_format
        return sa.text(sql).bindparams(**params)


# --------------------------------------------------------------------------- SQLite


def _python_tallies(conn: Connection, side: GroupTables, n: int) -> dict[int, Tally]:
    """Compute the checksums in Python, streaming (SQLite has no MD5).

    The hot loop of a SQLite diff: the driver's own cursor, the canonical line inlined
    (:func:`canonical_lines` spells it out), one digest per row.
    """
    chunks: dict[int, Tally] = {}
    md5, from_bytes, canonical = hashlib.md5, int.from_bytes, _PREFIX.fullmatch
    stamp_of = _sqlite_stamp(conn)
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
            tally[3] += from_bytes(md5(line.encode(), usedforsecurity=False).digest()[:8])
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
                tally[3] += from_bytes(md5(line.encode(), usedforsecurity=False).digest()[:8])
    finally:
        cursor.close()
    return chunks


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
