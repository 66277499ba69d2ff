"""Serve ``api-only``: the move is done. No cell database is queried for groups."""

from __future__ import annotations

from typing import Any

from shadowdb.databases import Databases
from shadowdb.phase import Phase, PhaseState
from shadowdb.phases.base import Lookup, Mutation, Written, api_write, find_in_api, list_api
from shadowdb.queries import GroupRecord, Scope


class ApiOnly:
    """Read and write the API copies only."""

    phase = Phase.API_ONLY

    def find(self, dbs: Databases, lookup: Lookup, scope: Scope) -> GroupRecord:
        """Look the group up in the API database."""
        record = find_in_api(dbs, lookup, scope)
        if record is None:
            raise lookup.not_found()
        return record

    def list(self, dbs: Databases, scope: Scope) -> list[GroupRecord]:
        """List the API database's groups."""
        return list_api(dbs, scope)

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
        """Write the API copy."""
        return api_write(dbs, state, group_uuid, mutation, scope=scope, create=create)
