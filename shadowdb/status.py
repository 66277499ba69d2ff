"""Gather where the cutover stands: the phase, each cell's health, the newest diff-report.

:func:`gather` reads; it names no next step. ``shadowdb.commands.status`` adds the step
:mod:`shadowdb.advice` works out from what :func:`gather` returns, so the advice reads
these values and this module never reads the advice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import sqlalchemy as sa

from shadowdb import backfill as backfilling
from shadowdb import bookkeeping, diff, schema, urls
from shadowdb.databases import Databases, choose_default, reader
from shadowdb.errors import OperationalError
from shadowdb.failures import one_line
from shadowdb.fence import settle
from shadowdb.guards import CleanRecentDiff
from shadowdb.models import api_journal, cell_journal
from shadowdb.queries import API, CELL
from shadowdb.state import Phase, PhaseState, read_state, utcnow

__all__ = ["CellHealth", "CellInfo", "LastDiff", "Status", "cell_infos", "gather"]


@dataclasses.dataclass(frozen=True)
class CellInfo:
    """A registered cell as operators see it (the URL's password masked)."""

    name: str
    uuid: str
    url: str
    default: bool


@dataclasses.dataclass(frozen=True)
class CellHealth:
    """How one cell stands in the cutover.

    Attributes:
        name: the cell's name.
        reachable: it answered.
        error: why not, one line (None if it answered).
        backlog: its live groups the API database lacks (None if unreachable).
        journal: its pending journal entries (None if unreachable).
        conflicts: its groups backfill recorded as conflicts and would not copy.
        synced: its schema is at shadowdb's newest revision (``db sync`` brings it there).
        unscanned: backfill has group ids of this cell left to scan (it scans each id
            range once: a group that appears behind its checkpoints, written to the cell
            outside shadowdb, is copied through ``diff-report --repair`` instead).
    """

    name: str
    reachable: bool
    error: str | None
    backlog: int | None
    journal: int | None
    conflicts: int = 0
    synced: bool = True
    unscanned: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class LastDiff(diff.RunSummary):
    """The newest diff-report on record, and whether it still admits a phase change.

    Attributes (besides what the run found, :class:`~shadowdb.diff.RunSummary`):
        age_seconds: how long ago it began.
        current: it ran at the current epoch.
        recent: it began at most ``diff_max_age`` seconds ago.
        gates: it admits the phase change it is needed for (``clean-recent-diff``).
        blockers: why not, one line each (empty when it gates).
        detail: what cut an incomplete run short (or recorded it: ``cleanup``).
    """

    age_seconds: int
    current: bool
    recent: bool
    gates: bool
    blockers: tuple[str, ...]
    detail: str | None = None

    @property
    def clean(self) -> bool:
        """It completed and found no difference."""
        return self.outcome == "clean"


@dataclasses.dataclass(frozen=True)
class Status:
    """Where the cutover stands, and the command to run next.

    Attributes:
        phase: the phase's name.
        epoch: bumped on every phase change.
        changed_at: when the phase was last set (UTC).
        cells: the registered cells.
        health: each cell but cell0: reachable, backlog, journal, conflicts.
        api_database: the API database in use (password masked).
        api_journal: the API journal's pending entries.
        journal_conflicts: groups journaled on both sides (never resolved silently).
        conflicts: the groups backfill recorded as conflicts, per kind.
        cells_retired: ``cleanup`` has retired the cell copies.
        diff: the newest diff-report, if any.
        next_step: the command to run next, or None when none can (or need) run.
        reason: why that command, or why none.
    """

    phase: str
    epoch: int
    changed_at: dt.datetime
    cells: tuple[CellInfo, ...]
    health: tuple[CellHealth, ...] = ()
    api_database: str = ""
    api_journal: int = 0
    journal_conflicts: int = 0
    conflicts: dict[str, int] = dataclasses.field(default_factory=dict)
    cells_retired: bool = False
    diff: LastDiff | None = None
    next_step: str | None = None
    reason: str = ""

    @property
    def reachable(self) -> bool:
        """Every cell answered (``shadowdb status`` exits 2 otherwise)."""
        return all(h.reachable for h in self.health)


def cell_infos(dbs: Databases) -> list[CellInfo]:
    """List the registered cells, oldest first, passwords masked."""
    with reader(dbs.api, dbs.api_label) as conn:
        state = read_state(conn)
    cells = dbs.refresh_cells()
    chosen = choose_default(cells, state.default_cell_uuid)
    default = None if chosen is None else chosen.uuid
    return [CellInfo(c.name, c.uuid, urls.mask(c.url), c.uuid == default) for c in cells]


def gather(dbs: Databases) -> Status:
    """Read where the cutover stands, leaving the next step empty.

    Reads the phase, each cell's backlog, journal and conflicts, the API journal and the
    newest diff-report. Finishes a half-done phase change on the way, as every command does.
    """
    state, _problems = settle(dbs)
    with reader(dbs.api, dbs.api_label) as conn:
        api_journal_count = API.journal_count(conn)
        api_journaled = bookkeeping.journaled_groups(conn, api_journal)
        conflict_rows = bookkeeping.conflicts_by_cell(conn)
        last = diff.last_result(conn)
        chunks = bookkeeping.chunk_scans(conn)
    health = []
    both_sides: set[str] = set()
    head = schema.head_revision("cell")
    for cell in dbs.refresh_cells():
        if cell.is_cell0:
            continue  # never holds a group
        conflicts = sum(1 for cell_uuid, _kind in conflict_rows if cell_uuid == cell.uuid)
        try:
            with reader(cell.engine, cell.label) as conn:
                at = schema.current_revision(conn, "cell")
                if at != head:
                    # Registered but not synced: no journal or phase row to read yet.
                    error = f"schema at {at or 'no shadowdb revision'}, not {head}"
                    health.append(
                        CellHealth(cell.name, True, error, None, None, conflicts, synced=False)
                    )
                    continue
                journal = CELL.journal_count(conn)
                top = conn.scalar(sa.select(sa.func.max(CELL.groups.c.id))) or 0
                if journal and api_journaled:
                    both_sides |= api_journaled & bookkeeping.journaled_groups(conn, cell_journal)
            backlog = backfilling.uncopied(dbs, cell)
        except OperationalError as err:
            health.append(CellHealth(cell.name, False, one_line(err), None, None, conflicts))
            continue
        mine = [(done, end_id) for cell_uuid, done, end_id in chunks if cell_uuid == cell.uuid]
        unscanned = any(not done for done, _end in mine) or top > max(
            (end_id for _done, end_id in mine), default=0
        )
        health.append(
            CellHealth(cell.name, True, None, backlog, journal, conflicts, unscanned=unscanned)
        )
    return Status(
        phase=state.phase.value,
        epoch=state.epoch,
        changed_at=state.changed_at,
        cells=tuple(cell_infos(dbs)),
        health=tuple(health),
        api_database=urls.mask(dbs.api_url),
        api_journal=api_journal_count,
        journal_conflicts=len(both_sides),
        conflicts=dict(Counter(kind for _cell, kind in conflict_rows)),
        cells_retired=state.cells_retired,
        diff=None if last is None else _last_diff(dbs, state, last),
    )


def _last_diff(dbs: Databases, state: PhaseState, last: diff.StoredResult) -> LastDiff:
    age = max(0, int((utcnow() - last.started_at).total_seconds()))
    # The guard phase set runs (api-only's only move, back, admits journaled differences).
    guard = CleanRecentDiff(explained=state.phase is Phase.API_ONLY)
    blockers = tuple(guard.check(dbs, state, state.phase))
    found = {f.name: getattr(last, f.name) for f in dataclasses.fields(diff.RunSummary)}
    return LastDiff(
        **found,
        detail=last.detail,
        age_seconds=age,
        current=last.epoch == state.epoch,
        recent=age <= dbs.settings.diff_max_age,
        gates=not blockers,
        blockers=blockers,
    )
