"""Retire the legacy cell copies once the API database alone serves every group.

``shadowdb cleanup --yes`` soft-deletes, Nova-style (``deleted`` = the row's id,
``deleted_at`` = now), the cell copies of every group. It is the last, deliberate step
of a cutover, and the only one that gives up the easy way back: until then the cell
copies, kept level through the API journal, are what makes rolling back cheap (after
it, leaving ``api-only`` needs a full ``backfill --reverse``). So it is refused unless:

* the phase is ``api-only`` (nothing reads the cell copies any more);
* no cell journal holds an entry (a cell-side write the API database lacks); and
* the *newest* diff-report compared every cell registered now, in
  ``dual-write-api-reads`` at the move into ``api-only`` or in ``api-only`` itself, and
  every difference it found was explained by a pending API journal entry (the cells
  lagging behind an ``api-only`` write, never the API database lacking a group).

And whatever a report said, each batch retires only cell groups whose uuid the API
database holds or has tombstoned: a group the API database never had is left live and
reported, never deleted from every database at once.

The run first sets ``cells_retired`` on the API phase row, so ``api-only`` writers stop
journaling for a rollback, then retires the cells in batches (a group with its children
in one transaction, fenced by the cell's phase row), then purges the API journal and the
tombstones, which mean nothing once no cell copy is left to compare.

A ``backfill --reverse`` started meanwhile (another operator preparing a rollback)
clears ``cells_retired`` and rebuilds cell copies: every batch checks the flag, and the
purge runs only if it is still set, read under the row's lock in the purge's own
transaction; otherwise the run stops with everything kept (a tombstone purged while
cells hold copies again would let a destroyed group look never copied). And because
the cells' contents changed, the run records a diff-report result that gates nothing:
leaving ``api-only`` afterwards needs a new diff-report of the rebuilt cells.
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
import structlog

from shadowdb import diff
from shadowdb.backfill import uncopied_among
from shadowdb.bulk import MAX_IN_LIST
from shadowdb.databases import Cell, Databases, read_each, reader, writer
from shadowdb.errors import DatabaseUnreachable, GuardRefused
from shadowdb.fence import pin_cell
from shadowdb.models import api_journal, api_state, api_tombstones
from shadowdb.queries import CELL
from shadowdb.state import Phase, PhaseState, read_state
from shadowdb.transactions import commit, transaction

__all__ = ["CleanupResult", "cleanup", "completed", "refusals"]

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class CellCleanup:
    """Rows soft-deleted in one cell, per table."""

    cell: str
    groups: int
    policies: int
    members: int


@dataclasses.dataclass(frozen=True)
class CleanupResult:
    """What ``cleanup`` retired, cell by cell."""

    cells: tuple[CellCleanup, ...]
    #: Live cell groups left alone: the API database neither holds nor tombstoned them.
    kept: int = 0

    @property
    def total(self) -> int:
        """Rows soft-deleted in all."""
        return sum(c.groups + c.policies + c.members for c in self.cells)


def _refusals(dbs: Databases) -> list[str]:
    state = dbs.phases.fresh()
    if state.phase is not Phase.API_ONLY:
        return [f"cleanup runs in api-only only; the phase is {state.phase.value}"]
    reasons: list[str] = []

    def unreachable(cell: Cell, err: DatabaseUnreachable) -> None:
        reasons.append(f"{cell.label} unreachable: {err.detail}")

    cells = dbs.refresh_cells()
    journals = read_each(cells, CELL.journal_count, catch=DatabaseUnreachable, failed=unreachable)
    for cell, pending in journals:
        if pending:
            reasons.append(
                f"journal of {cell.label} holds {pending} entries (writes the API database "
                "lacks); replay them first"
            )
    with reader(dbs.api, dbs.api_label) as conn:
        last = diff.last_result(conn)
    run = "run `shadowdb diff-report`"
    if (
        last is not None
        and state.cells_retired
        and last.epoch == state.epoch
        and last.superseded_by(_DONE)
    ):
        # A cleanup completed in this epoch and no rebuild ran since (the flag would be
        # clear): running it again retires whatever is left, under the same guarantees.
        return reasons
    if last is None:
        return [*reasons, f"no diff-report on record; {run}"]
    when = f"the newest diff-report (started {last.started_at:%Y-%m-%d %H:%M:%S}Z)"
    if last.outcome == "incomplete":
        reasons.append(f"{when} did not complete; {run}")
    elif last.outcome != "clean" and last.unexplained != 0:
        reasons.append(
            f"{when} found differences that no pending API journal entry explains; "
            "the API copies are not known to hold everything"
        )
    if last.scope != "all" or not {c.uuid for c in cells} <= set(last.cells):
        reasons.append(f"{when} did not compare every registered cell; {run}")
    if last.phase not in (Phase.DUAL_WRITE_API_READS.value, Phase.API_ONLY.value) or (
        last.epoch < state.epoch - 1
    ):
        reasons.append(
            f"{when} ran in {last.phase} at epoch {last.epoch}, before the move into "
            f"api-only (epoch {state.epoch}); {run}"
        )
    return reasons


def refusals(dbs: Databases) -> list[str]:
    """Return every reason ``cleanup`` would be refused now (empty: it would run)."""
    return _refusals(dbs)


def completed(state: PhaseState, last: diff.StoredResult | None) -> bool:
    """Tell whether a cleanup completed at ``state``'s epoch and nothing rebuilt the cells."""
    return (
        last is not None
        and state.cells_retired
        and last.epoch == state.epoch
        and (last.detail or "").startswith(_DONE)
    )


