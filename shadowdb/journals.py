"""Keep the journals: the record of a group whose other copy may lag, and its replay.

A write in a dual-write phase leaves an entry (an outbox) in the journal of the database
it is acknowledged by, in the same transaction. The entry is cleared once the other
copy is level; one that stays (its second half failed, or its process died) is replayed
later by :func:`drain_journals`: under the group's locks, in the order every writer
takes them (:mod:`shadowdb.locks`), the journal side's *current* state is copied to the
other side, then exactly the entries seen are cleared.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb import signals
from shadowdb.databases import Cell, Databases, read_each
from shadowdb.errors import DatabaseUnreachable, ShadowDBError
from shadowdb.failures import DB_FAILURES, one_line
from shadowdb.fence import CellBehind, EpochChanged
from shadowdb.location import default_cell, locate
from shadowdb.locks import api_transaction, cell_transaction
from shadowdb.queries import API, CELL, GroupRecord, Side
from shadowdb.state import read_state
from shadowdb.transactions import commit, reader, transaction
from shadowdb.writes import copy_group

__all__ = [
    "OUTBOX",
    "DrainResult",
    "announce_conflict",
    "drain_journals",
    "note_entry",
    "replay",
]

log = structlog.get_logger(__name__)

#: The note of an outbox entry written with its write, before the other copy is tried:
#: an entry still bearing it records no failure (its writer's second half is in flight,
#: or its process died), so ``phase set`` may replay it under the fence.
OUTBOX = "other copy not yet written"


def note_entry(
    engine: sa.Engine,
    label: str,
    side: Side,
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


class _Copy(NamedTuple):
    """One side of a replay: its tables, its locked transaction, its copy of the group."""

    side: Side
    conn: Connection
    record: GroupRecord | None
    label: str


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
        in_cell = _Copy(CELL, cconn, crec, cell.label)
        in_api = _Copy(API, aconn, arec, dbs.api_label)
        journaled, other = (in_cell, in_api) if source is not None else (in_api, in_cell)
        if other.side.journal_for(other.conn, group_uuid):
            return _conflict(dbs, group_uuid)
        copy_group(other.conn, other.side, journaled.record, other.record)
        # The other copy must be durable before the journal's entries go.
        commit(other.conn, other.label)
        cleared = journaled.side.journal_clear(journaled.conn, group_uuid, entry_ids)
        commit(journaled.conn, journaled.label)
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

    def unreadable(cell: Cell, err: ShadowDBError) -> None:
        errors.append(f"{cell.label}: {one_line(err)}")

    journals = read_each(dbs.cells, CELL.journal_pending, catch=ShadowDBError, failed=unreadable)
    for cell, entries in journals:
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
