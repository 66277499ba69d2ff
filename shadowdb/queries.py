"""Read and write instance groups on one database, API or cell: the SQL lives here.

The two kinds of database hold the same groups in different shapes (the cell tables
soft-delete and call the member column ``instance_id``; the API tables hard-delete and
call it ``instance_uuid``). :class:`Side` hides that behind one interface with two
instances, :data:`API` and :data:`CELL`, so that every phase, the journals, the backfill
and the diff speak of "a side" without caring which. A side owns its tables and every
statement on them, the hot path's lookups (:mod:`shadowdb.lookups`) included, built
once when the side is (:mod:`shadowdb.statements`).

Every function takes the :class:`~sqlalchemy.engine.Connection` it is given and never
commits or opens one; the caller scopes the unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb import models
from shadowdb.bulk import by_ids, chunks
from shadowdb.group_writes import GroupWrites
from shadowdb.journal_rows import JournalRows
from shadowdb.records import (
    COMPARED_FIELDS,
    COPIED_FIELDS,
    GROUP_COLUMNS,
    GroupRecord,
    JournalEntry,
    Scope,
    to_second,
)
from shadowdb.statements import GROUP_ROW, JOURNAL_ROW, SideTables, build_statements

__all__ = [
    "API",
    "CELL",
    "COMPARED_FIELDS",
    "COPIED_FIELDS",
    "GroupRecord",
    "GroupTables",
    "JournalEntry",
    "Scope",
    "Side",
    "to_second",
]


class Side:
    """One kind of database (API or cell): its group tables and the statements on them.

    The side runs the reads itself; it delegates the writes to
    :class:`~shadowdb.group_writes.GroupWrites` and the journal to
    :class:`~shadowdb.journal_rows.JournalRows`, under the same method names.
    """

    def __init__(
        self,
        name: str,
        tables: SideTables,
        *,
        member_column: str,
        soft_delete: bool,
        tombstones: sa.Table | None = None,
    ) -> None:
        self.name = name
        self.tombstones = tombstones
        groups, policies, members, journal = tables
        self.groups = groups
        self.policies = policies
        self.members = members
        self.journal = journal
        self.member_col: sa.Column[Any] = members.c[member_column]
        self.soft_delete = soft_delete
        # Lookups by a list of uuids, built once (the list is an expanding parameter).
        uuids: sa.BindParameter[list[str]] = sa.bindparam("uuids", expanding=True)
        live = self._live(groups)
        self._get_many = (
            sa.select(*self._group_columns())
            .where(groups.c.uuid.in_(uuids), *live)
            .order_by(groups.c.id)
        )
        self._ids_by_uuid = sa.select(groups.c.uuid, groups.c.id).where(
            groups.c.uuid.in_(uuids), *live
        )
        # Writes and the journal are parts the side delegates to (one attribute per verb).
        self.writes = GroupWrites(
            groups, policies, members, member_column, soft_delete, tombstones, self._ids_by_uuid
        )
        self.insert = self.writes.insert
        self.insert_many = self.writes.insert_many
        self.update_fields = self.writes.update_fields
        self.retire = self.writes.retire
        self.set_policies = self.writes.set_policies
        self.set_members = self.writes.set_members
        self.add_members = self.writes.add_members
        self.remove_members = self.writes.remove_members
        self.delete = self.writes.delete
        self.lock_identity = self.writes.lock_identity
        self.tombstone = self.writes.tombstone
        self.touch = self.writes.touch
        self.journal_rows = JournalRows(journal)
        self.journaled = self.journal_rows.journaled
        self.journal_add = self.journal_rows.add
        self.journal_note = self.journal_rows.note
        self.journal_clear = self.journal_rows.clear
        self.journal_pending = self.journal_rows.pending
        self.journal_for = self.journal_rows.ids_for
        self.journal_count = self.journal_rows.count
        #: Every statement built once for this side (the hot path's, the writers' read).
        self.statements = build_statements(tables, member_column, soft_delete)

    def __repr__(self) -> str:
        return f"<Side {self.name}>"

    # ------------------------------------------------------------------ filters

    def _live(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        return [table.c.deleted == 0] if self.soft_delete else []

    def _scoped(self, scope: Scope | None) -> list[sa.ColumnElement[bool]]:
        g = self.groups
        where = self._live(g)
        if scope is not None and scope.project_id is not None:
            where.append(g.c.project_id == scope.project_id)
        return where

    # ------------------------------------------------------------------ reads

    def _hydrate(self, conn: Connection, rows: Sequence[sa.Row[Any]]) -> list[GroupRecord]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        policies: dict[int, list[str]] = {i: [] for i in ids}
        members: dict[int, list[str]] = {i: [] for i in ids}
        p, m = self.policies, self.members
        # Every group's children come from one statement, in row order.
        for where in by_ids(p.c.group_id, ids):
            for gid, policy in conn.execute(
                sa.select(p.c.group_id, p.c.policy).where(where, *self._live(p)).order_by(p.c.id)
            ):
                if gid in policies:
                    policies[gid].append(policy)
        for where in by_ids(m.c.group_id, ids):
            for gid, member in conn.execute(
                sa.select(m.c.group_id, self.member_col)
                .where(where, *self._live(m))
                .order_by(m.c.id)
            ):
                if gid in members:
                    members[gid].append(member)
        return [GroupRecord.of(r, policies[r.id], members[r.id]) for r in rows]

    def _group_columns(self) -> list[sa.Column[Any]]:
        return [self.groups.c[name] for name in GROUP_COLUMNS]

    def get_locked(
        self, conn: Connection, group_uuid: str, *, lock: bool = True
    ) -> tuple[GroupRecord | None, list[int]]:
        """Lock the live group ``group_uuid`` until commit; load it and its journal entries.

        Two statements: the row lock (``SELECT ... FOR UPDATE``, the per-group lock of
        the dual-write protocol), then one read of the row, its children and its journal
        entries. SQLite takes no row lock (``BEGIN IMMEDIATE`` already serialises
        writers): the read alone. Without ``lock``, the read alone everywhere.
        """
        if lock and conn.dialect.name != "sqlite":
            g = self.groups
            conn.execute(
                sa.select(g.c.id).where(g.c.uuid == group_uuid, *self._live(g)).with_for_update()
            )
        row: Any = None
        lists: tuple[list[str], list[str]] = ([], [])
        journal: list[int] = []
        for found in conn.execute(self.statements.locked_read, {"uuid": group_uuid}):
            if found.kind == GROUP_ROW:
                row = found
            elif found.kind == JOURNAL_ROW:
                journal.append(int(found.id))
            else:
                lists[found.kind].append(found.value)
        if row is None:
            return None, journal
        return GroupRecord.of(row, *lists), journal

    def get(
        self,
        conn: Connection,
        group_uuid: str,
        *,
        scope: Scope | None = None,
        lock: bool = False,
    ) -> GroupRecord | None:
        """Load the live group ``group_uuid``; with ``lock``, lock its row until commit.

        The row lock is the per-group lock of the dual-write protocol
        (``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already serialises).
        """
        stmt = sa.select(*self._group_columns()).where(
            self.groups.c.uuid == group_uuid, *self._scoped(scope)
        )
        if lock:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            return None
        return self._hydrate(conn, [row])[0]

    def get_many(self, conn: Connection, group_uuids: Sequence[str]) -> list[GroupRecord]:
        """Load the live groups among ``group_uuids``, in id order."""
        rows: list[sa.Row[Any]] = []
        for chunk in chunks(list(group_uuids)):
            rows.extend(conn.execute(self._get_many, {"uuids": chunk}).all())
        return self._hydrate(conn, rows)

    def by_name(self, conn: Connection, name: str, *, scope: Scope | None) -> GroupRecord | None:
        """Load the oldest live group called ``name`` (ties broken by id), within scope.

        Undated rows come last on every backend (as across cells), whatever the backend's
        own NULL ordering (first on MySQL and SQLite, last on PostgreSQL).
        """
        g = self.groups
        row = conn.execute(
            sa.select(*self._group_columns())
            .where(g.c.name == name, *self._scoped(scope))
            .order_by(g.c.created_at.is_(None), g.c.created_at, g.c.id)
            .limit(1)
        ).first()
        return self._hydrate(conn, [row])[0] if row is not None else None

    def uuid_by_member(self, conn: Connection, instance_uuid: str) -> str | None:
        """Return the uuid of the first live group holding ``instance_uuid`` as a member.

        One indexed lookup (the member index on the instance column) joined to the group.
        """
        g, m = self.groups, self.members
        row = conn.execute(
            sa.select(g.c.uuid)
            .select_from(m.join(g, m.c.group_id == g.c.id))
            .where(self.member_col == instance_uuid, *self._live(m), *self._live(g))
            .order_by(m.c.id)
            .limit(1)
        ).first()
        return None if row is None else str(row.uuid)

    def list_groups(self, conn: Connection, *, scope: Scope | None) -> list[GroupRecord]:
        """Load every live group within ``scope``, in id order."""
        rows = conn.execute(
            sa.select(*self._group_columns()).where(*self._scoped(scope)).order_by(self.groups.c.id)
        ).all()
        return self._hydrate(conn, rows)

    def uuids(self, conn: Connection, *, scope: Scope | None = None) -> set[str]:
        """Return the uuids of every live group within ``scope``."""
        return {
            r[0] for r in conn.execute(sa.select(self.groups.c.uuid).where(*self._scoped(scope)))
        }

    def lock_many(self, conn: Connection, ids: Sequence[int]) -> list[GroupRecord]:
        """Lock the live groups with these row ids (id order) and load them.

        Dense ids are locked as one id range (:func:`~shadowdb.bulk.by_ids`): a live row in
        the range that was not asked for (one the caller's scan could not have missed, short of id
        reuse) is locked along, never returned.
        """
        return self._hydrate(conn, self.lock_rows(conn, ids))

    def lock_rows(self, conn: Connection, ids: Sequence[int]) -> list[sa.Row[Any]]:
        """Lock the live group rows with these ids (id order) and return them, no children.

        The rows :meth:`lock_many` loads; the backfill's batch reads their children
        through the child map instead (:func:`shadowdb.childmap.lock_many`).
        """
        g = self.groups
        wanted = set(ids)
        rows: list[sa.Row[Any]] = []
        for where in by_ids(g.c.id, wanted):
            rows.extend(
                row
                for row in conn.execute(
                    sa.select(*self._group_columns())
                    .where(where, *self._live(g))
                    .order_by(g.c.id)
                    .with_for_update()
                ).all()
                if row.id in wanted
            )
        return rows

    def present(self, conn: Connection, group_uuids: Sequence[str]) -> set[str]:
        """Return which of ``group_uuids`` have a live copy here."""
        found: set[str] = set()
        for chunk in chunks(list(group_uuids)):
            found.update(uuid for uuid, _ in conn.execute(self._ids_by_uuid, {"uuids": chunk}))
        return found

    def tombstoned(self, conn: Connection, group_uuids: Iterable[str]) -> set[str]:
        """Return which of ``group_uuids`` carry a tombstone here."""
        t = self.tombstones
        if t is None:
            return set()
        found: set[str] = set()
        for chunk in chunks(sorted(set(group_uuids))):
            found.update(conn.execute(sa.select(t.c.uuid).where(t.c.uuid.in_(chunk))).scalars())
        return found

    # ------------------------------------------------------------------ counts

    def count(
        self, conn: Connection, *, project_id: str | None = None, user_id: str | None = None
    ) -> int:
        """Count live groups, optionally of one project and user."""
        g = self.groups
        where = self._live(g)
        if project_id is not None:
            where.append(g.c.project_id == project_id)
        if user_id is not None:
            where.append(g.c.user_id == user_id)
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(g).where(*where)).scalar_one()
        )


API = Side(
    "api",
    SideTables(models.api_groups, models.api_policies, models.api_members, models.api_journal),
    member_column="instance_uuid",
    soft_delete=False,
    tombstones=models.api_tombstones,
)
CELL = Side(
    "cell",
    SideTables(models.cell_groups, models.cell_policies, models.cell_members, models.cell_journal),
    member_column="instance_id",
    soft_delete=True,
)

#: The former name of :class:`Side`, kept for the modules that still import it.
GroupTables = Side
