"""Load one group by uuid or by member instance in at most two statements (the hot path).

The scheduler asks for the group of the instance it places on every boot and move, and
most instances are in no group: that answer must cost one indexed lookup per database.
So the first statement finds the group row (through the member index for a member
lookup, the uuid key for a uuid lookup) and the second, only if there is a group, reads
its live policies and members together (``UNION ALL``; on MariaDB/MySQL, two lists
packed in one row, :mod:`shadowdb.packed`). Statements are built once, by each
:class:`~shadowdb.queries.Side`; they run on whatever connection the caller gives (the
hot-path read engine).

Semantics are those of :meth:`shadowdb.queries.Side.uuid_by_member` followed by
:meth:`~shadowdb.queries.Side.get`: a member lookup takes the first live member
row (lowest id), whatever its project, then hides the group from a caller of another
project, as Nova does.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy.engine import Connection

from shadowdb.errors import SchemaError
from shadowdb.packed import PACKING_BACKENDS, unpack
from shadowdb.queries import API, GroupRecord, Scope, Side
from shadowdb.state import Phase, PhaseState

__all__ = ["Key", "find", "find_with_phase"]

#: What a hot-path lookup goes by: the group's uuid, or the uuid of a member instance.
Key = Literal["uuid", "instance"]


def find_with_phase(
    conn: Connection, kind: Key, key: str, scope: Scope
) -> tuple[GroupRecord | None, PhaseState]:
    """Look a group up in the API database and read the phase row in the same statement.

    ``dual-write-api-reads`` must know, on a miss, whether the phase has moved on to
    ``api-only`` before it falls back to the cells; reading both at once keeps an
    instance in no group at one statement on the API database.

    Raises:
        SchemaError: the API database has no phase row (never synced by shadowdb).
    """
    stmt = (
        API.statements.by_member_with_state
        if kind == "instance"
        else API.statements.by_uuid_with_state
    )
    row = conn.execute(stmt, {"key": key}).first()
    if row is None:
        raise SchemaError("API database", "not synced (run `shadowdb db sync`)")
    state = PhaseState(Phase(row.phase), row.epoch, row.changed_at, row.default_cell_uuid)
    if row.id is None:
        return None, state
    return _record(conn, API, row, scope), state


def find(
    conn: Connection,
    side: Side,
    kind: Key,
    key: str,
    scope: Scope,
) -> GroupRecord | None:
    """Return the live group with uuid ``key`` (or holding member ``key``) within ``scope``."""
    stmt = side.statements.by_member if kind == "instance" else side.statements.by_uuid
    row = conn.execute(stmt, {"key": key}).first()
    if row is None:
        return None
    return _record(conn, side, row, scope)


def _record(conn: Connection, side: Side, row: Any, scope: Scope) -> GroupRecord | None:
    """Hide the group from another project's caller, else read its children."""
    if scope.project_id is not None and row.project_id != scope.project_id:
        return None
    policies: list[str] = []
    members: list[str] = []
    if conn.dialect.name in PACKING_BACKENDS:
        for child_kind, packed, count in conn.execute(
            side.statements.children_packed, {"group_id": row.id}
        ):
            if child_kind:
                members = unpack(packed, count, "members", "group")
            else:
                policies = unpack(packed, count, "policies", "group")
    else:
        lists: tuple[list[Any], list[Any]] = (policies, members)
        for child_kind, _, value in conn.execute(side.statements.children, {"group_id": row.id}):
            lists[int(child_kind)].append(value)
    return GroupRecord.of(row, policies, members)
