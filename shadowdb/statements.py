"""Build, once per side, the fixed statements of the hot path and of the writers' read.

:class:`~shadowdb.queries.Side` builds its :class:`Statements` when it is created; they
run on whatever connection the caller gives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import sqlalchemy as sa

from shadowdb import models
from shadowdb.packed import concat_sql
from shadowdb.records import GROUP_COLUMNS

__all__ = ["GROUP_ROW", "JOURNAL_ROW", "SideTables", "Statements", "build_statements"]

#: The phase row's columns a lookup reads alongside a group (API database only).
_STATE = (
    models.api_state.c.phase,
    models.api_state.c.epoch,
    models.api_state.c.changed_at,
    models.api_state.c.default_cell_uuid,
)

#: The kinds of row :attr:`Statements.locked_read` returns besides policies (0) and
#: members (1): the group row, and a journal entry.
GROUP_ROW = 3
JOURNAL_ROW = 2


@dataclasses.dataclass(frozen=True)
class Statements:
    """The statements of one kind of database (API or cell)."""

    #: The live group holding member ``:key`` (its first live member row), one row.
    by_member: sa.Select[Any]
    #: The live group with uuid ``:key``.
    by_uuid: sa.Select[Any]
    #: :attr:`by_member` with the phase row alongside (API database only).
    by_member_with_state: sa.Select[Any]
    #: :attr:`by_uuid` with the phase row alongside (API database only).
    by_uuid_with_state: sa.Select[Any]
    #: Group ``:group_id``'s live policies (kind 0) and members (kind 1), in row order.
    children: sa.CompoundSelect[Any]
    #: :attr:`children` packed in one row per kind (MariaDB/MySQL, :mod:`shadowdb.packed`).
    children_packed: sa.TextClause
    #: Everything a writer reads of group ``:uuid``, in one statement: the row
    #: (:data:`GROUP_ROW`), its live policies (0) and members (1) and its journal
    #: entries (:data:`JOURNAL_ROW`), ordered by kind then row id.
    locked_read: sa.CompoundSelect[Any]


class SideTables(NamedTuple):
    """The group tables both kinds of database have, each kind its own."""

    groups: sa.Table
    policies: sa.Table
    members: sa.Table
    journal: sa.Table


def build_statements(tables: SideTables, member_column: str, soft_delete: bool) -> Statements:
    """Build the statements of one kind of database from its tables."""
    g, p, m, j = tables
    member = m.c[member_column]

    def live(table: sa.Table) -> list[sa.ColumnElement[bool]]:
        return [table.c.deleted == 0] if soft_delete else []

    def kind(n: int) -> sa.Label[int]:
        return sa.literal_column(str(n)).label("kind")

    columns = [g.c[name] for name in GROUP_COLUMNS]
    key: sa.BindParameter[str] = sa.bindparam("key")
    by_member = (
        sa.select(*columns)
        .select_from(m.join(g, m.c.group_id == g.c.id))
        .where(member == key, *live(m), *live(g))
        .order_by(m.c.id)
        .limit(1)
    )
    by_uuid = sa.select(*columns).where(g.c.uuid == key, *live(g))
    # The same lookups with the phase row alongside, in one statement: the row is
    # there whether the group is or not (API database only).
    state = models.api_state
    by_member_with_state = (
        sa.select(*_STATE, *columns)
        .select_from(
            state.outerjoin(
                m.join(g, m.c.group_id == g.c.id), sa.and_(member == key, *live(m), *live(g))
            )
        )
        .where(state.c.id == 1)
        .order_by(m.c.id)
        .limit(1)
    )
    by_uuid_with_state = (
        sa.select(*_STATE, *columns)
        .select_from(state.outerjoin(g, sa.and_(g.c.uuid == key, *live(g))))
        .where(state.c.id == 1)
    )
    group_id: sa.BindParameter[int] = sa.bindparam("group_id")
    children = sa.union_all(
        sa.select(kind(0), p.c.id.label("row_id"), p.c.policy.label("value")).where(
            p.c.group_id == group_id, *live(p)
        ),
        sa.select(kind(1), m.c.id.label("row_id"), member.label("value")).where(
            m.c.group_id == group_id, *live(m)
        ),
    ).order_by(sa.literal_column("kind"), sa.literal_column("row_id"))
    # MariaDB/MySQL: the same two lists packed, one row each (shadowdb.packed).
    # A UNION ALL of two aggregates: joining them as derived tables cost 0.9 ms
    # more at ten members (both are materialized first).
    alive = " AND deleted = 0" if soft_delete else ""
    children_packed = sa.text(
        f"SELECT 0 AS kind, {concat_sql('policy', order_by='id')} FROM {p.name}"
        f" WHERE group_id = :group_id{alive} UNION ALL"
        f" SELECT 1, {concat_sql(member_column, order_by='id')} FROM {m.name}"
        f" WHERE group_id = :group_id{alive}"
    )
    # The writers' read: the group row first, so its columns type every branch's
    # (the child branches leave them NULL and carry their own row id in ``id``).
    uuid: sa.BindParameter[str] = sa.bindparam("uuid")
    the_group = sa.select(g.c.id).where(g.c.uuid == uuid, *live(g)).scalar_subquery()
    blank = [sa.null().label(name) for name in GROUP_COLUMNS[1:]]
    locked_read = sa.union_all(
        sa.select(kind(GROUP_ROW), g.c.id, sa.null().label("value"), *columns[1:]).where(
            g.c.uuid == uuid, *live(g)
        ),
        sa.select(kind(0), p.c.id, p.c.policy, *blank).where(p.c.group_id == the_group, *live(p)),
        sa.select(kind(1), m.c.id, member, *blank).where(m.c.group_id == the_group, *live(m)),
        sa.select(kind(JOURNAL_ROW), j.c.id, sa.null(), *blank).where(j.c.group_uuid == uuid),
    ).order_by(sa.literal_column("kind"), sa.literal_column("id"))
    return Statements(
        by_member,
        by_uuid,
        by_member_with_state,
        by_uuid_with_state,
        children,
        children_packed,
        locked_read,
    )
