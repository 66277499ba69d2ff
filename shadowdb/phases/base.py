"""Share what the four phase strategies have in common: lookups, reads, the fenced locks.

Each phase module, beside this one, holds its own reads and its own write order, so
that the argument for one phase reads in one file. What they share lives here:

- **The fence** (:mod:`shadowdb.fence`): every write transaction starts by reading its
  database's phase row under a shared lock (:func:`cell_transaction`,
  :func:`api_transaction`) and refuses a plan made under another epoch
  (:class:`~shadowdb.fence.EpochChanged`: the caller re-plans under the phase found).
- **One lock order** for every writer of every phase: the cell's phase row, the group's
  identity lock in the cell that holds it (else the default cell), the cell row; then
  the API database's phase row and the API row. Writers of the two dual-write phases
  are thereby serialised per group, including a group that has no row on either side.
- **Signals after commit**, through :func:`shadowdb.signals.send`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol

import structlog
from sqlalchemy.engine import Connection

from shadowdb import lookups, signals
from shadowdb.databases import Cell, Databases, cell0_last, read_again_once, reader
from shadowdb.errors import DatabaseUnreachable, GroupExists, GroupNotFound, JournalConflict
from shadowdb.failures import one_line
from shadowdb.fence import EpochChanged
from shadowdb.journals import announce_conflict
from shadowdb.location import default_cell, locate
from shadowdb.locks import api_transaction, cell_transaction
from shadowdb.queries import API, CELL, GroupRecord, Scope, Side
from shadowdb.state import Phase, PhaseState
from shadowdb.writes import Write, Written

__all__ = [
    "EpochChanged",
    "Lookup",
    "PhaseStrategy",
    "Written",
    "api_transaction",
    "cell_transaction",
    "check_scope",
    "find_api_copy",
    "find_cell_copy",
    "find_in_api",
    "find_in_api_with_phase",
    "find_in_cells",
    "list_api",
    "list_cells",
    "merge",
    "shadow_failed",
    "target_cell",
]

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class Lookup:
    """How a caller looks a group up: by ``uuid``, ``name`` or member ``instance``."""

    kind: Literal["uuid", "name", "instance"]
    key: str

    def not_found(self) -> GroupNotFound:
        """Build the error for a lookup that found nothing."""
        if self.kind == "name":
            return GroupNotFound(name=self.key)
        if self.kind == "instance":
            return GroupNotFound(instance_uuid=self.key)
        return GroupNotFound(self.key)


class PhaseStrategy(Protocol):
    """What each phase decides: where reads go, where writes go and in which order."""

    phase: Phase

    def find(self, dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
        """Return the group ``lookup`` names, as the phase's read database has it."""
        ...

    def list(self, dbs: Databases, scope: Scope) -> list[GroupRecord]:
        """Return every group within ``scope``, one copy per uuid."""
        ...

    def write(
        self, dbs: Databases, state: PhaseState, write: Write, *, scope: Scope | None
    ) -> Written:
        """Apply ``write`` to its group in the phase's databases."""
        ...


# --------------------------------------------------------------------------- reads


def _find_on(conn: Connection, side: Side, lookup: Lookup, scope: Scope) -> GroupRecord | None:
    if lookup.kind == "name":
        return side.by_name(conn, lookup.key, scope=scope)
    # uuid and member lookups are the scheduler's hot path: two statements at most,
    # one if there is no such group (shadowdb.lookups).
    return lookups.find(conn, side, lookup.kind, lookup.key, scope)


