"""Serve ``api-only``: the move is done. No cell database is queried for groups.

Write order: the API transaction, fenced by the API database's phase row
(:func:`~shadowdb.phases.base.api_transaction`). A deletion leaves a tombstone in the
same transaction (:meth:`shadowdb.queries.Side.delete`), so that after a rollback
to ``dual-write-api-reads`` the group's cell copy is known to be deleted, not unmigrated.

Until ``cleanup`` retires the cell copies (the phase row's ``cells_retired``, read under
the fence's lock), every write also leaves one API journal entry for its group (one per
group, not per write): the cells' lag is then always explained by the journal, so a
rollback to ``dual-write-api-reads`` passes its guards under live writes and its
catch-up is a replay of those entries, not a race against the writers.
"""

from __future__ import annotations

from shadowdb.databases import Databases
from shadowdb.fence import pin_api
from shadowdb.phases.base import check_scope, find_api_copy, list_api
from shadowdb.queries import API, Scope
from shadowdb.state import Phase, PhaseState
from shadowdb.transactions import commit, transaction
from shadowdb.writes import Write, Written, apply


class ApiOnly:
    """Read and write the API copies only."""

    phase = Phase.API_ONLY

    # Reads are base's API reads and nothing else: no cell is asked.
    find = staticmethod(find_api_copy)
    list = staticmethod(list_api)

    def write(
        self, dbs: Databases, state: PhaseState, write: Write, *, scope: Scope | None
    ) -> Written:
        """Write the API copy."""
        group_uuid = write.group_uuid
        with transaction(dbs.api, dbs.api_label) as conn:
            pinned = pin_api(conn, state)
            current, journaled = API.get_locked(conn, group_uuid)
            written = apply(API, conn, write, check_scope(current, scope))
            if not pinned.cells_retired and not journaled:
                API.journal_add(conn, group_uuid, state.epoch, "api-only: cell copy not written")
            commit(conn, dbs.api_label)
        return written
