"""Serve ``dual-write-api-reads``: the API copy is the authority, the cell copy follows.

Writes go to the API database (with a journal entry in the same transaction), then to the
cell under the same per-group lock; the entry is removed once the cell copy commits, and
stays for :func:`shadowdb.sync.drain_journals` if it does not.

Reads go to the API database and fall back to the cells on a miss: the fallback lives in
:meth:`DualWriteApiReads.find`, here and nowhere else, and always fires the
``fallback-read`` signal. Lists merge both, one copy per uuid, the API copy winning.
"""

from __future__ import annotations

from typing import Any

import structlog

from shadowdb import signals
from shadowdb.databases import Databases, reader
from shadowdb.phase import Phase, PhaseState
from shadowdb.phases.base import (
    Lookup,
    Mutation,
    Written,
    dual_write,
    find_in_api,
    find_in_api_with_phase,
    find_in_cells,
    list_api,
    list_cells,
    merge,
)
from shadowdb.queries import API, GroupRecord, Scope

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
            if shadowed:
                # The group has an API copy, the authority: it did not match (renamed,
                # member removed, other project) or has just arrived. Serve it if it
                # matches now; never the cell copy, which is stale.
                found = None
                record = find_in_api(dbs, lookup, scope)
        cell = found[1].name if found else None
        signals.fallback_read.send(dbs, what=lookup.kind, key=lookup.key, cell=cell)
        log.info("fallback_read", what=lookup.kind, key=lookup.key, cell=cell)
        if record is not None:
            return record
        if found is None:
            raise lookup.not_found()
        return found[0]

    def list(self, dbs: Databases, scope: Scope) -> list[GroupRecord]:
        """List API and cell groups, one copy per uuid, the API copy winning."""
        return merge(list_api(dbs, scope), list_cells(dbs, scope), dbs)

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
        """Write the API copy (with its journal entry), then level the cell copy."""
        return dual_write(
            dbs, state, group_uuid, mutation, scope=scope, create=create, authority="api"
        )
