"""Read and write shadowdb's own bookkeeping tables in the API database: the SQL lives here.

:mod:`shadowdb.queries` holds the SQL on Nova's tables; this module holds the SQL on the
tables shadowdb adds for itself, one section per table. Every function takes the
:class:`~sqlalchemy.engine.Connection` it is given and never commits or opens one; the
caller scopes the unit of work (and any savepoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.models import api_backfill_chunks, api_backfill_conflicts
from shadowdb.phase import utcnow

__all__ = [
    "Chunk",
    "RecordedConflict",
    "add_chunks",
    "chunks_covered_to",
    "claim_chunk",
    "forget_conflict",
    "move_checkpoint",
    "record_conflict",
    "recorded_conflicts",
]


# ------------------------------------------------------------------------ shadowdb_backfill_chunks


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One range of a cell's group ids the backfill scans, and where its scan stands."""

    id: int
    cell_uuid: str
    start_id: int
    end_id: int
    #: The first id not yet scanned: the resume point after a crash.
    next_id: int


_chunks = api_backfill_chunks


def chunks_covered_to(conn: Connection, cell_uuid: str) -> int:
    """Return the highest group id the cell's chunks cover (0 when it has none)."""
    return int(
        conn.execute(
            sa.select(sa.func.max(_chunks.c.end_id)).where(_chunks.c.cell_uuid == cell_uuid)
        ).scalar()
        or 0
    )


def add_chunks(conn: Connection, cell_uuid: str, starts: Sequence[int], size: int) -> None:
    """Record pending chunks of ``size`` ids starting at each of ``starts``.

    Raises:
        sqlalchemy.exc.IntegrityError: a chunk with one of these starts exists already.
    """
    if not starts:
        return
    now = utcnow()
    conn.execute(
        _chunks.insert(),
        [
            {
                "cell_uuid": cell_uuid,
                "start_id": start,
                "end_id": start + size - 1,
                "next_id": start,
                "done": False,
                "updated_at": now,
            }
            for start in starts
        ],
    )


def claim_chunk(conn: Connection, cell_uuids: Sequence[str], *, lock: bool) -> Chunk | None:
    """Return the first pending chunk of these cells, or ``None``.

    With ``lock``, the chunk's row is locked for the transaction and chunks other
    transactions hold are skipped (``FOR UPDATE SKIP LOCKED``).
    """
    stmt = (
        sa.select(
            _chunks.c.id,
            _chunks.c.cell_uuid,
            _chunks.c.start_id,
            _chunks.c.end_id,
            _chunks.c.next_id,
        )
        .where(_chunks.c.done.is_(False), _chunks.c.cell_uuid.in_(list(cell_uuids)))
        .order_by(_chunks.c.id)
        .limit(1)
    )
    if lock:
        stmt = stmt.with_for_update(skip_locked=True)
    row = conn.execute(stmt).first()
    if row is None:
        return None
    return Chunk(row.id, row.cell_uuid, row.start_id, row.end_id, row.next_id)


def move_checkpoint(conn: Connection, chunk_id: int, next_id: int, *, done: bool) -> None:
    """Move a chunk's resume point to ``next_id``; ``done`` once it is scanned to its end."""
    conn.execute(
        _chunks.update()
        .where(_chunks.c.id == chunk_id)
        .values(next_id=next_id, done=done, updated_at=utcnow())
    )


# --------------------------------------------------------------------- shadowdb_backfill_conflicts


@dataclasses.dataclass(frozen=True)
class RecordedConflict:
    """A group the backfill refused to copy, as recorded for the next run to retry."""

    id: int
    group_uuid: str
    cell_uuid: str
    kind: str
    detail: str | None


_conflicts = api_backfill_conflicts


def record_conflict(
    conn: Connection, group_uuid: str, cell_uuid: str, kind: str, detail: str
) -> None:
    """Record a conflict of the group in this cell, unless one is recorded already."""
    exists = conn.execute(
        sa.select(_conflicts.c.id).where(
            _conflicts.c.group_uuid == group_uuid, _conflicts.c.cell_uuid == cell_uuid
        )
    ).first()
    if exists is None:
        conn.execute(
            _conflicts.insert().values(
                group_uuid=group_uuid,
                cell_uuid=cell_uuid,
                kind=kind,
                detail=detail,
                found_at=utcnow(),
            )
        )


def recorded_conflicts(
    conn: Connection, cell_uuids: Sequence[str], limit: int
) -> list[RecordedConflict]:
    """Return up to ``limit`` recorded conflicts of these cells, oldest first."""
    rows = conn.execute(
        sa.select(
            _conflicts.c.id,
            _conflicts.c.group_uuid,
            _conflicts.c.cell_uuid,
            _conflicts.c.kind,
            _conflicts.c.detail,
        )
        .where(_conflicts.c.cell_uuid.in_(list(cell_uuids)))
        .order_by(_conflicts.c.id)
        .limit(limit)
    ).all()
    return [RecordedConflict(r.id, r.group_uuid, r.cell_uuid, r.kind, r.detail) for r in rows]


def forget_conflict(conn: Connection, conflict_id: int) -> None:
    """Delete a recorded conflict (it resolved)."""
    conn.execute(_conflicts.delete().where(_conflicts.c.id == conflict_id))
