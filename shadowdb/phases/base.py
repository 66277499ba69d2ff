"""Share what the four phase strategies have in common: lookups, reads, the write protocol.

The strategy of each phase (one module each, beside this one) only chooses *where*
reads go and *which* side is authoritative; the mechanics live here, once.

The write protocol
==================

A write to group G is a *mutation* (create, save, add or remove members, destroy)
applied to the authoritative copy, followed, in a dual-write phase, by bringing the
other copy level with the authoritative one (:func:`shadowdb.sync.copy_group`).

1. **One lock in both dual-write phases.** The writer first locks G's live row in the cell
   database that holds it, then G's row in the API database (:mod:`shadowdb.sync`). Both
   dual-write phases take the same locks in the same order, so writers of the old and the
   new phase are serialised per group during a flip between them and both databases see
   the same order of operations. The authority only decides the order of the commits and
   where a failed second write is journaled.
2. **Journal in the authority's transaction.** ``dual-write-cell-reads``: the cell write and,
   if the API write fails, the journal entry commit together in the cell transaction.
   ``dual-write-api-reads``: the API transaction always carries a journal entry (an
   outbox); it is deleted once the cell copy has committed. A crash between the two
   commits leaves the entry, and :func:`shadowdb.sync.drain_journals` finishes the job.
   Replaying copies the journal side's *current* state, so it is idempotent.
3. **Epoch barrier.** Every transaction on the API database that writes a group first
   reads the phase row with a shared lock. ``phase set`` updates that row with an
   exclusive lock, so it waits for in-flight writers, and a writer that planned under
   an older epoch sees the new one, rolls back everything (nothing has committed yet at
   that point in any phase) and retries under the new phase. Writers of ``cell-only``
   never touch the API database; the switcher's drain wait covers them (a backfill must
   not start before it has passed).
4. **Second write fails, caller succeeds.** A failure of the non-authoritative database
   is journaled and announced (``shadow-write-failed``); the caller's write succeeds.
   In ``dual-write-api-reads`` an unreachable cell is skipped for the lock as well: the
   write goes to the API database with its journal entry, and replay happens later under
   the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

import structlog
from sqlalchemy.engine import Connection

from shadowdb import lookups, signals
from shadowdb.databases import Cell, Databases, reader
from shadowdb.errors import DatabaseUnreachable, GroupExists, GroupNotFound
from shadowdb.phase import Phase, PhaseState, read_state
from shadowdb.queries import API, CELL, GroupRecord, GroupTables, Scope
from shadowdb.sync import (
    DB_FAILURES,
    commit,
    copy_group,
    default_cell,
    locate,
    one_line,
    transaction,
)

__all__ = [
    "EpochChanged",
    "Lookup",
    "Mutation",
    "PhaseStrategy",
    "Written",
    "api_write",
    "cell_write",
    "dual_write",
    "find_in_api",
    "find_in_api_with_phase",
    "find_in_cells",
    "list_api",
    "list_cells",
    "merge",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: A change to one copy of a group: (side, connection, locked current copy or None).
Mutation = Callable[[GroupTables, Connection, GroupRecord | None], T]


class EpochChanged(Exception):
    """The phase changed under a writer before anything committed: retry under the new one."""

    def __init__(self, planned: PhaseState, found: PhaseState) -> None:
        self.planned = planned
        self.found = found
        super().__init__(f"phase moved from {planned.phase.value} to {found.phase.value}")


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


@dataclasses.dataclass(frozen=True)
class Written:
    """The outcome of a write: the mutation's value and the authoritative copy after it."""

    value: Any
    record: GroupRecord | None


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
        self,
        dbs: Databases,
        state: PhaseState,
        group_uuid: str,
        mutation: Mutation[Any],
        *,
        scope: Scope | None,
        create: bool = False,
    ) -> Written:
        """Apply ``mutation`` to group ``group_uuid`` in the phase's databases."""
        ...


# --------------------------------------------------------------------------- reads


def _find_on(
    conn: Connection, side: GroupTables, lookup: Lookup, scope: Scope
) -> GroupRecord | None:
    if lookup.kind == "name":
        return side.by_name(conn, lookup.key, scope=scope)
    # uuid and member lookups are the scheduler's hot path: two statements at most,
    # one if there is no such group (shadowdb.lookups).
    return lookups.find(conn, side.name, lookup.kind, lookup.key, scope)


