"""Serve ``dual-write-cell-reads``: the cell is the authority, the API copy follows.

Write order, for group G:

1. The cell transaction (:func:`~shadowdb.phases.base.cell_transaction`): the cell's
   phase row (shared), G's identity lock, G's cell row. A caller-supplied uuid that the
   API database already holds is refused (``GroupExists``): the API copy is never
   overwritten by a create. The write is applied there, with a cell journal entry
   (an outbox) in the same transaction, and the cell commits: the write is acknowledged
   from here on. A cell commit that fails leaves nothing anywhere.
2. The entry is replayed (:func:`shadowdb.journals.replay`): under G's locks again, in the
   same order, the cell copy's *current* state is copied to the API copy, the API
   commits, then exactly this entry is deleted. If that fails (the API database is out
   of reach, a phase change is in flight), the entry stays for the backfill's drain, and
   the write is still acknowledged.

So every way the API copy can differ from the authority's leaves a cell journal entry,
written in the transaction of the authority's own write: the guards of the move into
``dual-write-api-reads`` count them under the fence.

Reads and lists come from the cells.
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog

from shadowdb.databases import Cell, Databases, reader
from shadowdb.errors import GroupExists, ShadowDBError
from shadowdb.failures import DB_FAILURES
from shadowdb.fence import CellBehind, EpochChanged, settle_cell
from shadowdb.journals import OUTBOX, note_entry, replay
from shadowdb.phases.base import (
    cell_transaction,
    check_scope,
    shadow_failed,
    target_cell,
)
from shadowdb.phases.cell_only import CellOnly
from shadowdb.queries import API, CELL, Scope
from shadowdb.state import Phase, PhaseState
from shadowdb.transactions import commit
from shadowdb.writes import Create, Write, Written, apply

log = structlog.get_logger(__name__)

#: Times the API half settles a cell a phase change left behind, then tries again.
_SETTLE_RETRIES = 3


class DualWriteCellReads:
    """Write cell then API; read the cells."""

    phase = Phase.DUAL_WRITE_CELL_READS

    # Reads are cell-only's: the cells are still the authority.
    find = CellOnly.find
    list = CellOnly.list

    def write(
        self, dbs: Databases, state: PhaseState, write: Write, *, scope: Scope | None
    ) -> Written:
        """Write the cell copy with its outbox entry, then level the API copy."""
        group_uuid = write.group_uuid
        create = isinstance(write, Create)
        cell = target_cell(dbs, state, group_uuid, create)
        with cell_transaction(dbs, cell, state, group_uuid) as (cconn, crec):
            if create and _api_holds(dbs, group_uuid):
                raise GroupExists(group_uuid, dbs.api_label)
            written = apply(CELL, cconn, write, check_scope(crec, scope))
            entry = CELL.journal_add(cconn, group_uuid, state.epoch, OUTBOX)
            commit(cconn, cell.label)
        # Acknowledged from here on: the cell copy is the authority.
        _second_half(dbs, state, cell, group_uuid, entry)
        return written


def _second_half(
    dbs: Databases, state: PhaseState, cell: Cell, group_uuid: str, entry: int
) -> None:
    """Replay the write's own entry; a phase change in flight is settled and retried."""
    err: BaseException | None = None
    for _ in range(_SETTLE_RETRIES):
        try:
            replay(dbs, group_uuid, cell, [entry])
            return
        except CellBehind as behind:
            err = behind
            try:
                settle_cell(dbs, behind.cell)
            except (ShadowDBError, sa.exc.DBAPIError) as failed:
                err = failed
                break
        except (ShadowDBError, sa.exc.DBAPIError, EpochChanged) as failed:
            err = failed
            break
    assert err is not None
    note_entry(cell.engine, cell.label, CELL, group_uuid, entry, err)
    shadow_failed(dbs, state, group_uuid, dbs.api_label, err, "cell")


def _api_holds(dbs: Databases, group_uuid: str) -> bool:
    """Whether the API database holds ``group_uuid`` (unknown, so false, if unreachable)."""
    try:
        with reader(dbs.api, dbs.api_label) as conn:
            return bool(API.present(conn, [group_uuid]))
    except DB_FAILURES:
        return False
