"""The fence: every database a write touches says which phase it is in.

The phase and its epoch live in a ``shadowdb_state`` row in the API database *and in
every cell database*. A write transaction reads the row of each database it writes,
under a shared lock, as its first statement (:func:`pin_cell`, :func:`pin_api`), and
goes on only if the epoch there is the one it planned under. ``phase set`` changes
every row under exclusive locks (:func:`record`), so it waits for the writers in flight,
and every writer after it sees the new epoch in the very database it writes. No write
depends on another process's clock or cache: a ``cell-only`` writer, a process cut off
from the API database and a process with a long phase TTL are all stopped by the row
of the database they write.

The commit point, in two phases
    :func:`shadowdb.switcher.Switcher` locks the cell rows (in cell order) and then the
    API row. It first *prepares* every cell: the new epoch goes into the row's
    ``next_epoch`` and each cell commits. Then it commits the API database: that commit
    is the change. Then each cell's row takes the new phase and epoch (``settle_cell``).

    So a cell's row never names a newer epoch than the API's, and a cell row with no
    ``next_epoch``, pinned by a writer, proves the API database is at that epoch for as
    long as the pin holds (no change can prepare the cell under it). A writer that finds
    ``next_epoch`` set cannot know alone whether the change committed: it settles the
    cell, which reads the API row under a shared lock (waiting while ``phase set`` holds
    it) and either takes the new epoch or, if the API database never committed it, clears
    the mark; if the API database cannot be reached the write is refused, never acted on
    under a phase that may have ended. In particular a ``cell-only`` writer, or a
    ``dual-write-cell-reads`` writer whose API write fails, acknowledges a write on the
    strength of its cell's row alone only when no change is in flight.

    A cell whose finishing commit did not happen *lags*; everything that needs the whole
    deployment in one phase (a backfill, a gating diff-report, the next ``phase set``)
    first settles every cell and refuses while one lags. :func:`settle` runs at
    ``phase set``, ``status`` and ``db sync``, and a writer that finds its cell behind
    the API, or prepared, settles that cell itself (:class:`CellBehind`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb.databases import Cell, Databases, reader, writer
from shadowdb.errors import DatabaseUnreachable, ShadowDBError
from shadowdb.models import api_cell_mappings, cell_state
from shadowdb.state import PhaseState, read_cell_state, read_state

__all__ = [
    "CellBehind",
    "CellsChanged",
    "EpochChanged",
    "check_cells",
    "describe_row",
    "lagging",
    "pin_api",
    "pin_cell",
    "prepare_cell",
    "settle",
    "settle_cell",
    "settled_at",
    "write_cell_state",
]

log = structlog.get_logger(__name__)


class EpochChanged(Exception):
    """The phase changed under a writer before anything committed: retry under the new one."""

    def __init__(self, planned: PhaseState, found: PhaseState) -> None:
        self.planned = planned
        # A cell's row does not carry the default cell: keep the plan's.
        self.found = (
            found
            if found.default_cell_uuid is not None
            else dataclasses.replace(found, default_cell_uuid=planned.default_cell_uuid)
        )
        super().__init__(
            f"phase moved from {planned.phase.value} (epoch {planned.epoch}) to "
            f"{found.phase.value} (epoch {found.epoch})"
        )


class CellsChanged(Exception):
    """The registered cells differ from the ones this process knows: re-read, then retry."""

    def __init__(self, known: Sequence[str], current: Sequence[str]) -> None:
        self.known = tuple(known)
        self.current = tuple(current)
        super().__init__(f"cell_mappings changed: knew {len(known)} cells, now {len(current)}")


def check_cells(conn: Connection, dbs: Databases) -> None:
    """Refuse a write planned with a stale list of cells (one registered since, or gone).

    Run in the API transaction of a write that located its group among the cells it
    knows: a group in a cell registered after this process read ``cell_mappings`` would
    otherwise be missed, and a second cell copy made elsewhere.

    Raises:
        CellsChanged: ``cell_mappings`` no longer lists exactly the known cells.
    """
    t = api_cell_mappings
    current = tuple(conn.scalars(sa.select(t.c.uuid).order_by(t.c.id)))
    known = tuple(c.uuid for c in dbs.cells)
    if current != known:
        raise CellsChanged(known, current)


class CellBehind(Exception):
    """A cell lags the plan, or holds a prepared change: settle it, then plan afresh."""

    def __init__(self, cell: Cell, planned: PhaseState, found: PhaseState | None) -> None:
        self.cell = cell
        self.planned = planned
        self.found = found
        at = "no phase row" if found is None else f"epoch {found.epoch}"
        if found is not None and found.next_epoch is not None:
            at += f", epoch {found.next_epoch} prepared"
        super().__init__(f"{cell.label} is at {at}, the plan at epoch {planned.epoch}")


def pin_cell(conn: Connection, cell: Cell, planned: PhaseState) -> PhaseState:
    """Pin the cell's phase for this transaction; refuse a plan made under another epoch.

    Must be the transaction's first statement: the shared lock holds until it ends, so
    ``phase set`` cannot change this cell's phase under the write.

    Raises:
        EpochChanged: the cell is at a newer epoch (its phase is the one to plan on).
        CellBehind: the cell lags the plan (a change whose API commit happened), or a
            change is prepared in it (only the API database's row tells its outcome).
    """
    found = read_cell_state(conn, share=True, label=cell.label)
    if found is None or found.epoch < planned.epoch or found.next_epoch is not None:
        raise CellBehind(cell, planned, found)
    if found.epoch > planned.epoch:
        raise EpochChanged(planned, found)
    return found


def pin_api(conn: Connection, planned: PhaseState) -> PhaseState:
    """Pin the API database's phase for this transaction, as :func:`pin_cell` does.

    Raises:
        EpochChanged: the API database is at another epoch.
    """
    found = read_state(conn, share=True)
    if found.epoch != planned.epoch:
        raise EpochChanged(planned, found)
    return found


def write_cell_state(
    conn: Connection, state: PhaseState, *, exists: bool, next_epoch: int | None = None
) -> None:
    """Set the cell's row to ``state`` (inserting it if ``exists`` is false)."""
    values = {
        "phase": state.phase.value,
        "epoch": state.epoch,
        "changed_at": state.changed_at,
        "next_epoch": next_epoch,
    }
    if exists:
        conn.execute(cell_state.update().where(cell_state.c.id == 1).values(**values))
    else:
        conn.execute(cell_state.insert().values(id=1, **values))


def prepare_cell(conn: Connection, next_epoch: int) -> None:
    """Mark a change to ``next_epoch`` prepared in the cell (its row locked on ``conn``)."""
    conn.execute(cell_state.update().where(cell_state.c.id == 1).values(next_epoch=next_epoch))


def settle_cell(dbs: Databases, cell: Cell, hint: PhaseState | None = None) -> bool:
    """Bring ``cell``'s row to the API database's epoch, or clear a change never made.

    The cell's row is locked, then the API database's row is read under a shared lock
    (which waits while a ``phase set`` holds it): its epoch decides. Never moves a row
    backwards. ``hint`` (an API state read without a lock) lets a cell already at or
    past it, with nothing prepared, be left without reading the API row. Returns whether
    it changed anything.

    Raises:
        DatabaseUnreachable: the cell or the API database cannot be reached.
    """
    try:
        with writer(cell.engine, cell.label) as conn:
            found = read_cell_state(conn, for_update=True, label=cell.label)
            idle = found is not None and found.next_epoch is None
            if idle and hint is not None and found is not None and found.epoch >= hint.epoch:
                return False
            with writer(dbs.api, dbs.api_label) as aconn:
                state = read_state(aconn, share=True)
            if found is not None and found.epoch >= state.epoch:
                if found.next_epoch is None:
                    return False
                # Prepared, but the API database never took it: the change did not happen.
                write_cell_state(conn, found, exists=True)
            else:
                write_cell_state(conn, state, exists=found is not None)
    except sa.exc.IntegrityError:
        return False  # another process inserted the row first: it settled the cell
    log.info(
        "cell_settled",
        cell=cell.name,
        phase=state.phase.value,
        epoch=state.epoch,
        was=None if found is None else found.epoch,
        prepared=None if found is None else found.next_epoch,
    )
    return True


def settle(dbs: Databases, cells: Sequence[Cell] | None = None) -> tuple[PhaseState, list[str]]:
    """Finish a half-done phase change: bring every lagging cell to the API's epoch.

    ``cells`` defaults to every registered cell, read afresh from ``cell_mappings``.

    Returns:
        The API database's state and one line per cell that could not be settled.
    """
    with reader(dbs.api, dbs.api_label) as conn:
        state = read_state(conn)  # first: an unsynced API database is refused as such
    problems: list[str] = []
    for cell in dbs.refresh_cells() if cells is None else cells:
        try:
            settle_cell(dbs, cell, state)
        except (ShadowDBError, sa.exc.DBAPIError) as err:
            problems.append(f"{cell.label}: {err}")
    return state, problems


def settled_at(found: PhaseState | None, epoch: int) -> bool:
    """Whether a cell's row (``found``) has taken ``epoch``, with nothing prepared."""
    return found is not None and found.epoch == epoch and found.next_epoch is None


def describe_row(found: PhaseState | None) -> str:
    """Say where a cell's row stands, for messages."""
    if found is None:
        return "no phase row"
    if found.next_epoch is not None:
        return f"epoch {found.epoch} with epoch {found.next_epoch} prepared"
    return f"epoch {found.epoch}"


def lagging(dbs: Databases, state: PhaseState) -> list[str]:
    """Return one line per cell not at ``state``'s epoch (unreachable ones included)."""
    problems: list[str] = []
    for cell in dbs.cells:
        try:
            with reader(cell.engine, cell.label) as conn:
                found = read_cell_state(conn, label=cell.label)
        except DatabaseUnreachable as err:
            problems.append(f"{cell.label}: unreachable ({err})")
            continue
        if not settled_at(found, state.epoch):
            problems.append(
                f"{cell.label} is at {describe_row(found)}, the API database at epoch "
                f"{state.epoch} (run `shadowdb status` to settle it)"
            )
    return problems