#: What a completed cleanup records as the newest diff-report result.
_DONE = diff.CLEANED_UP

_UNRETIRED = (
    "a `backfill --reverse` rebuilt the cell copies while cleanup ran; nothing was purged: "
    "run `shadowdb diff-report`, then cleanup again if api-only is to stay"
)


def _retire_groups(dbs: Databases, cell: Cell, state: PhaseState) -> tuple[CellCleanup, int]:
    """Retire the cell's groups the API database holds or has tombstoned, in batches.

    Returns what was retired and how many live groups were left (unknown to the API).
    """
    g, p, m = CELL.groups, CELL.policies, CELL.members
    after = 0
    groups = policies = members = kept = 0
    while True:
        with transaction(cell.engine, cell.label) as conn:
            pin_cell(conn, cell, state)
            rows = conn.execute(
                sa.select(g.c.id, g.c.uuid)
                .where(g.c.deleted == 0, g.c.id > after)
                .order_by(g.c.id)
                .limit(MAX_IN_LIST)  # the ids go into one IN list
                .with_for_update()
            ).all()
            if not rows:
                return CellCleanup(cell.name, groups, policies, members), kept
            after = rows[-1].id
            with reader(dbs.api, dbs.api_label) as aconn:
                if not read_state(aconn).cells_retired:
                    raise GuardRefused("cleanup", [_UNRETIRED])
                unknown = uncopied_among(aconn, [r.uuid for r in rows])
            ids = [r.id for r in rows if r.uuid not in unknown]
            for row in rows:
                if row.uuid in unknown:
                    kept += 1
                    log.error("cleanup_kept_unknown_group", cell=cell.name, group_uuid=row.uuid)
            if ids:
                policies += CELL.retire(conn, p, p.c.group_id.in_(ids))
                members += CELL.retire(conn, m, m.c.group_id.in_(ids))
                groups += CELL.retire(conn, g, g.c.id.in_(ids))
            commit(conn, cell.label)


def _retire_orphans(cell: Cell, state: PhaseState, table: sa.Table) -> int:
    """Retire live child rows whose group is not live (legacy rows); return how many."""
    g = CELL.groups
    total = 0
    while True:
        with transaction(cell.engine, cell.label) as conn:
            pin_cell(conn, cell, state)
            live = sa.select(g.c.id).where(g.c.deleted == 0)
            ids = list(
                conn.scalars(
                    sa.select(table.c.id)
                    .where(table.c.deleted == 0, table.c.group_id.not_in(live))
                    .order_by(table.c.id)
                    .limit(MAX_IN_LIST)  # the ids go into one IN list
                )
            )
            if not ids:
                return total
            total += CELL.retire(conn, table, table.c.id.in_(ids))
            commit(conn, cell.label)


def cleanup(dbs: Databases) -> CleanupResult:
    """Soft-delete the cell copies of every group (see the module docstring).

    Raises:
        GuardRefused: not in ``api-only``, a pending cell journal entry, or no newest
            diff-report that vouches for every cell; ``.reasons`` lists every one.
    """
    reasons = _refusals(dbs)
    if reasons:
        raise GuardRefused("cleanup", reasons)
    with writer(dbs.api, dbs.api_label) as conn:
        state = read_state(conn, for_update=True)
        if state.phase is not Phase.API_ONLY:
            raise GuardRefused("cleanup", [f"the phase moved to {state.phase.value}"])
        conn.execute(api_state.update().where(api_state.c.id == 1).values(cells_retired=True))
    state = dataclasses.replace(state, cells_retired=True)
    done = []
    kept = 0
    for cell in dbs.cells:
        retired, left = _retire_groups(dbs, cell, state)
        kept += left
        policies = _retire_orphans(cell, state, CELL.policies)
        members = _retire_orphans(cell, state, CELL.members)
        retired = dataclasses.replace(
            retired, policies=retired.policies + policies, members=retired.members + members
        )
        done.append(retired)
        log.info(
            "cell_cleaned",
            cell=cell.name,
            groups=retired.groups,
            policies=retired.policies,
            members=retired.members,
            kept=left,
        )
    with writer(dbs.api, dbs.api_label) as conn:
        now = read_state(conn, for_update=True)
        if not now.cells_retired or now.phase is not Phase.API_ONLY:
            raise GuardRefused("cleanup", [_UNRETIRED])
        if kept == 0:
            conn.execute(api_journal.delete())
            conn.execute(api_tombstones.delete())
        # The cells changed under every recorded diff-report: none may gate a move now.
        diff.record_superseded(conn, now, dbs.settings.actor, _DONE)
    return CleanupResult(tuple(done), kept)