def find_in_api(dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord | None:
    """Look the group up in the API database (through its hot-path read engine)."""
    return read_again_once(
        dbs.api_fast, dbs.api_label, lambda conn: _find_on(conn, API, lookup, scope)
    )


def find_api_copy(dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
    """Return the group from the API database (:func:`find_in_api`), for ``api-only``.

    Raises:
        GroupNotFound: the API database does not hold it (the lookup's own error).
    """
    record = find_in_api(dbs, lookup, scope)
    if record is None:
        raise lookup.not_found()
    return record


def find_in_api_with_phase(
    dbs: Databases, lookup: Lookup, scope: Scope
) -> tuple[GroupRecord | None, PhaseState | None]:
    """Look the group up in the API database with the phase row read alongside.

    uuid and member lookups read the phase in the same statement; a name lookup does
    not (None): the caller reads it itself if it needs it.
    """

    def read(conn: Connection) -> tuple[GroupRecord | None, PhaseState | None]:
        if lookup.kind == "name":
            return _find_on(conn, API, lookup, scope), None
        return lookups.find_with_phase(conn, lookup.kind, lookup.key, scope)

    return read_again_once(dbs.api_fast, dbs.api_label, read)


def find_in_cells(dbs: Databases, lookup: Lookup, scope: Scope) -> tuple[GroupRecord, Cell] | None:
    """Look the group up in every cell (cell0 last); never skip one silently.

    A uuid or member lookup stops at the first cell that answers. A name lookup asks
    every cell and takes the oldest match (``created_at``, then cell order), so the
    answer does not depend on which cell happens to be asked first.

    Raises:
        DatabaseUnreachable: a cell that might hold the answer could not be asked.
    """
    unreachable: list[str] = []
    candidates: list[tuple[GroupRecord, Cell]] = []
    for cell in cell0_last(dbs.cells):
        try:
            found = read_again_once(
                dbs.read_engine(cell.engine),
                cell.label,
                lambda conn: _find_on(conn, CELL, lookup, scope),
            )
        except DatabaseUnreachable:
            unreachable.append(cell.label)
            continue
        if found is not None:
            if lookup.kind != "name":
                return found, cell
            candidates.append((found, cell))
    if unreachable:
        raise DatabaseUnreachable(
            ", ".join(unreachable), f"cannot look up {lookup.kind} {lookup.key}"
        )
    if not candidates:
        return None
    return min(candidates, key=lambda c: (c[0].created_at is None, c[0].created_at or 0))


def find_cell_copy(dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
    """Return the group from the cells (:func:`find_in_cells`), for the cell-reading phases.

    Raises:
        GroupNotFound: no cell holds it (the lookup's own error).
        DatabaseUnreachable: a cell that might hold the answer could not be asked.
    """
    found = find_in_cells(dbs, lookup, scope)
    if found is None:
        raise lookup.not_found()
    return found[0]


def list_api(dbs: Databases, scope: Scope) -> list[GroupRecord]:
    """List the API database's groups within ``scope``."""
    with reader(dbs.api, dbs.api_label) as conn:
        return API.list_groups(conn, scope=scope)


def list_cells(dbs: Databases, scope: Scope) -> list[GroupRecord]:
    """List every cell's live groups within ``scope``, one copy per uuid.

    A uuid live in two cells is a divergence: it is listed once and announced. The copy
    listed is the first cell's in the order lookups ask them (:func:`find_in_cells`,
    cell0 last), so a list shows the copy a lookup finds and a write changes.

    Raises:
        DatabaseUnreachable: a cell could not be read (a partial list is never returned).
    """
    records: list[GroupRecord] = []
    for cell in cell0_last(dbs.cells):
        with reader(cell.engine, cell.label) as conn:
            records.extend(CELL.list_groups(conn, scope=scope))
    return merge([], records, dbs)


def merge(first: list[GroupRecord], second: list[GroupRecord], dbs: Databases) -> list[GroupRecord]:
    """Concatenate two lists keeping one copy per uuid: the first list's copy wins."""
    seen: set[str] = set()
    merged: list[GroupRecord] = []
    for origin, records in (("first", first), ("second", second)):
        for record in records:
            if record.uuid in seen:
                if origin == "second" and not first:
                    signals.send(
                        signals.divergence,
                        dbs,
                        group_uuid=record.uuid,
                        kind="live-in-two-cells",
                        detail="",
                    )
                continue
            seen.add(record.uuid)
            merged.append(record)
    return merged


# --------------------------------------------------------------------------- writes


def check_scope(record: GroupRecord | None, scope: Scope | None) -> GroupRecord | None:
    """Hide a copy the caller may not see, as Nova does (a non-admin gets NotFound)."""
    if record is None or scope is None or scope.project_id is None:
        return record
    return record if record.project_id == scope.project_id else None


def target_cell(dbs: Databases, state: PhaseState, group_uuid: str, create: bool) -> Cell:
    """Find the cell holding the group, or the default cell for a new one.

    Raises:
        GroupExists: ``create`` and a live cell copy already exists.
        DatabaseUnreachable: the group is in no reachable cell and some cell is down.
    """
    where = locate(dbs, group_uuid)
    if where.cell is not None:
        if create:
            raise GroupExists(group_uuid, f"{where.cell.label}")
        return where.cell
    if where.unreachable:
        raise DatabaseUnreachable(where.unreachable[0].label, "cannot locate the group")
    return default_cell(dbs, state)


def shadow_failed(
    dbs: Databases,
    state: PhaseState,
    group_uuid: str,
    database: str,
    err: BaseException,
    journal: str,
) -> None:
    """Announce a second write that failed and was journaled (after the commit)."""
    error = one_line(err)
    log.warning(
        "shadow_write_failed",
        group_uuid=group_uuid,
        phase=state.phase.value,
        database=database,
        error=error,
        journal=journal,
    )
    signals.send(
        signals.shadow_write_failed,
        dbs,
        group_uuid=group_uuid,
        phase=state.phase.value,
        database=database,
        error=error,
        journal=journal,
    )


def journal_conflict(dbs: Databases, group_uuid: str) -> JournalConflict:
    """Announce a group journaled on both sides and build the error that refuses it."""
    announce_conflict(dbs, group_uuid)
    return JournalConflict(group_uuid)
