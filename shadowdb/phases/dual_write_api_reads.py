"""Serve ``dual-write-api-reads``: the API copy is the authority, the cell copy follows.

Write order, for group G:

1. The cell transaction (:func:`~shadowdb.phases.base.cell_transaction`): the cell's
   phase row (shared), G's identity lock, G's cell row. Nothing is written yet.
2. The API transaction: the API phase row (shared), G's API row. Then, in order:
   a group journaled on *both* sides is refused (``JournalConflict``: each side holds a
   change the other lacks, never resolved silently); a cell journal entry (a write of
   ``dual-write-cell-reads`` that never reached the API copy) is brought over first; a
   group the API database lacks is adopted from its cell copy *unless it is tombstoned*
   (deleted in the API database: the cell copy is a leftover, retired here, and the
   caller gets ``GroupNotFound``). The write is applied to the API copy, with an API
   journal entry (an outbox) in the same transaction, and the API commits: the write
   is acknowledged from here on.
3. The cell copy is made equal to the API copy and the cell commits; then exactly this
   write's journal entry is deleted (never a range: another writer's entry stays).

If the cell is out of reach in step 1, the write goes to the API database alone, with
its journal entry, for the replay to finish under the locks later.

Reads go to the API database and fall back to the cells on a miss: the fallback lives in
:meth:`DualWriteApiReads.find`, here and nowhere else, and always fires the
``fallback-read`` signal. A tombstoned uuid is never served from a cell. Lists merge
both, one copy per uuid, the API copy winning, tombstoned cell copies left out.
"""

from __future__ import annotations

import contextlib

import structlog
from sqlalchemy.engine import Connection

from shadowdb import signals
from shadowdb.databases import Cell, Databases, reader
from shadowdb.errors import DatabaseUnreachable, GroupNotFound
from shadowdb.failures import DB_FAILURES
from shadowdb.fence import check_cells
from shadowdb.journals import note_entry
from shadowdb.locks import lock_api, lock_cell
from shadowdb.phases.base import (
    Lookup,
    api_transaction,
    check_scope,
    find_in_api,
    find_in_api_with_phase,
    find_in_cells,
    journal_conflict,
    list_api,
    list_cells,
    merge,
    shadow_failed,
    target_cell,
)
from shadowdb.queries import API, CELL, GroupRecord, Scope
from shadowdb.state import Phase, PhaseState, read_state
from shadowdb.transactions import commit, transaction
from shadowdb.writes import Create, Write, Written, apply, copy_group

log = structlog.get_logger(__name__)


