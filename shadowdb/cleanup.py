"""Retire the legacy cell copies once the API database alone serves every group.

``shadowdb cleanup --yes`` soft-deletes, Nova-style (``deleted`` = the row's id,
``deleted_at`` = now), every live row of the three cell group tables. It is the last,
deliberate step of a cutover, and the only one that gives up the easy way back: until
then the cell copies are what makes rolling back cheap (after it, leaving ``api-only``
recreates them with ``backfill --reverse``). So it is refused unless:

* the phase is ``api-only`` (nothing reads or writes the cell copies any more); and
* a diff-report of every cell came out clean in ``dual-write-api-reads`` right before
  the move into ``api-only`` (the run that gated it), or in ``api-only`` itself, and the
  API journal is empty: the API copies are known to hold everything the cell copies hold.
  Why a run from before the move counts: from the moment the API database is the
  authority, every write reaches it first (a cell write that fails is journaled on the
  API side), and in ``api-only`` nothing writes the cells at all. The cells can only fall
  behind the API database after that clean run, never get ahead of it; and a diff-report
  run in ``api-only`` under traffic is never clean, precisely because the cells lag.

Rows are retired in batches (one transaction each), groups last, so that an interrupted
run leaves no live group without its children and a re-run finishes the job.
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
import structlog

from shadowdb.databases import Cell, Databases, reader, writer
from shadowdb.errors import GuardRefused
from shadowdb.models import api_diff_results
from shadowdb.phase import Phase, utcnow
from shadowdb.queries import CELL

__all__ = ["CleanupResult", "cleanup"]

log = structlog.get_logger(__name__)

_BATCH = 1000


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

    @property
    def total(self) -> int:
        """Rows soft-deleted in all."""
        return sum(c.groups + c.policies + c.members for c in self.cells)


def _refusals(dbs: Databases) -> list[str]:
    from shadowdb.switcher import ApiJournalEmpty

    state = dbs.phases.fresh()
    if state.phase is not Phase.API_ONLY:
        return [f"cleanup runs in api-only only; the phase is {state.phase.value}"]
    reasons = ApiJournalEmpty().check(dbs, state, Phase.API_ONLY)
    t = api_diff_results
    with reader(dbs.api, dbs.api_label) as conn:
        clean = conn.execute(
            sa.select(t.c.id)
            .where(
                t.c.outcome == "clean",
                t.c.scope == "all",
                t.c.epoch >= state.epoch - 1,
                t.c.phase.in_([Phase.DUAL_WRITE_API_READS.value, Phase.API_ONLY.value]),
            )
            .limit(1)
        ).first()
    if clean is None:
        reasons.append(
            "no clean diff-report of every cell from the move into api-only (epoch "
            f"{state.epoch - 1}, dual-write-api-reads) or since; "
            "the API copies are not known to hold everything"
        )
    return reasons


def _retire(cell: Cell, table: sa.Table) -> int:
    """Soft-delete every live row of ``table`` in batches; return how many."""
    total = 0
    while True:
        with writer(cell.engine, cell.label) as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    sa.select(table.c.id)
                    .where(table.c.deleted == 0)
                    .order_by(table.c.id)
                    .limit(_BATCH)
                )
            ]
            if not ids:
                return total
            conn.execute(
                table.update()
                .where(table.c.id.in_(ids), table.c.deleted == 0)
                .values(deleted=table.c.id, deleted_at=utcnow())
            )
        total += len(ids)


def cleanup(dbs: Databases) -> CleanupResult:
    """Soft-delete the cell copies of every group (see the module docstring).

    Raises:
        GuardRefused: not in ``api-only``, or no clean, recent diff-report, or a pending
            API journal entry; ``.reasons`` lists every one.
    """
    reasons = _refusals(dbs)
    if reasons:
        raise GuardRefused("cleanup", reasons)
    done = []
    for cell in dbs.cells:
        # Children first: a run cut short leaves live groups with their children, never
        # the reverse, and the next run retires the rest.
        policies = _retire(cell, CELL.policies)
        members = _retire(cell, CELL.members)
        groups = _retire(cell, CELL.groups)
        done.append(CellCleanup(cell.name, groups, policies, members))
        log.info("cell_cleaned", cell=cell.name, groups=groups, policies=policies, members=members)
    return CleanupResult(tuple(done))
