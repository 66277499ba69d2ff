"""Write one side's group rows: inserts, replace-sets, soft or hard deletes, tombstones.

:class:`~shadowdb.queries.Side` delegates every write on its group tables here; the
statements are the ones it sent before (``tests/test_write_statements.py`` counts them).
Every method takes the :class:`~sqlalchemy.engine.Connection` it is given and never
commits or opens one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from shadowdb import models
from shadowdb.bulk import BulkInsert, chunks
from shadowdb.records import COPIED_FIELDS, GroupRecord
from shadowdb.state import utcnow

__all__ = ["GroupWrites"]


class GroupWrites:
    """The writes on one side's group, policy, member and tombstone tables."""

    def __init__(
        self,
        groups: sa.Table,
        policies: sa.Table,
        members: sa.Table,
        member_column: str,
        soft_delete: bool,
        tombstones: sa.Table | None,
        ids_by_uuid: sa.Select[Any],
    ) -> None:
        self.groups = groups
        self.policies = policies
        self.members = members
        self.member_col: sa.Column[Any] = members.c[member_column]
        self.soft_delete = soft_delete
        self.tombstones = tombstones
        #: ``uuid, id`` of the live groups among the expanding parameter ``uuids``.
        self._ids_by_uuid = ids_by_uuid
        extra = ("deleted",) if soft_delete else ()
        self._bulk_groups = BulkInsert(groups, ("uuid", *COPIED_FIELDS), extra)
        self._bulk_policies = BulkInsert(policies, ("group_id", "policy"), ("created_at", *extra))
        self._bulk_members = BulkInsert(
            members, ("group_id", member_column), ("created_at", *extra)
        )

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

    def touch(self, conn: Connection, group_id: int, when: dt.datetime | None = None) -> None:
        """Set ``updated_at`` of the group row."""
        self.update_fields(conn, group_id, {"updated_at": when or utcnow()})
