"""Read and write shadowdb's own bookkeeping rows.

Each function takes a :class:`~sqlalchemy.engine.Connection` and neither opens nor
commits one: the caller scopes the unit of work (``reader``/``writer``, or the
switcher's fenced transaction). Sections, one per table:

- **phase state**: the single ``shadowdb_state`` row of the API database (its phase,
  epoch, default cell, writer node), and each cell database's own (its writer node);
- **phase history**: ``shadowdb_phase_history``, one row per recorded phase change;
- **cell mappings**: Nova's ``cell_mappings`` rows that ``shadowdb cell`` adds and
  removes, and the ``instance_mappings`` that keep a cell in use.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.models import api_cell_mappings, api_instance_mappings, api_phase_history, api_state

__all__ = [
    "HistoryEntry",
    "append_phase_history",
    "cell_mapping_named",
    "delete_cell_mapping",
    "insert_cell_mapping",
    "instances_mapped_to",
    "read_phase_history",
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


def append_phase_history(conn: Connection, entry: HistoryEntry) -> None:
    """Record one phase change; its overridden guard reasons are stored one a line."""
    conn.execute(
        api_phase_history.insert().values(
            epoch=entry.epoch,
            from_phase=entry.from_phase,
            to_phase=entry.to_phase,
            changed_at=entry.changed_at,
            actor=entry.actor,
            reason=entry.reason,
            forced=entry.forced,
            overridden="\n".join(entry.overridden) if entry.overridden else None,
        )
    )


def read_phase_history(conn: Connection) -> list[HistoryEntry]:
    """Return every recorded phase change, oldest first."""
    h = api_phase_history
    rows = conn.execute(sa.select(h).order_by(h.c.epoch)).all()
    return [
        HistoryEntry(
            epoch=row.epoch,
            from_phase=row.from_phase,
            to_phase=row.to_phase,
            changed_at=row.changed_at,
            actor=row.actor,
            reason=row.reason,
            forced=bool(row.forced),
            overridden=tuple(row.overridden.splitlines()) if row.overridden else (),
        )
        for row in rows
    ]


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
