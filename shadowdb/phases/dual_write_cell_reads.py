"""Serve ``dual-write-cell-reads``: the cell is the authority, the API copy follows.

Write order, for group G:

1. The cell transaction (:func:`~shadowdb.phases.base.cell_transaction`): the cell's
   phase row (shared), G's identity lock, G's cell row. The mutation is applied there.
2. Inside it, the API transaction: the API phase row (shared), G's API row; the API copy
   is made equal to the cell copy and committed. A caller-supplied uuid that the API
   database already holds is refused (``GroupExists``): the API copy is never overwritten
   by a create.
3. The cell commits. If step 2 failed (the API database is out of reach), the cell write
   commits *with* a cell journal entry, in the same transaction, and the caller's write
   succeeds: the entry is replayed later (:func:`shadowdb.sync.drain_journals`).

A crash between the API commit and the cell commit leaves the API copy ahead of a cell
copy that never changed and an unacknowledged write: the next write or the replay of the
backfill's comparison brings the API copy back to the cell's (the authority's) state.

Reads and lists come from the cells.
"""

from __future__ import annotations

from typing import Any

from shadowdb.databases import Databases
from shadowdb.errors import GroupExists
from shadowdb.fence import EpochChanged
from shadowdb.phase import Phase, PhaseState
from shadowdb.phases.base import (
    Lookup,
    Mutation,
    Written,
    api_transaction,
    cell_transaction,
    check_scope,
    find_in_cells,
    list_cells,
    shadow_failed,
    target_cell,
)
from shadowdb.queries import API, CELL, GroupRecord, Scope
from shadowdb.sync import DB_FAILURES, commit, copy_group, one_line


class DualWriteCellReads:
    """Write cell then API; read the cells."""

    phase = Phase.DUAL_WRITE_CELL_READS

    def find(self, dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
        """Look the group up in the cells (the authority)."""
        found = find_in_cells(dbs, lookup, scope)
        if found is None:
            raise lookup.not_found()
        return found[0]

    def list(self, dbs: Databases, scope: Scope) -> list[GroupRecord]:
        """List the cells' groups."""
        return list_cells(dbs, scope)

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
        """Write the cell copy, then level the API copy (journaled in the cell on failure)."""
        cell = target_cell(dbs, state, group_uuid, create)
        failed: BaseException | None = None
        with cell_transaction(dbs, cell, state, group_uuid) as (cconn, crec):
            value = mutation(CELL, cconn, check_scope(crec, scope))
            after = CELL.get(cconn, group_uuid)
            try:
                with api_transaction(dbs, state, group_uuid) as (aconn, arec):
                    if create and arec is not None:
                        raise GroupExists(group_uuid, dbs.api_label)
                    copy_group(aconn, API, after, arec)
                    commit(aconn, dbs.api_label)
            except EpochChanged:
                raise
            except DB_FAILURES as err:
                # The API copy lags: record it with the cell write, atomically.
                CELL.journal_add(cconn, group_uuid, state.epoch, one_line(err))
                failed = err
            commit(cconn, cell.label)
        if failed is not None:
            shadow_failed(dbs, state, group_uuid, dbs.api_label, failed, "cell")
        return Written(value, after)
