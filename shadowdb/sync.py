"""Bring one copy of a group level with the other, under the per-group lock.

One mechanism serves three callers: the second write of a dual-write phase, the replay
of a journal entry (:func:`drain_journals`) and, later, the backfill. Each makes the
*other* side equal to a *source* side's current state of one group, holding the group's
lock, so the order of operations is the same on both databases.

The lock protocol (see also :mod:`shadowdb.phases.base`): a unit that touches both copies
of group G first locks G's live row in the cell database that holds it
(``SELECT ... FOR UPDATE`` inside the cell transaction; SQLite's ``BEGIN IMMEDIATE``),
then G's row in the API database. Every dual-write writer and every replay take the
locks in that order, so they are serialised per group and cannot deadlock one another.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb import signals
from shadowdb.databases import Cell, Databases, choose_default, reader
from shadowdb.errors import (
    DatabaseUnreachable,
    NoDefaultCell,
    OperationalError,
    ShadowDBError,
)
from shadowdb.fence import CellBehind, EpochChanged, pin_api, pin_cell
from shadowdb.phase import PhaseState, read_state
from shadowdb.queries import API, CELL, COPIED_FIELDS, GroupRecord, GroupTables
from shadowdb.transactions import commit, transaction

__all__ = [
    "OUTBOX",
    "DrainResult",
    "commit",
    "copy_group",
    "default_cell",
    "drain_journals",
    "locate",
    "note_entry",
    "one_line",
    "transaction",
]

log = structlog.get_logger(__name__)

#: The note of an outbox entry written with its write, before the other copy is tried:
#: an entry still bearing it records no failure (its writer's second half is in flight,
#: or its process died), so ``phase set`` may replay it under the fence.
OUTBOX = "other copy not yet written"

#: What a failed database call can raise: ours (translated) or the driver's.
DB_FAILURES: tuple[type[BaseException], ...] = (
    OperationalError,
    sa.exc.DBAPIError,
)


def one_line(err: BaseException) -> str:
    """Render ``err`` as one line, passwords masked."""
    from shadowdb.urls import mask_text

    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return mask_text(f"{type(err).__name__}: {text}")[:500]


def copy_group(
    conn: Connection,
    side: GroupTables,
    source: GroupRecord | None,
    current: GroupRecord | None,
) -> bool:
    """Make ``side``'s copy (``current``) equal to ``source``; return whether it changed.

    ``source`` ``None`` means the group is gone: the copy is deleted (soft on a cell).
    Timestamps are carried over, so a copy keeps its group's ``created_at``.
    """
    if source is None:
        if current is None:
            return False
        side.delete(conn, current)
        return True
    if current is None:
        side.insert(conn, source)
        return True
    fields: dict[str, Any] = {
        f: getattr(source, f) for f in COPIED_FIELDS if getattr(source, f) != getattr(current, f)
    }
    side.update_fields(conn, current.id, fields)
    changed = bool(fields)
    changed |= side.set_policies(conn, current, source.policies)
    changed |= side.set_members(conn, current, source.members)
    return changed


def default_cell(dbs: Databases, state: PhaseState) -> Cell:
    """Return the cell where new groups' cell copies are written (never cell0).

    Raises:
        NoDefaultCell: no cell besides cell0 is registered, or several are and none was
            chosen (``shadowdb cell set-default NAME``).
    """
    chosen = choose_default(dbs.cells, state.default_cell_uuid)
    if chosen is None:
        raise NoDefaultCell([c.name for c in dbs.cells if not c.is_cell0])
    return chosen


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a group's live cell copy is, and which cells could not be asked."""

    cell: Cell | None
    unreachable: tuple[Cell, ...]


def locate(dbs: Databases, group_uuid: str) -> Location:
    """Find the cell holding ``group_uuid``'s live copy, asking each cell in turn."""
    unreachable: list[Cell] = []
    g = CELL.groups
    stmt = sa.select(g.c.id).where(g.c.uuid == group_uuid, g.c.deleted == 0).limit(1)
    for cell in dbs.cells:
        try:
            with reader(cell.engine, cell.label) as conn:
                if conn.execute(stmt).first() is not None:
                    return Location(cell, tuple(unreachable))
        except DatabaseUnreachable:
            unreachable.append(cell)
    return Location(None, tuple(unreachable))


@contextlib.contextmanager
def cell_transaction(
    dbs: Databases, cell: Cell, state: PhaseState, group_uuid: str
) -> Iterator[tuple[Connection, GroupRecord | None]]:
    """Open a write transaction on ``cell`` for one group, fenced and locked.

    In this order, the same for every writer of every phase (so none can deadlock
    another): the cell's phase row under a shared lock (:func:`~shadowdb.fence.pin_cell`,
    the first statement), the group's identity lock (held whether or not a row exists),
    then the group's live row. Yields the connection and the locked cell copy.
    """
    with transaction(cell.engine, cell.label) as conn:
        pin_cell(conn, cell, state)
        CELL.lock_identity(conn, group_uuid)
        yield conn, CELL.get(conn, group_uuid, lock=True)


@contextlib.contextmanager
def api_transaction(
    dbs: Databases, state: PhaseState, group_uuid: str
) -> Iterator[tuple[Connection, GroupRecord | None]]:
    """Open a write transaction on the API database for one group, fenced and locked.

    The API database's phase row under a shared lock first (:func:`~shadowdb.fence.pin_api`),
    then the group's row. Always taken after the cell's locks, never before.
    """
    with transaction(dbs.api, dbs.api_label) as conn:
        pin_api(conn, state)
        yield conn, API.get(conn, group_uuid, lock=True)