def find_in_api(dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord | None:
    """Look the group up in the API database (through its hot-path read engine)."""
    with reader(dbs.api_fast, dbs.api_label) as conn:
        return _find_on(conn, API, lookup, scope)


def find_in_api_with_phase(
    dbs: Databases, lookup: Lookup, scope: Scope
) -> tuple[GroupRecord | None, PhaseState | None]:
    """Look the group up in the API database with the phase row read alongside.

    uuid and member lookups read the phase in the same statement; a name lookup does
    not (None): the caller reads it itself if it needs it.
    """
    with reader(dbs.api_fast, dbs.api_label) as conn:
        if lookup.kind == "name":
            return _find_on(conn, API, lookup, scope), None
        return lookups.find_with_phase(conn, lookup.kind, lookup.key, scope)


def find_in_cells(dbs: Databases, lookup: Lookup, scope: Scope) -> tuple[GroupRecord, Cell] | None:
    """Look the group up in every cell; never skip one silently.

    A uuid or member lookup stops at the first cell that answers. A name lookup asks
    every cell and takes the oldest match (``created_at``, then cell order), so the
    answer does not depend on which cell happens to be asked first.

    Raises:
        DatabaseUnreachable: a cell that might hold the answer could not be asked.
    """
    unreachable: list[str] = []
    candidates: list[tuple[GroupRecord, Cell]] = []
    for cell in dbs.cells:
        try:
            with reader(dbs.read_engine(cell.engine), cell.label) as conn:
                found = _find_on(conn, CELL, lookup, scope)
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


def list_api(dbs: Databases, scope: Scope) -> list[GroupRecord]:
    """List the API database's groups within ``scope``."""
    with reader(dbs.api, dbs.api_label) as conn:
        return API.list_groups(conn, scope=scope)


def list_cells(dbs: Databases, scope: Scope) -> list[GroupRecord]:
    """List every cell's live groups within ``scope``, one copy per uuid.

    A uuid live in two cells is a divergence: it is listed once (first cell wins) and
    announced.

    Raises:
        DatabaseUnreachable: a cell could not be read (a partial list is never returned).
    """
    records: list[GroupRecord] = []
    for cell in dbs.cells:
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
                    signals.divergence.send(
                        dbs, group_uuid=record.uuid, kind="live-in-two-cells", detail=""
                    )
                continue
            seen.add(record.uuid)
            merged.append(record)
    return merged


# --------------------------------------------------------------------------- writes


def _check_scope(record: GroupRecord | None, scope: Scope | None) -> GroupRecord | None:
    """Hide a copy the caller may not see, as Nova does (a non-admin gets NotFound)."""
    if record is None or scope is None or scope.project_id is None:
        return record
    return record if record.project_id == scope.project_id else None


def _barrier(conn: Connection, planned: PhaseState) -> None:
    """Pin the phase for this API transaction; refuse a plan made under another phase."""
    found = read_state(conn, share=True)
    if found.epoch != planned.epoch and found.phase != planned.phase:
        raise EpochChanged(planned, found)


def _target_cell(dbs: Databases, state: PhaseState, group_uuid: str, create: bool) -> Cell:
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


def cell_write(
    dbs: Databases,
    state: PhaseState,
    group_uuid: str,
    mutation: Mutation[Any],
    *,
    scope: Scope | None,
    create: bool,
) -> Written:
    """Apply ``mutation`` to the cell copy only (``cell-only``)."""
    cell = _target_cell(dbs, state, group_uuid, create)
    with transaction(cell.engine, cell.label) as conn:
        current = _check_scope(CELL.get(conn, group_uuid, lock=True), scope)
        value = mutation(CELL, conn, current)
        after = CELL.get(conn, group_uuid)
        commit(conn, cell.label)
    return Written(value, after)


def api_write(
    dbs: Databases,
    state: PhaseState,
    group_uuid: str,
    mutation: Mutation[Any],
    *,
    scope: Scope | None,
    create: bool,
) -> Written:
    """Apply ``mutation`` to the API copy only (``api-only``)."""
    with transaction(dbs.api, dbs.api_label) as conn:
        _barrier(conn, state)
        current = _check_scope(API.get(conn, group_uuid, lock=True), scope)
        value = mutation(API, conn, current)
        after = API.get(conn, group_uuid)
        commit(conn, dbs.api_label)
    return Written(value, after)


def _shadow_failed(
    dbs: Databases,
    state: PhaseState,
    group_uuid: str,
    database: str,
    err: BaseException,
    journal: str,
) -> None:
    error = one_line(err)
    signals.shadow_write_failed.send(
        dbs,
        group_uuid=group_uuid,
        phase=state.phase.value,
        database=database,
        error=error,
        journal=journal,
    )
    log.warning(
        "shadow_write_failed",
        group_uuid=group_uuid,
        phase=state.phase.value,
        database=database,
        error=error,
        journal=journal,
    )


def dual_write(
    dbs: Databases,
    state: PhaseState,
    group_uuid: str,
    mutation: Mutation[Any],
    *,
    scope: Scope | None,
    create: bool,
    authority: Literal["cell", "api"],
) -> Written:
    """Apply ``mutation`` to the authoritative copy, then level the other (module docstring)."""
    try:
        cell = _target_cell(dbs, state, group_uuid, create)
    except DatabaseUnreachable:
        if authority == "cell":
            raise
        return _api_first_without_cell(dbs, state, group_uuid, mutation, scope=scope, create=create)
    if authority == "cell":
        return _cell_first(dbs, state, cell, group_uuid, mutation, scope=scope)
    with contextlib.ExitStack() as stack:
        try:
            cconn = stack.enter_context(transaction(cell.engine, cell.label))
            crec = CELL.get(cconn, group_uuid, lock=True)
        except DB_FAILURES:
            # The cell is out of reach: no lock to take; the API journal covers it.
            stack.close()
            return _api_first_without_cell(
                dbs, state, group_uuid, mutation, scope=scope, create=create
            )
        return _api_first(dbs, state, cell, cconn, crec, group_uuid, mutation, scope=scope)


def _cell_first(
    dbs: Databases,
    state: PhaseState,
    cell: Cell,
    group_uuid: str,
    mutation: Mutation[Any],
    *,
    scope: Scope | None,
) -> Written:
    with transaction(cell.engine, cell.label) as cconn:
        crec = CELL.get(cconn, group_uuid, lock=True)
        value = mutation(CELL, cconn, _check_scope(crec, scope))
        after = CELL.get(cconn, group_uuid)
        try:
            with transaction(dbs.api, dbs.api_label) as aconn:
                _barrier(aconn, state)
                arec = API.get(aconn, group_uuid, lock=True)
                copy_group(aconn, API, after, arec)
                commit(aconn, dbs.api_label)
        except EpochChanged:
            raise
        except DB_FAILURES as err:
            # The API copy lags: record it with the cell write, atomically.
            CELL.journal_add(cconn, group_uuid, state.epoch, one_line(err))
            _shadow_failed(dbs, state, group_uuid, dbs.api_label, err, "cell")
        commit(cconn, cell.label)
    return Written(value, after)


def _api_first(
    dbs: Databases,
    state: PhaseState,
    cell: Cell,
    cconn: Connection,
    crec: GroupRecord | None,
    group_uuid: str,
    mutation: Mutation[Any],
    *,
    scope: Scope | None,
) -> Written:
    pending_cell = CELL.journal_for(cconn, group_uuid)
    with transaction(dbs.api, dbs.api_label) as aconn:
        _barrier(aconn, state)
        arec = API.get(aconn, group_uuid, lock=True)
        if pending_cell and not API.journal_for(aconn, group_uuid):
            # A write journaled under dual-write-cell-reads never reached the API copy:
            # bring it over before the API copy becomes the base of this write.
            copy_group(aconn, API, crec, arec)
            arec = API.get(aconn, group_uuid, lock=True)
            CELL.journal_clear(cconn, group_uuid, max(pending_cell))
        elif arec is None and crec is not None:
            # Not migrated yet: the cell copy is the group; adopt it under the lock.
            copy_group(aconn, API, crec, None)
            arec = API.get(aconn, group_uuid, lock=True)
        value = mutation(API, aconn, _check_scope(arec, scope))
        after = API.get(aconn, group_uuid)
        entry = API.journal_add(aconn, group_uuid, state.epoch)
        commit(aconn, dbs.api_label)
    # Acknowledged from here on: the API copy is the authority.
    try:
        copy_group(cconn, CELL, after, CELL.get(cconn, group_uuid))
        commit(cconn, cell.label)
    except DB_FAILURES as err:
        _note_pending(dbs, group_uuid, entry, err)
        _shadow_failed(dbs, state, group_uuid, cell.label, err, "api")
        return Written(value, after)
    try:
        with transaction(dbs.api, dbs.api_label) as aconn:
            API.journal_clear(aconn, group_uuid, entry)
            commit(aconn, dbs.api_label)
    except DB_FAILURES:
        # Harmless: the entry replays to the same state.
        log.info("journal_clear_deferred", group_uuid=group_uuid)
    return Written(value, after)


def _note_pending(dbs: Databases, group_uuid: str, entry: int, err: BaseException) -> None:
    try:
        with transaction(dbs.api, dbs.api_label) as aconn:
            API.journal_note(aconn, entry, one_line(err))
            commit(aconn, dbs.api_label)
    except DB_FAILURES:
        log.info("journal_note_failed", group_uuid=group_uuid)


def _api_first_without_cell(
    dbs: Databases,
    state: PhaseState,
    group_uuid: str,
    mutation: Mutation[Any],
    *,
    scope: Scope | None,
    create: bool,
) -> Written:
    """``dual-write-api-reads`` with the group's cell out of reach: journal and go on."""
    with transaction(dbs.api, dbs.api_label) as aconn:
        _barrier(aconn, state)
        arec = API.get(aconn, group_uuid, lock=True)
        if arec is None and not create:
            # Without the cell we cannot tell a cell-only group from a missing one.
            raise DatabaseUnreachable(
                "the group's cell", f"group {group_uuid} is not in the API database"
            )
        value = mutation(API, aconn, _check_scope(arec, scope))
        after = API.get(aconn, group_uuid)
        API.journal_add(aconn, group_uuid, state.epoch, "cell unreachable")
        commit(aconn, dbs.api_label)
    _shadow_failed(
        dbs, state, group_uuid, "cell", DatabaseUnreachable("cell", "unreachable"), "api"
    )
    return Written(value, after)
