"""Make cell copies equal to API copies (API -> cells), for leaving ``api-only``.

Groups the API database no longer has are soft-deleted in the cells; groups it has are
created in (or levelled on) the cell holding them, else the default cell. Each group is
copied as a writer copies it: fenced by both phase rows and under the group's locks.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from shadowdb.backfill.backlog import live_pages
from shadowdb.backfill.conflicts import ConflictStore
from shadowdb.backfill.results import BatchStep
from shadowdb.databases import Cell, Databases, reader
from shadowdb.errors import GuardRefused, ShadowDBError
from shadowdb.failures import one_line
from shadowdb.fence import CellBehind, EpochChanged
from shadowdb.location import default_cell, locate
from shadowdb.locks import api_transaction, cell_transaction
from shadowdb.queries import API, CELL, GroupRecord
from shadowdb.state import Phase, PhaseState
from shadowdb.transactions import commit
from shadowdb.writes import copy_group

__all__ = ["REVERSE_PHASES", "ReverseCopier"]

#: The phases the reverse copy runs in.
REVERSE_PHASES = (Phase.API_ONLY, Phase.DUAL_WRITE_API_READS)

#: API groups read per keyset page.
_PAGE = 500


class ReverseCopier:
    """Run the ``reverse_instance_groups`` migration on some cells (all by default)."""

    def __init__(
        self,
        dbs: Databases,
        *,
        cells: Sequence[Cell] | None = None,
        conflicts: ConflictStore | None = None,
    ) -> None:
        self.dbs = dbs
        self.cells: tuple[Cell, ...] = tuple(cells) if cells is not None else dbs.cells
        self.conflicts = conflicts if conflicts is not None else ConflictStore(dbs)
        # Where each scan stopped (``"api"``, or a cell's uuid): the next call goes on.
        self._after: dict[str, int] = {}

    def reverse_instance_groups(self, count: int) -> BatchStep:
        """Level up to ``count`` cell copies on their API copies (module docstring)."""
        found = done = 0
        try:
            # Fenced per batch, and per group under the locks: a phase moved back to
            # where the cells are authoritative stops the copy at once.
            state = self.dbs.phases.fresh()
            if state.phase not in REVERSE_PHASES:
                raise GuardRefused(state.phase.value, [f"the phase moved to {state.phase.value}"])
            for uuid in self.candidates(count):
                found += 1
                if self._level_cell(uuid, state):
                    done += 1
        except (ShadowDBError, sa.exc.DBAPIError, EpochChanged, CellBehind) as err:
            return BatchStep(found, done, one_line(err))
        return BatchStep(found, done)

    def candidates(self, count: int) -> list[str]:
        """Return up to ``count`` uuids whose cell copy differs from the API copy.

        First the API groups whose cell copy is missing or differs, then the live cell
        groups the API database does not have (deleted there, or never held).
        """
        differing: list[str] = []
        g = API.groups
        after = self._after.get("api", 0)
        while len(differing) < count:
            with reader(self.dbs.api, self.dbs.api_label) as conn:
                rows = conn.execute(
                    sa.select(g.c.id, g.c.uuid).where(g.c.id > after).order_by(g.c.id).limit(_PAGE)
                ).all()
                api_records = {r.uuid: r for r in API.get_many(conn, [row.uuid for row in rows])}
            if not rows:
                break
            cell_records: dict[str, GroupRecord] = {}
            for cell in self.dbs.cells:
                with reader(cell.engine, cell.label) as conn:
                    for record in CELL.get_many(conn, list(api_records)):
                        cell_records.setdefault(record.uuid, record)
            for row in rows:
                after = row.id
                cell_copy = cell_records.get(row.uuid)
                if cell_copy is None or not cell_copy.same_data(api_records[row.uuid]):
                    differing.append(row.uuid)
                    if len(differing) >= count:
                        break
        self._after["api"] = after
        if len(differing) < count:
            differing.extend(self._cell_orphans(count - len(differing)))
        return differing

    def _cell_orphans(self, count: int) -> list[str]:
        """Return live cell groups the API database does not have (deleted there)."""
        orphans: list[str] = []
        for cell in self.cells:
            after = self._after.get(cell.uuid, 0)
            if len(orphans) < count:
                for page in live_pages(self.dbs, cell, after=after, include_tombstoned=True):
                    for group_id, uuid in page.rows:
                        after = group_id
                        if uuid in page.lacking:
                            orphans.append(uuid)
                            if len(orphans) >= count:
                                break
                    if len(orphans) >= count:
                        break
            self._after[cell.uuid] = after
        return orphans

    def _level_cell(self, group_uuid: str, state: PhaseState) -> bool:
        """Copy the API copy of one group onto its cell copy, fenced and locked as a writer.

        A cell copy whose group the API database lacks is retired only if the API
        database tombstoned it (deleted there); otherwise it is a group the API database
        never had, reported as a conflict and left alone.
        """
        for attempt in (1, 2):
            try:
                return self._level_cell_once(group_uuid, state)
            except sa.exc.IntegrityError:
                # A writer inserted the same cell row first: look again under the lock.
                if attempt == 2:
                    raise
        return False

    def _level_cell_once(self, group_uuid: str, state: PhaseState) -> bool:
        where = locate(self.dbs, group_uuid)
        cell = where.cell or default_cell(self.dbs, state)
        with (
            cell_transaction(self.dbs, cell, state, group_uuid) as (cconn, crec),
            api_transaction(self.dbs, state, group_uuid) as (aconn, arec),
        ):
            if arec is None and crec is not None and not API.tombstoned(aconn, [group_uuid]):
                self.conflicts.record(
                    aconn,
                    group_uuid,
                    cell,
                    "missing-in-api",
                    "live in the cell, neither held nor deleted by the API database",
                )
                commit(aconn, self.dbs.api_label)
                return False
            changed = copy_group(cconn, CELL, arec, crec)
            commit(cconn, cell.label)
        return changed
