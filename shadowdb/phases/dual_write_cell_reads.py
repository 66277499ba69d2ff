"""Serve ``dual-write-cell-reads``: the cell is the authority, the API copy follows.

Writes go to the cell, then to the API database under the same per-group lock; an API
write that fails is journaled in the cell database, in the cell write's transaction, and
the caller's write succeeds. Reads and lists come from the cells.
"""

from __future__ import annotations

from typing import Any

from shadowdb.databases import Databases
from shadowdb.phase import Phase, PhaseState
from shadowdb.phases.base import Lookup, Mutation, Written, dual_write, find_in_cells, list_cells
from shadowdb.queries import GroupRecord, Scope


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
        return dual_write(
            dbs, state, group_uuid, mutation, scope=scope, create=create, authority="cell"
        )
