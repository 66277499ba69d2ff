"""Serve ``cell-only``: Nova before the move. Cells are the only database touched."""

from __future__ import annotations

from typing import Any

from shadowdb.databases import Databases
from shadowdb.phase import Phase, PhaseState
from shadowdb.phases.base import Lookup, Mutation, Written, cell_write, find_in_cells, list_cells
from shadowdb.queries import GroupRecord, Scope


class CellOnly:
    """Read and write the cell copies only."""

    phase = Phase.CELL_ONLY

    def find(self, dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
        """Look the group up in the cells."""
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
        """Write the cell copy (new groups go to the default cell)."""
        return cell_write(dbs, state, group_uuid, mutation, scope=scope, create=create)