def note_entry(
    engine: sa.Engine,
    label: str,
    side: GroupTables,
    group_uuid: str,
    entry: int,
    err: BaseException,
) -> None:
    """Record on a journal entry why it stays: from now on a backfill's drain replays it."""
    try:
        with transaction(engine, label) as conn:
            side.journal_note(conn, entry, one_line(err))
            commit(conn, label)
    except DB_FAILURES:
        log.info("journal_note_failed", group_uuid=group_uuid)


@dataclasses.dataclass(frozen=True)
class DrainResult:
    """What :func:`drain_journals` did."""

    found: int
    done: int
    conflicts: tuple[str, ...]
    errors: tuple[str, ...]


def replay(dbs: Databases, group_uuid: str, source: Cell | None, entry_ids: list[int]) -> str:
    """Replay one group's journal: copy the journal side's state to the other side.

    ``source`` is the cell whose journal holds the entries, or ``None`` for the API
    journal. Fenced and locked as a writer is (:mod:`shadowdb.phases.base`), under the
    phase the API database holds now; clears exactly ``entry_ids``. Returns ``"done"``
    or ``"conflict"`` (both sides journaled: never resolved silently).
    """
    with reader(dbs.api, dbs.api_label) as conn:
        state = read_state(conn)  # not the cache: the replay is fenced at this epoch
    cell = source
    if cell is None:
        where = locate(dbs, group_uuid)
        cell = where.cell
    if cell is None:
        if where.unreachable:
            raise DatabaseUnreachable(where.unreachable[0].label, "cannot locate the group")
        cell = default_cell(dbs, state)
    with (
        cell_transaction(dbs, cell, state, group_uuid) as (cconn, crec),
        api_transaction(dbs, state, group_uuid) as (aconn, arec),
    ):
        if source is not None:
            if API.journal_for(aconn, group_uuid):
                return _conflict(dbs, group_uuid)
            copy_group(aconn, API, crec, arec)
            commit(aconn, dbs.api_label)
            cleared = CELL.journal_clear(cconn, group_uuid, entry_ids)
            commit(cconn, cell.label)
        else:
            if CELL.journal_for(cconn, group_uuid):
                return _conflict(dbs, group_uuid)
            copy_group(cconn, CELL, arec, crec)
            # The cell copy must be durable before the API entry goes.
            commit(cconn, cell.label)
            cleared = API.journal_clear(aconn, group_uuid, entry_ids)
            commit(aconn, dbs.api_label)
    journal = "cell" if source is not None else "api"
    log.info("journal_replayed", group_uuid=group_uuid, journal=journal, entries=cleared)
    signals.send(
        signals.journal_replayed, dbs, group_uuid=group_uuid, journal=journal, entries=cleared
    )
    return "done"


def announce_conflict(dbs: Databases, group_uuid: str) -> None:
    """Log and signal a group journaled on both sides (never resolved silently)."""
    detail = "journaled on both sides: each holds a write the other lacks"
    log.error("journal_conflict", group_uuid=group_uuid, detail=detail)
    signals.send(
        signals.divergence, dbs, group_uuid=group_uuid, kind="journal-conflict", detail=detail
    )


def _conflict(dbs: Databases, group_uuid: str) -> str:
    announce_conflict(dbs, group_uuid)
    return "conflict"


def drain_journals(dbs: Databases, *, limit: int | None = None) -> DrainResult:
    """Replay pending journal entries of every cell and of the API database.

    Each group is replayed once per journal, whatever the number of its entries, and
    clears only the entries it saw: an entry written meanwhile stays for the next run.

    Args:
        limit: replay at most this many groups.

    Returns:
        ``found`` groups with pending entries, ``done`` replayed, the uuids in conflict
        (pending on both sides; left for an operator) and one line per failure.
    """
    pending: list[tuple[Cell | None, str, list[int]]] = []
    errors: list[str] = []
    for cell in dbs.cells:
        try:
            with reader(cell.engine, cell.label) as conn:
                entries = CELL.journal_pending(conn)
        except ShadowDBError as err:
            errors.append(f"{cell.label}: {one_line(err)}")
            continue
        seen: dict[str, list[int]] = {}
        for entry in entries:
            seen.setdefault(entry.group_uuid, []).append(entry.id)
        pending.extend((cell, uuid, ids) for uuid, ids in seen.items())
    with reader(dbs.api, dbs.api_label) as conn:
        api_entries = API.journal_pending(conn)
    seen_api: dict[str, list[int]] = {}
    for entry in api_entries:
        seen_api.setdefault(entry.group_uuid, []).append(entry.id)
    pending.extend((None, uuid, ids) for uuid, ids in seen_api.items())
    if limit is not None:
        pending = pending[:limit]
    done = 0
    conflicts: list[str] = []
    for source, group_uuid, ids in pending:
        try:
            outcome = replay(dbs, group_uuid, source, ids)
        except (CellBehind, EpochChanged) as err:
            # A phase change is in flight: the entry stays for the next run.
            errors.append(f"{group_uuid}: {err}; run again")
            continue
        except (ShadowDBError, sa.exc.DBAPIError) as err:
            errors.append(f"{group_uuid}: {one_line(err)}")
            continue
        if outcome == "done":
            done += 1
        else:
            conflicts.append(group_uuid)
    return DrainResult(len(pending), done, tuple(conflicts), tuple(errors))
