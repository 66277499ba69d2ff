"""Serve ``cell-only``: Nova before the move. Cells are the only database touched.

Write order: the cell transaction, fenced by the cell's own phase row
(:func:`~shadowdb.phases.base.cell_transaction`). A process whose cached phase is still
``cell-only`` after the deployment moved on is stopped there: the cell's row holds the
new epoch, and the write is re-planned under the phase the cell names.
"""

from __future__ import annotations

from shadowdb.databases import Databases
from shadowdb.phases.base import (
    Lookup,
    cell_transaction,
    check_scope,
    find_cell_copy,
    list_cells,
    target_cell,
)
from shadowdb.queries import CELL, GroupRecord, Scope
from shadowdb.state import Phase, PhaseState
from shadowdb.transactions import commit
from shadowdb.writes import Create, Write, Written, apply


class CellOnly:
    """Read and write the cell copies only."""

    phase = Phase.CELL_ONLY

    def find(self, dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
        """Look the group up in the cells."""
        return find_cell_copy(dbs, lookup, scope)

    def list(self, dbs: Databases, scope: Scope) -> list[GroupRecord]:
        """List the cells' groups."""
        return list_cells(dbs, scope)

    def write(
        self, dbs: Databases, state: PhaseState, write: Write, *, scope: Scope | None
    ) -> Written:
        """Write the cell copy (new groups go to the default cell)."""
        cell = target_cell(dbs, state, write.group_uuid, isinstance(write, Create))
        with cell_transaction(dbs, cell, state, write.group_uuid) as (conn, current):
            written = apply(CELL, conn, write, check_scope(current, scope))
            commit(conn, cell.label)
        return written
