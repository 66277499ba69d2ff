"""Load one group by uuid or by member instance in at most two statements (the hot path).

The scheduler asks for the group of the instance it places on every boot and move, and
most instances are in no group: that answer must cost one indexed lookup per database.
So the first statement finds the group row (through the member index for a member
lookup, the uuid key for a uuid lookup) and the second, only if there is a group, reads
its live policies and members together (``UNION ALL``; on MariaDB/MySQL, two lists
packed in one row, :mod:`shadowdb.packed`). Statements are built once, here,
per side; they run on whatever connection the caller gives (the hot-path read engine).

Semantics are those of :meth:`shadowdb.queries.GroupTables.uuid_by_member` followed by
:meth:`~shadowdb.queries.GroupTables.get`: a member lookup takes the first live member
row (lowest id), whatever its project, then hides the group from a caller of another
project, as Nova does.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb import models
from shadowdb.errors import SchemaError
from shadowdb.packed import PACKING_BACKENDS, concat_sql, unpack
from shadowdb.phase import Phase, PhaseState
from shadowdb.queries import GroupRecord, Scope

__all__ = ["find", "find_with_phase"]


_STATE = (
    models.api_state.c.phase,
    models.api_state.c.epoch,
    models.api_state.c.changed_at,
    models.api_state.c.default_cell_uuid,
)


class _Side:
    """The two statements of one kind of database (API or cell)."""

    def __init__(
        self,
        groups: sa.Table,
        policies: sa.Table,
        members: sa.Table,
        member_column: str,
        soft_delete: bool,
    ) -> None:
        g, p, m = groups, policies, members
        member = m.c[member_column]

        def live(table: sa.Table) -> list[sa.ColumnElement[bool]]:
            return [table.c.deleted == 0] if soft_delete else []

        columns = (
            g.c.id,
            g.c.uuid,
            g.c.name,
            g.c.user_id,
            g.c.project_id,
            g.c.created_at,
            g.c.updated_at,
        )
        self.by_member = (
            sa.select(*columns)
            .select_from(m.join(g, m.c.group_id == g.c.id))
            .where(member == sa.bindparam("key"), *live(m), *live(g))
            .order_by(m.c.id)
            .limit(1)
        )
        self.by_uuid = sa.select(*columns).where(g.c.uuid == sa.bindparam("key"), *live(g))
        # The same lookups with the phase row alongside, in one statement: the row is
        # there whether the group is or not (API database only).
        state = models.api_state
        self.by_member_with_state = (
            sa.select(*_STATE, *columns)
            .select_from(
                state.outerjoin(
                    m.join(g, m.c.group_id == g.c.id),
                    sa.and_(member == sa.bindparam("key"), *live(m), *live(g)),
                )
            )
            .where(state.c.id == 1)
            .order_by(m.c.id)
            .limit(1)
        )
        self.by_uuid_with_state = (
            sa.select(*_STATE, *columns)
            .select_from(state.outerjoin(g, sa.and_(g.c.uuid == sa.bindparam("key"), *live(g))))
            .where(state.c.id == 1)
        )
        kind: sa.Label[int] = sa.literal_column("0").label("kind")
        self.children = sa.union_all(
            sa.select(kind, p.c.id.label("row_id"), p.c.policy.label("value")).where(
                p.c.group_id == sa.bindparam("group_id"), *live(p)
            ),
            sa.select(
                sa.literal_column("1").label("kind"),
                m.c.id.label("row_id"),
                member.label("value"),
            ).where(m.c.group_id == sa.bindparam("group_id"), *live(m)),
        ).order_by(sa.literal_column("kind"), sa.literal_column("row_id"))
        # MariaDB/MySQL: the same two lists packed, one row each (shadowdb.packed).
        # A UNION ALL of two aggregates: joining them as derived tables cost 0.9 ms
        # more at ten members (both are materialized first).
        alive = " AND deleted = 0" if soft_delete else ""
        self.children_packed = sa.text(
            f"SELECT 0 AS kind, {concat_sql('policy', order_by='id')} FROM {p.name}"
            f" WHERE group_id = :group_id{alive} UNION ALL"
            f" SELECT 1, {concat_sql(member_column, order_by='id')} FROM {m.name}"
            f" WHERE group_id = :group_id{alive}"
        )


_SIDES = {
    "api": _Side(
        models.api_groups, models.api_policies, models.api_members, "instance_uuid", False
    ),
    "cell": _Side(
        models.cell_groups, models.cell_policies, models.cell_members, "instance_id", True
    ),
}


def find_with_phase(
    conn: Connection, kind: Literal["uuid", "instance"] | str, key: str, scope: Scope
) -> tuple[GroupRecord | None, PhaseState]:
    """Look a group up in the API database and read the phase row in the same statement.

    ``dual-write-api-reads`` must know, on a miss, whether the phase has moved on to
    ``api-only`` before it falls back to the cells; reading both at once keeps an
    instance in no group at one statement on the API database.

    Raises:
        SchemaError: the API database has no phase row (never synced by shadowdb).
    """
    statements = _SIDES["api"]
    stmt = statements.by_member_with_state if kind == "instance" else statements.by_uuid_with_state
    row = conn.execute(stmt, {"key": key}).first()
    if row is None:
        raise SchemaError("API database", "not synced (run `shadowdb db sync`)")
    state = PhaseState(Phase(row.phase), row.epoch, row.changed_at, row.default_cell_uuid)
    if row.id is None:
        return None, state
    return _record(conn, statements, row, scope), state


def find(
    conn: Connection,
    side: Literal["api", "cell"] | str,
    kind: Literal["uuid", "instance"] | str,
    key: str,
    scope: Scope,
) -> GroupRecord | None:
    """Return the live group with uuid ``key`` (or holding member ``key``) within ``scope``."""
    statements = _SIDES[side]
    stmt = statements.by_member if kind == "instance" else statements.by_uuid
    row = conn.execute(stmt, {"key": key}).first()
    if row is None:
        return None
    return _record(conn, statements, row, scope)


def _record(conn: Connection, statements: _Side, row: Any, scope: Scope) -> GroupRecord | None:
    """Hide the group from another project's caller, else read its children."""
    if scope.project_id is not None and row.project_id != scope.project_id:
        return None
    policies: list[str] = []
    members: list[str] = []
    if conn.dialect.name in PACKING_BACKENDS:
        for child_kind, packed, count in conn.execute(
            statements.children_packed, {"group_id": row.id}
        ):
            if child_kind:
                members = unpack(packed, count, "members", "group")
            else:
                policies = unpack(packed, count, "policies", "group")
    else:
        lists: tuple[list[Any], list[Any]] = (policies, members)
        for child_kind, _, value in conn.execute(statements.children, {"group_id": row.id}):
            lists[int(child_kind)].append(value)
    return GroupRecord(
        id=row.id,
        uuid=row.uuid,
        name=row.name,
        user_id=row.user_id,
        project_id=row.project_id,
        policies=tuple(policies),
        members=tuple(members),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
