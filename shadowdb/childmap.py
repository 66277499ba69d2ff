"""Read a backfill batch's children through a child map, never by scanning Nova's tables.

Nova's ``instance_group_policy`` and ``instance_group_member`` have no index on
``group_id`` (InnoDB adds one for the foreign key; SQLite and PostgreSQL do not), and
shadowdb never alters Nova's tables: reading a batch's children by ``group_id`` scans
both tables, once per batch, and a backfill grows with the square of the deployment.
So each cell database holds a map of its own, ``shadowdb_child_map`` (kind, child id,
group id), indexed on the group id, built in the server at one phase epoch
(``INSERT ... SELECT`` over the live child rows: one scan, no Python memory) and
recorded with that epoch in ``shadowdb_child_map_built``. A batch then finds its
groups' child ids in the map and reads the child rows by primary key, ``deleted = 0``
still filtered at read.

Why the map is exact for every group the backfill copies:

* It is built by a backfill batch, in the batch's cell transaction, after the batch
  pinned the cell's phase row (shared) in a dual-write phase at epoch E; it is used
  only at the epoch it was built at, and rebuilt at any other (the epoch grows with
  every phase change, so a map of an earlier epoch never survives a detour through
  ``cell-only``). Every ``cell-only`` write committed before the move into the
  dual-write phase, so before the build: it is in the map.
* Every write committed after the build is a dual-write write (the fence stops any
  other): in ``dual-write-cell-reads`` the cell write commits with an outbox entry in
  the same transaction and its replay leaves an API copy; in ``dual-write-api-reads``
  the API write adopts the group (an API copy) with an API journal entry; a later
  destroy of the API copy leaves a tombstone. The reverse sync and ``diff-report
  --repair`` write only groups the API database holds, tombstones or journals.
* So a group the batch copies (live in the cell, no API copy, no journal entry on
  either side, no tombstone) had no child written since the build: its map read is
  its exact state. A child soft-deleted since is filtered at read; Nova never
  un-deletes, and never moves a child to another group.
* A group that *has* an API copy may have gained a child since the build: when its
  map read differs from the API copy, :func:`exact` reads its children by
  ``group_id``, the old way (rare: groups written during the cutover), before the
  backfill calls it a conflict.

The build runs in one transaction with the batch: a crash rolls it back, and the next
batch builds again. Concurrent batches serialise on the ``shadowdb_child_map_built`` row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from shadowdb import models
from shadowdb.bulk import by_ids
from shadowdb.queries import CELL, GroupRecord
from shadowdb.state import utcnow

__all__ = ["build", "exact", "lock_many"]

_MAP = models.cell_child_map
_BUILT = models.cell_child_map_built
_POLICY = "p"
_MEMBER = "m"


def _built_epoch(conn: Connection, *, lock: bool = False) -> int | None:
    stmt = sa.select(_BUILT.c.epoch).where(_BUILT.c.id == 1)
    if lock:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return None if row is None else row.epoch


def _lock_built_row(conn: Connection) -> None:
    """Create the single ``shadowdb_child_map_built`` row if missing, locked until commit.

    An upsert, so that two first builders serialise on it instead of one failing on the
    primary key (MariaDB's ``ON DUPLICATE KEY UPDATE`` and PostgreSQL's ``ON CONFLICT DO
    UPDATE`` lock the existing row; SQLite's ``BEGIN IMMEDIATE`` already serialises).
    """
    dialect = conn.dialect.name
    if dialect in ("mysql", "mariadb"):
        my = mysql.insert(_BUILT).values(id=1)
        conn.execute(my.on_duplicate_key_update(id=my.inserted.id))
    elif dialect == "postgresql":
        pg = postgresql.insert(_BUILT).values(id=1)
        conn.execute(pg.on_conflict_do_update(index_elements=["id"], set_={"id": 1}))
    else:
        conn.execute(sqlite.insert(_BUILT).values(id=1).on_conflict_do_nothing())


def build(conn: Connection, epoch: int) -> bool:
    """Build the cell's child map at ``epoch`` unless it is built there; say if it was.

    The caller holds the cell's phase row (shared) at ``epoch``, in a dual-write phase
    (module docstring), in the transaction ``conn``; it commits the build with its batch.
    """
    if _built_epoch(conn) == epoch:
        return False
    _lock_built_row(conn)
    # Another batch may have built it while this one waited for the row.
    if _built_epoch(conn, lock=True) == epoch:
        return False
    conn.execute(_MAP.delete())
    for kind, table in ((_POLICY, CELL.policies), (_MEMBER, CELL.members)):
        conn.execute(
            _MAP.insert().from_select(
                ["kind", "child_id", "group_id"],
                sa.select(sa.literal(kind, sa.String(1)), table.c.id, table.c.group_id).where(
                    table.c.deleted == 0
                ),
            )
        )
    conn.execute(_BUILT.update().where(_BUILT.c.id == 1).values(epoch=epoch, built_at=utcnow()))
    return True


def _children(
    conn: Connection, kind: str, table: sa.Table, value: sa.Column[Any], ids: Sequence[int]
) -> dict[int, list[str]]:
    """Read the live children of the groups ``ids`` through the map, in row order."""
    found: dict[int, list[str]] = {i: [] for i in ids}
    joined = _MAP.join(table, table.c.id == _MAP.c.child_id)
    for where in by_ids(_MAP.c.group_id, ids):
        for gid, child in conn.execute(
            sa.select(_MAP.c.group_id, value)
            .select_from(joined)
            .where(_MAP.c.kind == kind, where, table.c.deleted == 0)
            .order_by(table.c.id)
        ):
            if gid in found:
                found[gid].append(child)
    return found


def lock_many(conn: Connection, ids: Sequence[int], epoch: int) -> list[GroupRecord]:
    """Lock the live cell groups with these ids and load them, children through the map.

    As :meth:`shadowdb.queries.Side.lock_many`, which it replaces in the backfill's
    batch; the map is built first if it is not at ``epoch`` (the epoch of the phase row
    the caller holds). Exact for the groups the backfill copies (module docstring);
    :func:`exact` re-reads the others.
    """
    build(conn, epoch)
    rows = CELL.lock_rows(conn, ids)
    if not rows:
        return []
    got = [r.id for r in rows]
    policies = _children(conn, _POLICY, CELL.policies, CELL.policies.c.policy, got)
    members = _children(conn, _MEMBER, CELL.members, CELL.member_col, got)
    return [GroupRecord.of(r, policies[r.id], members[r.id]) for r in rows]


def exact(
    conn: Connection, records: Sequence[GroupRecord], api_copies: Mapping[str, GroupRecord]
) -> list[GroupRecord]:
    """Re-read, by ``group_id``, the records whose API copy differs from their map read.

    A child added since the map was built is missing from the map read; only a group
    with an API copy can have one (module docstring), and it must not be reported as a
    conflict for it. Others are returned as they are.
    """
    stale = [
        r.uuid
        for r in records
        if (copy := api_copies.get(r.uuid)) is not None and not copy.same_data(r)
    ]
    if not stale:
        return list(records)
    # The rows are locked by the caller: each is still live.
    fresh = {r.uuid: r for r in CELL.get_many(conn, stale)}
    return [fresh.get(r.uuid, r) for r in records]
