"""Read and write shadowdb's own bookkeeping rows: the SQL on shadowdb's own tables lives here.

:mod:`shadowdb.queries` holds the SQL on Nova's group tables; this module holds the SQL on
the tables shadowdb adds for itself and on the mapping rows its cell commands manage. Each
function takes a :class:`~sqlalchemy.engine.Connection` and neither opens nor commits one:
the caller scopes the unit of work (``reader``/``writer``, a savepoint, or the switcher's
fenced transaction). Sections, one per table:

- **phase state**: the single ``shadowdb_state`` row of the API database (its phase,
  epoch, default cell, writer node), and each cell database's own (its writer node);
- **phase history**: ``shadowdb_phase_history``, one row per recorded phase change;
- **cell mappings**: Nova's ``cell_mappings`` rows that the cell commands add and
  remove, and the ``instance_mappings`` that keep a cell in use;
- **backfill chunks**: ``shadowdb_backfill_chunks``, the ranges the backfill scans and
  their checkpoints;
- **backfill conflicts**: ``shadowdb_backfill_conflicts``, the groups it refused to copy;
- **journals**: which groups each side's journal holds (``status`` compares them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.models import (
    api_backfill_chunks,
    api_backfill_conflicts,
    api_cell_mappings,
    api_instance_mappings,
    api_phase_history,
    api_state,
)
from shadowdb.state import utcnow

__all__ = [
    "Chunk",
    "HistoryEntry",
    "RecordedConflict",
    "add_chunks",
    "append_phase_history",
    "cell_mapping_named",
    "chunk_scans",
    "chunks_covered_to",
    "claim_chunk",
    "conflicts_by_cell",
    "delete_cell_mapping",
    "forget_conflict",
    "insert_cell_mapping",
    "instances_mapped_to",
    "journaled_groups",
    "move_checkpoint",
    "read_phase_history",
    "record_conflict",
    "recorded_conflicts",
    "write_default_cell",
    "write_phase",
    "write_writer_node",
]


# --------------------------------------------------------------------------- phase state


def write_phase(
    conn: Connection, *, expected_epoch: int, phase: str, epoch: int, changed_at: dt.datetime
) -> bool:
    """Set the phase row to ``phase`` at ``epoch`` if it still holds ``expected_epoch``.

    Returns:
        True if the row was changed; False if its epoch was not ``expected_epoch``.
    """
    updated = conn.execute(
        api_state.update()
        .where(api_state.c.id == 1, api_state.c.epoch == expected_epoch)
        .values(phase=phase, epoch=epoch, changed_at=changed_at)
    )
    return updated.rowcount == 1


def write_default_cell(conn: Connection, cell_uuid: str) -> None:
    """Make ``cell_uuid`` the cell where new groups' cell copies are written."""
    conn.execute(api_state.update().where(api_state.c.id == 1).values(default_cell_uuid=cell_uuid))


def write_writer_node(conn: Connection, table: sa.Table, node: str) -> bool:
    """Record ``node`` as the one Galera node shadowdb writes through, in a phase row.

    Args:
        table: the phase row's table, ``models.api_state`` or ``models.cell_state``,
            as the database ``conn`` is the API database or a cell's.

    Returns:
        True if the row named another node (or none) before.
    """
    done = conn.execute(
        table.update()
        .where(table.c.id == 1, table.c.writer_node.is_distinct_from(node))
        .values(writer_node=node)
    )
    return bool(done.rowcount)


# --------------------------------------------------------------------------- phase history


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One recorded phase change (the first is the initial state, with no ``from_phase``)."""

    epoch: int
    from_phase: str | None
    to_phase: str
    changed_at: dt.datetime
    actor: str
    reason: str | None
    forced: bool
    overridden: tuple[str, ...]

    # A history row holds a column per field; the overridden guard reasons are stored one
    # a line, NULL for none.
    @classmethod
    def from_row(cls, row: Any) -> HistoryEntry:
        """Read one ``shadowdb_phase_history`` row."""
        columns = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        overridden = tuple((row.overridden or "").splitlines())
        return cls(**{**columns, "forced": bool(row.forced), "overridden": overridden})

    def to_row(self) -> dict[str, Any]:
        """Return the ``shadowdb_phase_history`` row that records this change."""
        return {**dataclasses.asdict(self), "overridden": "\n".join(self.overridden) or None}


def append_phase_history(conn: Connection, entry: HistoryEntry) -> None:
    """Record one phase change."""
    conn.execute(api_phase_history.insert().values(entry.to_row()))


def read_phase_history(conn: Connection) -> list[HistoryEntry]:
    """Return every recorded phase change, oldest first."""
    h = api_phase_history
    rows = conn.execute(sa.select(h).order_by(h.c.epoch)).all()
    return [HistoryEntry.from_row(row) for row in rows]


# --------------------------------------------------------------------------- cell mappings


def cell_mapping_named(conn: Connection, name: str) -> int | None:
    """Return the id of the ``cell_mappings`` row named ``name``, if any."""
    m = api_cell_mappings
    found: int | None = conn.scalar(sa.select(m.c.id).where(m.c.name == name).limit(1))
    return found


def insert_cell_mapping(
    conn: Connection, *, uuid: str, name: str, database_connection: str, now: dt.datetime
) -> None:
    """Add a ``cell_mappings`` row as ``nova-manage cell_v2 create_cell`` would.

    shadowdb never talks to a cell's message queue: its transport URL is a placeholder.
    """
    conn.execute(
        api_cell_mappings.insert().values(
            created_at=now,
            updated_at=now,
            uuid=uuid,
            name=name,
            transport_url="none:///",
            database_connection=database_connection,
            disabled=False,
        )
    )


def delete_cell_mapping(conn: Connection, cell_id: int) -> None:
    """Delete the ``cell_mappings`` row ``cell_id``."""
    conn.execute(api_cell_mappings.delete().where(api_cell_mappings.c.id == cell_id))


def instances_mapped_to(conn: Connection, cell_id: int) -> int:
    """Count the ``instance_mappings`` rows that point at cell ``cell_id``."""
    m = api_instance_mappings
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(m).where(m.c.cell_id == cell_id)
        ).scalar_one()
    )


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


def chunk_scans(conn: Connection) -> list[tuple[str, bool, int]]:
    """Return ``(cell_uuid, done, end_id)`` of every chunk: how far each cell's scan stands."""
    rows = conn.execute(sa.select(_chunks.c.cell_uuid, _chunks.c.done, _chunks.c.end_id)).all()
    return [(row.cell_uuid, bool(row.done), int(row.end_id)) for row in rows]


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
    key = {"group_uuid": group_uuid, "cell_uuid": cell_uuid}
    exists = conn.execute(sa.select(_conflicts.c.id).filter_by(**key)).first()
    if exists is None:
        conn.execute(_conflicts.insert().values(**key, kind=kind, detail=detail, found_at=utcnow()))


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


def conflicts_by_cell(conn: Connection) -> list[tuple[str, str]]:
    """Return ``(cell_uuid, kind)`` of every recorded conflict (``status`` counts them)."""
    rows = conn.execute(sa.select(_conflicts.c.cell_uuid, _conflicts.c.kind)).all()
    return [(row.cell_uuid, row.kind) for row in rows]


# ------------------------------------------------------------------------ shadowdb journals


def journaled_groups(conn: Connection, journal: sa.Table) -> set[str]:
    """Return the uuids of the groups with a pending entry in ``journal`` (either side's)."""
    return set(conn.scalars(sa.select(journal.c.group_uuid)))
