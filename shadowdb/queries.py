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

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from shadowdb import models
from shadowdb.bulk import BulkInsert, by_ids, chunks
from shadowdb.phase import utcnow
from shadowdb.records import (
    COMPARED_FIELDS,
    COPIED_FIELDS,
    GROUP_COLUMNS,
    GroupRecord,
    JournalEntry,
    Scope,
    to_second,
)
from shadowdb.statements import GROUP_ROW, JOURNAL_ROW, build_statements

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
    """One kind of database (API or cell): its group tables and the statements on them."""

    def __init__(
        self,
        name: str,
        groups: sa.Table,
        policies: sa.Table,
        members: sa.Table,
        journal: sa.Table,
        member_column: str,
        soft_delete: bool,
        tombstones: sa.Table | None = None,
    ) -> None:
        self.name = name
        self.tombstones = tombstones
        self.groups = groups
        self.policies = policies
        self.members = members
        self.journal = journal
        self.member_col: sa.Column[Any] = members.c[member_column]
        self.soft_delete = soft_delete
        extra = ("deleted",) if soft_delete else ()
        self._bulk_groups = BulkInsert(groups, ("uuid", *COPIED_FIELDS), extra)
        self._bulk_policies = BulkInsert(policies, ("group_id", "policy"), ("created_at", *extra))
        self._bulk_members = BulkInsert(
            members, ("group_id", member_column), ("created_at", *extra)
        )
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
        self._journaled = sa.select(journal.c.group_uuid).where(journal.c.group_uuid.in_(uuids))
        #: Every statement built once for this side (the hot path's, the writers' read).
        self.statements = build_statements(
            groups, policies, members, journal, member_column, soft_delete
        )

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

    # ------------------------------------------------------------------ writes

    def insert(self, conn: Connection, record: GroupRecord) -> int:
        """Insert ``record`` (row, policies, members) and return the new row id.

        Raises:
            sqlalchemy.exc.IntegrityError: the uuid is taken (live, on a cell).
        """
        now = utcnow()
        values: dict[str, Any] = {
            "uuid": record.uuid,
            "name": record.name,
            "user_id": record.user_id,
            "project_id": record.project_id,
            "created_at": record.created_at,  # a legacy NULL stays NULL
            "updated_at": record.updated_at,
        }
        if self.soft_delete:
            values["deleted"] = 0
        result = conn.execute(self.groups.insert().values(**values))
        assert result.inserted_primary_key is not None
        group_id = int(result.inserted_primary_key[0])
        self._insert_children(conn, group_id, record.policies, record.members, now)
        if self.tombstones is not None:
            # The uuid is live again: its absence would no longer mean "deleted".
            t = self.tombstones
            conn.execute(t.delete().where(t.c.uuid == record.uuid))
        return group_id

    def insert_many(self, conn: Connection, records: Sequence[GroupRecord]) -> None:
        """Insert many groups with their policies and members in a few statements.

        One ``executemany`` per table (statements compiled once,
        :class:`~shadowdb.bulk.BulkInsert`); the new row ids are read back by uuid.
        """
        if not records:
            return
        now = utcnow()
        extra = (0,) if self.soft_delete else ()
        self._bulk_groups.execute(
            conn,
            (
                (r.uuid, r.name, r.user_id, r.project_id, r.created_at, r.updated_at)
                for r in records
            ),
            extra,
        )
        ids: dict[str, int] = {}
        for chunk in chunks([r.uuid for r in records]):
            ids.update(
                (uuid, gid) for uuid, gid in conn.execute(self._ids_by_uuid, {"uuids": chunk})
            )
        self._bulk_policies.execute(
            conn,
            ((ids[r.uuid], p) for r in records for p in dict.fromkeys(r.policies)),
            (now, *extra),
        )
        self._bulk_members.execute(
            conn,
            ((ids[r.uuid], m) for r in records for m in dict.fromkeys(r.members)),
            (now, *extra),
        )

    def lock_many(self, conn: Connection, ids: Sequence[int]) -> list[GroupRecord]:
        """Lock the live groups with these row ids (id order) and load them.

        Dense ids are locked as one id range (:func:`~shadowdb.bulk.by_ids`): a live row in
        the range that was not asked for (one the caller's scan could not have missed, short of id
        reuse) is locked along, never returned.
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
        return self._hydrate(conn, rows)

    def present(self, conn: Connection, group_uuids: Sequence[str]) -> set[str]:
        """Return which of ``group_uuids`` have a live copy here."""
        found: set[str] = set()
        for chunk in chunks(list(group_uuids)):
            found.update(uuid for uuid, _ in conn.execute(self._ids_by_uuid, {"uuids": chunk}))
        return found

    def journaled(self, conn: Connection, group_uuids: Sequence[str]) -> set[str]:
        """Return which of ``group_uuids`` have pending journal entries here.

        A journal holds only writes not yet replayed, and is near empty most of the time:
        when it has no more entries than there are uuids to check, it is read whole (one
        statement without a long ``IN`` list) and matched here.
        """
        wanted = set(group_uuids)
        if not wanted:
            return set()
        j = self.journal
        head = conn.execute(sa.select(j.c.group_uuid).limit(len(wanted) + 1)).scalars().all()
        if len(head) <= len(wanted):
            return wanted.intersection(head)
        found: set[str] = set()
        for chunk in chunks(sorted(wanted)):
            found.update(conn.execute(self._journaled, {"uuids": chunk}).scalars())
        return found

    def _insert_children(
        self,
        conn: Connection,
        group_id: int,
        policies: Sequence[str],
        members: Sequence[str],
        now: dt.datetime,
    ) -> None:
        extra: dict[str, Any] = {"deleted": 0} if self.soft_delete else {}
        if policies:
            conn.execute(
                self.policies.insert(),
                [{"group_id": group_id, "policy": p, "created_at": now, **extra} for p in policies],
            )
        if members:
            conn.execute(
                self.members.insert(),
                [
                    {"group_id": group_id, self.member_col.key: m, "created_at": now, **extra}
                    for m in members
                ],
            )

    def update_fields(self, conn: Connection, group_id: int, fields: dict[str, Any]) -> None:
        """Update scalar columns of the group row (``updated_at`` included if given)."""
        if fields:
            conn.execute(self.groups.update().where(self.groups.c.id == group_id).values(**fields))

    def retire(self, conn: Connection, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
        """Delete the rows of ``table`` matching ``where``; return how many.

        Soft on a cell, as Nova does (``deleted`` = the row's own id, ``deleted_at`` = now;
        only live rows), hard on the API database.
        """
        if self.soft_delete:
            result = conn.execute(
                table.update()
                .where(where, table.c.deleted == 0)
                .values(deleted=table.c.id, deleted_at=utcnow())
            )
        else:
            result = conn.execute(table.delete().where(where))
        return int(result.rowcount or 0)

    def set_policies(self, conn: Connection, record: GroupRecord, policies: Sequence[str]) -> bool:
        """Make the live policies of ``record`` exactly ``policies`` (replace-set)."""
        wanted = list(dict.fromkeys(policies))
        if list(record.policies) == wanted:
            return False
        p = self.policies
        self.retire(conn, p, p.c.group_id == record.id)
        self._insert_children(conn, record.id, wanted, (), utcnow())
        return True

    def set_members(self, conn: Connection, record: GroupRecord, members: Sequence[str]) -> bool:
        """Make the live members of ``record`` exactly ``members`` (replace-set).

        Members already present keep their rows (and so their insertion order); only the
        difference is written. Duplicate rows (possible in Nova's API tables) are rebuilt.
        """
        wanted = list(dict.fromkeys(members))
        have = list(record.members)
        duplicates = len(set(have)) != len(have)
        if not duplicates and set(have) == set(wanted):
            return False
        m = self.members
        if duplicates:
            self.retire(conn, m, m.c.group_id == record.id)
            self._insert_children(conn, record.id, (), wanted, utcnow())
            return True
        for chunk in chunks(sorted(set(have) - set(wanted))):
            self.retire(conn, m, sa.and_(m.c.group_id == record.id, self.member_col.in_(chunk)))
        present = set(have)
        self._insert_children(
            conn, record.id, (), [u for u in wanted if u not in present], utcnow()
        )
        return True

    def add_members(
        self, conn: Connection, record: GroupRecord, instance_uuids: Sequence[str]
    ) -> list[str]:
        """Add the members of ``instance_uuids`` not yet present; return those added.

        The caller holds the group's row lock, so two concurrent callers adding the same
        uuid are serialised and the second finds it present: no duplicate rows.
        """
        have = set(record.members)
        added = [u for u in dict.fromkeys(instance_uuids) if u not in have]
        self._insert_children(conn, record.id, (), added, utcnow())
        return added

    def remove_members(
        self, conn: Connection, record: GroupRecord, instance_uuids: Sequence[str]
    ) -> list[str]:
        """Remove the given members; return those that were present."""
        gone = [u for u in dict.fromkeys(instance_uuids) if u in set(record.members)]
        m = self.members
        for chunk in chunks(gone):
            self.retire(conn, m, sa.and_(m.c.group_id == record.id, self.member_col.in_(chunk)))
        return gone

    def delete(self, conn: Connection, record: GroupRecord) -> None:
        """Delete the group and its children (soft on a cell, hard on the API, children first)."""
        p, m, g = self.policies, self.members, self.groups
        self.retire(conn, p, p.c.group_id == record.id)
        self.retire(conn, m, m.c.group_id == record.id)
        self.retire(conn, g, g.c.id == record.id)
        if self.tombstones is not None:
            self.tombstone(conn, record.uuid)

    # ------------------------------------------------------------------ identity

    def lock_identity(self, conn: Connection, group_uuid: str) -> None:
        """Lock ``group_uuid``'s identity until commit, whether or not a row exists.

        A row of ``shadowdb_group_locks`` (cell databases) is upserted so that the
        statement locks it exclusively in both cases: MariaDB's ``ON DUPLICATE KEY
        UPDATE`` and PostgreSQL's ``ON CONFLICT DO UPDATE`` lock the existing row. SQLite
        needs no row lock: ``BEGIN IMMEDIATE`` already serialises writers.
        """
        t = models.cell_group_locks
        dialect = conn.dialect.name
        if dialect in ("mysql", "mariadb"):
            my = mysql.insert(t).values(uuid=group_uuid)
            conn.execute(my.on_duplicate_key_update(uuid=my.inserted.uuid))
        elif dialect == "postgresql":
            pg = postgresql.insert(t).values(uuid=group_uuid)
            conn.execute(
                pg.on_conflict_do_update(index_elements=["uuid"], set_={"uuid": group_uuid})
            )
        else:
            conn.execute(sqlite.insert(t).values(uuid=group_uuid).on_conflict_do_nothing())

    # ------------------------------------------------------------------ tombstones

    def tombstone(self, conn: Connection, group_uuid: str) -> None:
        """Record that ``group_uuid`` was deleted here, at the current epoch.

        In the transaction of the deletion, so that absence from the API database means
        "deleted" from the moment the deletion commits (never "not migrated yet").
        """
        t = self.tombstones
        assert t is not None
        epoch = sa.select(models.api_state.c.epoch).where(models.api_state.c.id == 1)
        conn.execute(t.delete().where(t.c.uuid == group_uuid))
        conn.execute(
            t.insert().from_select(
                ["uuid", "epoch", "deleted_at"],
                sa.select(
                    sa.literal(group_uuid, sa.String(36)),
                    epoch.scalar_subquery(),
                    sa.literal(utcnow(), sa.DateTime),
                ),
            )
        )

    def tombstoned(self, conn: Connection, group_uuids: Iterable[str]) -> set[str]:
        """Return which of ``group_uuids`` carry a tombstone here."""
        t = self.tombstones
        if t is None:
            return set()
        found: set[str] = set()
        for chunk in chunks(sorted(set(group_uuids))):
            found.update(conn.execute(sa.select(t.c.uuid).where(t.c.uuid.in_(chunk))).scalars())
        return found

    def touch(self, conn: Connection, group_id: int, when: dt.datetime | None = None) -> None:
        """Set ``updated_at`` of the group row."""
        self.update_fields(conn, group_id, {"updated_at": when or utcnow()})

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

    # ------------------------------------------------------------------ journal

    def journal_add(
        self, conn: Connection, group_uuid: str, epoch: int, error: str | None = None
    ) -> int:
        """Record that ``group_uuid``'s other copy may lag this side's; return the row id."""
        result = conn.execute(
            self.journal.insert().values(
                group_uuid=group_uuid, created_at=utcnow(), epoch=epoch, error=error
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])

    def journal_note(self, conn: Connection, entry_id: int, error: str) -> None:
        """Attach the error that kept an entry pending."""
        conn.execute(
            self.journal.update().where(self.journal.c.id == entry_id).values(error=error[:2000])
        )

    def journal_clear(self, conn: Connection, group_uuid: str, entry_ids: Sequence[int]) -> int:
        """Delete exactly the entries ``entry_ids`` of ``group_uuid``; return how many.

        Never a range: an entry written by another writer meanwhile is not the caller's to
        clear, whatever its id.
        """
        if not entry_ids:
            return 0
        j = self.journal
        result = conn.execute(
            j.delete().where(j.c.group_uuid == group_uuid, j.c.id.in_(list(entry_ids)))
        )
        return int(result.rowcount or 0)

    def journal_pending(self, conn: Connection, limit: int | None = None) -> list[JournalEntry]:
        """List pending entries, oldest first."""
        j = self.journal
        stmt = sa.select(j.c.id, j.c.group_uuid, j.c.created_at, j.c.epoch, j.c.error).order_by(
            j.c.id
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        return [JournalEntry(*row) for row in conn.execute(stmt)]

    def journal_for(self, conn: Connection, group_uuid: str) -> list[int]:
        """Return the ids of ``group_uuid``'s pending entries."""
        j = self.journal
        return [
            int(r[0])
            for r in conn.execute(
                sa.select(j.c.id).where(j.c.group_uuid == group_uuid).order_by(j.c.id)
            )
        ]

    def journal_count(self, conn: Connection) -> int:
        """Count pending entries."""
        return int(conn.execute(sa.select(sa.func.count()).select_from(self.journal)).scalar_one())


API = Side(
    "api",
    models.api_groups,
    models.api_policies,
    models.api_members,
    models.api_journal,
    member_column="instance_uuid",
    soft_delete=False,
    tombstones=models.api_tombstones,
)
CELL = Side(
    "cell",
    models.cell_groups,
    models.cell_policies,
    models.cell_members,
    models.cell_journal,
    member_column="instance_id",
    soft_delete=True,
)

#: The former name of :class:`Side`, kept for the modules that still import it.
GroupTables = Side