class DualWriteApiReads:
    """Write API then cell; read the API database, falling back to the cells."""

    phase = Phase.DUAL_WRITE_API_READS

    def find(self, dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
        """Look the group up in the API database, then (announced) in the cells."""
        record, current = find_in_api_with_phase(dbs, lookup, scope)
        if record is not None:
            return record
        # Once the phase has moved on to api-only, the cell copies are stale: a reader
        # still holding the old phase in its cache must not serve them. (The phase row
        # came with the lookup, in the same statement, for uuid and member lookups.)
        if (current or dbs.phases.fresh()).phase is Phase.API_ONLY:
            raise lookup.not_found()
        found = find_in_cells(dbs, lookup, scope)
        if found is not None:
            with reader(dbs.api, dbs.api_label) as conn:
                shadowed = bool(API.present(conn, [found[0].uuid]))
                buried = not shadowed and bool(API.tombstoned(conn, [found[0].uuid]))
            if buried:
                # Deleted in the API database (the authority): the cell copy is a
                # leftover awaiting its replay, not a group that has yet to migrate.
                found = None
            elif shadowed:
                # The group has an API copy, the authority: it did not match (renamed,
                # member removed, other project) or has just arrived. Serve it if it
                # matches now; never the cell copy, which is stale.
                found = None
                record = find_in_api(dbs, lookup, scope)
        cell = found[1].name if found else None
        signals.send(signals.fallback_read, dbs, what=lookup.kind, key=lookup.key, cell=cell)
        log.info("fallback_read", what=lookup.kind, key=lookup.key, cell=cell)
        if record is not None:
            return record
        if found is None:
            raise lookup.not_found()
        return found[0]

    def list(self, dbs: Databases, scope: Scope) -> list[GroupRecord]:
        """List API and cell groups, one copy per uuid, the API copy winning."""
        in_api = list_api(dbs, scope)
        in_cells = list_cells(dbs, scope)
        have = {r.uuid for r in in_api}
        only_cell = [r.uuid for r in in_cells if r.uuid not in have]
        if only_cell:
            with reader(dbs.api, dbs.api_label) as conn:
                buried = API.tombstoned(conn, only_cell)
                # The phase row, read after the tombstones: while it still says this
                # phase, nothing has purged them (cleanup runs in api-only only). Once
                # it says api-only, the cell copies are stale for a reader whose cache
                # lags, and their tombstones may be gone: none is served.
                moved = read_state(conn).phase is Phase.API_ONLY
            in_cells = [] if moved else [r for r in in_cells if r.uuid not in buried]
        return merge(in_api, in_cells, dbs)

    def write(
        self, dbs: Databases, state: PhaseState, write: Write, *, scope: Scope | None
    ) -> Written:
        """Write the API copy (with its journal entry), then level the cell copy."""
        group_uuid = write.group_uuid
        try:
            cell = target_cell(dbs, state, group_uuid, isinstance(write, Create))
        except DatabaseUnreachable:
            return _without_cell(dbs, state, write, scope=scope)
        with contextlib.ExitStack() as stack:
            try:
                cconn, crec, pending_cell = stack.enter_context(
                    lock_cell(dbs, cell, state, group_uuid)
                )
            except DB_FAILURES as err:
                # The cell is out of reach: no lock to take; the API journal covers it.
                with contextlib.suppress(*DB_FAILURES):
                    stack.close()
                return _without_cell(dbs, state, write, scope=scope, cause=err)
            return _api_first(dbs, state, cell, cconn, crec, pending_cell, write, scope)


def _api_first(
    dbs: Databases,
    state: PhaseState,
    cell: Cell,
    cconn: Connection,
    crec: GroupRecord | None,
    pending_cell: list[int],
    write: Write,
    scope: Scope | None,
) -> Written:
    group_uuid = write.group_uuid
    with lock_api(dbs, state, group_uuid) as (aconn, arec, pending_api):
        # The group was located among the cells this process knows: refuse a stale list
        # (a cell registered since may hold it), before anything is written.
        check_cells(aconn, dbs)
        if pending_cell and pending_api:
            raise journal_conflict(dbs, group_uuid)
        if pending_cell:
            # A write journaled under dual-write-cell-reads never reached the API copy:
            # bring it over before the API copy becomes the base of this write.
            copy_group(aconn, API, crec, arec)
            arec = API.get(aconn, group_uuid, lock=True)
        elif arec is None and crec is not None:
            if API.tombstoned(aconn, [group_uuid]):
                # Deleted in the API database: the cell copy is a leftover. Retire it
                # (the authority says so) and answer as for any missing group.
                aconn.rollback()
                CELL.delete(cconn, crec)
                CELL.journal_clear(cconn, group_uuid, pending_cell)
                commit(cconn, cell.label)
                raise GroupNotFound(group_uuid)
            # Not migrated yet: the cell copy is the group; adopt it under the lock.
            copy_group(aconn, API, crec, None)
            arec = API.get(aconn, group_uuid, lock=True)
        written = apply(API, aconn, write, check_scope(arec, scope))
        entry = API.journal_add(aconn, group_uuid, state.epoch)
        commit(aconn, dbs.api_label)
    # Acknowledged from here on: the API copy is the authority. The cell copy is as it
    # was read under its lock (only the API copy was written since).
    try:
        copy_group(cconn, CELL, written.record, crec)
        CELL.journal_clear(cconn, group_uuid, pending_cell)
        commit(cconn, cell.label)
    except DB_FAILURES as err:
        note_entry(dbs.api, dbs.api_label, API, group_uuid, entry, err)
        shadow_failed(dbs, state, group_uuid, cell.label, err, "api")
        return written
    try:
        with transaction(dbs.api, dbs.api_label) as aconn:
            API.journal_clear(aconn, group_uuid, [entry])
            commit(aconn, dbs.api_label)
    except DB_FAILURES:
        # Harmless: the entry replays to the same state.
        log.info("journal_clear_deferred", group_uuid=group_uuid)
    return written


def _without_cell(
    dbs: Databases,
    state: PhaseState,
    write: Write,
    *,
    scope: Scope | None,
    cause: BaseException | None = None,
) -> Written:
    """The group's cell is out of reach: write the API copy with its journal entry."""
    group_uuid = write.group_uuid
    with api_transaction(dbs, state, group_uuid) as (aconn, arec):
        if arec is None and not isinstance(write, Create):
            # Without the cell we cannot tell a cell-only group from a missing one.
            raise DatabaseUnreachable(
                "the group's cell", f"group {group_uuid} is not in the API database"
            )
        written = apply(API, aconn, write, check_scope(arec, scope))
        API.journal_add(aconn, group_uuid, state.epoch, "cell unreachable")
        commit(aconn, dbs.api_label)
    err = cause or DatabaseUnreachable("cell", "unreachable")
    shadow_failed(dbs, state, group_uuid, "cell", err, "api")
    return written
