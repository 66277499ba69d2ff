"""Check what a phase change needs: the guards, and the table of allowed moves.

:data:`GUARDS` is the one table of phase changes: each allowed move, ``(from, to)``,
forward one step or back one step, maps to the guards it runs; a move not in it is
refused whatever ``force`` says. :data:`TRANSITIONS` is its keys.

A guard (:class:`Guard`) scans without holding the fence, before the record step;
``force`` overrides its failures (they are recorded). A :class:`LockedGuard` also runs
inside the record step with every phase row locked (:mod:`shadowdb.switcher`), where no
write is in flight, so its verdict is exact at the instant of the change.

Why the guards outside the lock are enough
    ``unmigrated-cell-groups`` scans outside the fence: a group created after the scan
    is created by a dual-write writer (both copies, or a cell journal entry that the
    exact ``cell-journals-empty`` check under the lock refuses). ``clean-recent-diff``
    reads a recorded run that began with every database settled at the current epoch;
    after it, every way two copies can come apart leaves a journal entry, and the journal
    guards run under the lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from sqlalchemy.engine import Connection

from shadowdb import diff, schema
from shadowdb.backfill import uncopied
from shadowdb.databases import Cell, Databases, reader
from shadowdb.errors import DatabaseUnreachable, OperationalError
from shadowdb.journals import OUTBOX
from shadowdb.queries import API, CELL, GroupRecord, GroupTables, JournalEntry
from shadowdb.state import Phase, PhaseState, read_state, utcnow
from shadowdb.writes import copy_group

__all__ = [
    "GUARDS",
    "TRANSITIONS",
    "ApiJournalEmpty",
    "CellJournalsEmpty",
    "CellsNotRetired",
    "CleanRecentDiff",
    "Guard",
    "LockedGuard",
    "UnmigratedCellGroups",
    "allowed_next",
    "transition_refusal",
    "uncopied",
]


_C, _CR, _AR, _A = (
    Phase.CELL_ONLY,
    Phase.DUAL_WRITE_CELL_READS,
    Phase.DUAL_WRITE_API_READS,
    Phase.API_ONLY,
)


# --------------------------------------------------------------------------- guards


class Guard(Protocol):
    """Check one condition a transition needs; an empty list means it holds."""

    name: str

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Return every reason the condition fails, as operator-readable sentences."""
        ...


def _synced(cell: Cell) -> bool:
    """Say whether the cell's schema is at shadowdb's newest revision (True if unknown)."""
    try:
        with reader(cell.engine, cell.label) as conn:
            return schema.current_revision(conn, "cell") == schema.head_revision("cell")
    except OperationalError:
        return True  # unreachable: the error itself says so


def _unreachable(cell: Cell, err: OperationalError) -> str:
    if not _synced(cell):
        # The error would name whichever statement failed first (possibly the API
        # database's, in a statement that joins both): name the cell and the cure.
        return f"{cell.label} not checked: it is not synced (run `shadowdb db sync`)"
    if isinstance(err, DatabaseUnreachable) and err.database == cell.label:
        return f"{cell.label} unreachable, not checked: {err.detail}"
    return f"{cell.label} not checked: {err}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


@runtime_checkable
class LockedGuard(Guard, Protocol):
    """A guard whose verdict must hold at the instant of the change.

    :meth:`check_locked` runs inside the record step with every phase row locked, so no
    write is in flight anywhere; it may delete moot journal entries (copies level).
    """

    def check_locked(self, api: Connection, cells: Sequence[tuple[Cell, Connection]]) -> list[str]:
        """Return every reason the condition fails right now."""
        ...


def _copy_in_cells(cells: Sequence[tuple[Cell, Connection]], group_uuid: str) -> GroupRecord | None:
    for _cell, conn in cells:
        found = CELL.get(conn, group_uuid)
        if found is not None:
            return found
    return None


def _level(a: GroupRecord | None, b: GroupRecord | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.same_data(b)


#: A group's copy on one side, or ``None``.
Copy = GroupRecord | None

#: Groups whose cell journal entries the record step replays itself, under the fence.
_REPLAY_UNDER_LOCK = 100


def _pending(
    side: GroupTables,
    conn: Connection,
    copies: Callable[[str], tuple[GroupRecord | None, GroupRecord | None]],
    *,
    purge: bool,
    replay: Callable[[str, Copy, Copy, list[JournalEntry]], bool] | None = None,
) -> int:
    """Count ``side``'s journal entries whose two copies differ; with ``purge``, delete the rest.

    An entry whose copies are already level is moot: an outbox entry whose writer has not
    deleted it yet, or a replay's leftover. It records nothing. With ``replay``, an entry
    whose copies differ is replayed (up to :data:`_REPLAY_UNDER_LOCK` groups) and deleted
    when ``replay`` says it levelled them.
    """
    pending = 0
    replayed = 0
    by_group: dict[str, list[JournalEntry]] = {}
    for entry in side.journal_pending(conn):
        by_group.setdefault(entry.group_uuid, []).append(entry)
    for group_uuid, entries in by_group.items():
        ids = [e.id for e in entries]
        here, there = copies(group_uuid)
        if _level(here, there):
            if purge:
                side.journal_clear(conn, group_uuid, ids)
        elif (
            replay is not None
            and replayed < _REPLAY_UNDER_LOCK
            and replay(group_uuid, here, there, entries)
        ):
            replayed += 1
            if purge:
                side.journal_clear(conn, group_uuid, ids)
        else:
            pending += len(ids)
    return pending


def _pending_api(api: Connection, cells: Sequence[tuple[Cell, Connection]], *, purge: bool) -> int:
    """Count the API journal's entries whose copies differ (:func:`_pending`)."""
    return _pending(API, api, lambda g: (API.get(api, g), _copy_in_cells(cells, g)), purge=purge)


def _pending_cell(api: Connection, cell_conn: Connection, *, purge: bool) -> int:
    """Count a cell journal's entries whose copies differ (:func:`_pending`).

    With ``purge`` (under the fence, where no write is in flight), the outbox entries of
    ``dual-write-cell-reads`` writes whose API half has not run (yet) and recorded no
    failure are replayed here: the cell copy, the authority, is copied to the API
    database on the locked connection. An entry that recorded a failure (for the
    backfill to drain) and a group journaled on both sides are left, counted.
    """

    def replay(
        group_uuid: str, cell_copy: Copy, api_copy: Copy, entries: list[JournalEntry]
    ) -> bool:
        if any(e.error != OUTBOX for e in entries) or API.journal_for(api, group_uuid):
            return False  # a recorded failure (run backfill), or a conflict
        if purge:  # the preview only asks whether the record step could replay it
            copy_group(api, API, cell_copy, api_copy)
        return True

    return _pending(
        CELL,
        cell_conn,
        lambda g: (CELL.get(cell_conn, g), API.get(api, g)),
        purge=purge,
        replay=replay,
    )


class UnmigratedCellGroups:
    """Require every live cell group (``deleted = 0``) to have an API copy (same uuid)."""

    name = "unmigrated-cell-groups"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Count live cell groups, cell by cell, whose uuid the API database lacks."""
        reasons: list[str] = []
        missing: dict[str, int] = {}
        for cell in dbs.refresh_cells():
            try:
                count = uncopied(dbs, cell)
            except OperationalError as err:
                reasons.append(_unreachable(cell, err))
                continue
            if count:
                missing[cell.name] = count
        if missing:
            per_cell = ", ".join(f"{name}: {n}" for name, n in missing.items())
            reasons.insert(
                0,
                f"{_plural(sum(missing.values()), 'live cell group')} not in the API database "
                f"({per_cell}); run backfill",
            )
        return reasons


class CellJournalsEmpty:
    """Require every cell journal to hold no entry whose copies differ (API copies level).

    Exact: counted again under the fence (:meth:`check_locked`), where no write is in
    flight, so an entry that appears while the guard scans refuses the change. There the
    outbox entries of writes whose API half has not run yet (a few, under live writes)
    are replayed on the locked connections first; a backlog larger than
    ``_REPLAY_UNDER_LOCK`` groups, or a group journaled on both sides, refuses.
    """

    name = "cell-journals-empty"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Count each cell's entries whose copies differ (a preview of the exact check)."""
        reasons = []
        for cell in dbs.refresh_cells():
            try:
                with (
                    reader(cell.engine, cell.label) as cconn,
                    reader(dbs.api, dbs.api_label) as aconn,
                ):
                    count = _pending_cell(aconn, cconn, purge=False)
            except OperationalError as err:
                reasons.append(_unreachable(cell, err))
                continue
            if count:
                reasons.append(self._reason(cell, count))
        return reasons

    def check_locked(self, api: Connection, cells: Sequence[tuple[Cell, Connection]]) -> list[str]:
        """Count again, with every phase row locked; delete the moot entries."""
        return [
            self._reason(cell, count)
            for cell, conn in cells
            if (count := _pending_cell(api, conn, purge=True))
        ]

    @staticmethod
    def _reason(cell: Cell, count: int) -> str:
        return f"journal of {cell.label} holds {_entries(count)} (API copies lag); run backfill"


class ApiJournalEmpty:
    """Require the API journal to hold no entry whose copies differ (cell copies level).

    Exact, as :class:`CellJournalsEmpty`: an outbox entry of a write that has finished
    both halves is moot and deleted under the lock; any other entry refuses.
    """

    name = "api-journal-empty"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Count the API entries whose copies differ (a preview of the exact check)."""
        held: list[tuple[Cell, Connection]] = []
        with contextlib.ExitStack() as stack:
            for cell in dbs.refresh_cells():
                try:
                    held.append((cell, stack.enter_context(reader(cell.engine, cell.label))))
                except OperationalError as err:
                    return [_unreachable(cell, err)]
            aconn = stack.enter_context(reader(dbs.api, dbs.api_label))
            count = _pending_api(aconn, held, purge=False)
        return [self._reason(count)] if count else []

    def check_locked(self, api: Connection, cells: Sequence[tuple[Cell, Connection]]) -> list[str]:
        """Count again, with every phase row locked; delete the moot entries."""
        count = _pending_api(api, cells, purge=True)
        return [self._reason(count)] if count else []

    @staticmethod
    def _reason(count: int) -> str:
        return f"API journal holds {_entries(count)} (cell copies lag); run backfill"


class CellsNotRetired:
    """Require that ``cleanup`` has not begun retiring the cell copies.

    Until it does, every ``api-only`` write leaves an API journal entry, so the cells'
    lag is fully journaled and the way back is a replay. After it, only a full
    ``backfill --reverse`` (which clears the mark first) rebuilds them.
    """

    name = "cells-not-retired"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Read the mark on the phase row."""
        return [self._reason()] if state.cells_retired else []

    def check_locked(self, api: Connection, cells: Sequence[tuple[Cell, Connection]]) -> list[str]:
        """Read it again under the lock."""
        return [self._reason()] if read_state(api).cells_retired else []

    @staticmethod
    def _reason() -> str:
        return (
            "cleanup retired the cell copies: rebuild them with `shadowdb backfill --reverse`, "
            "then run diff-report"
        )


class CleanRecentDiff:
    """Require a clean diff-report of every cell, recent, run in the current phase.

    The newest run recorded by :mod:`shadowdb.diff` admits the move when it

    1. completed, compared every cell registered now (not one ``--cell``) and found no
       difference; with ``explained``, differences are admitted if every one had a
       pending journal entry (the cells lagging behind ``api-only`` writes, each entry
       replayed by the catch-up) or is a cell group the API database never had (a cell
       registered in ``api-only``: the phase entered reads it from its cell, and its
       backfill copies it);
    2. started at most ``Settings.diff_max_age`` seconds ago;
    3. ran at the current epoch, with every database settled at it when it began (a run
       that began on a lagging cell is recorded incomplete by the diff itself).

    Writes since the run, in the same phase: every way they can leave two copies unequal
    leaves a journal entry in the transaction of the first half, and the journal guards
    of the move run exactly, under the fence.
    """

    name = "clean-recent-diff"

    def __init__(self, *, explained: bool = False) -> None:
        self.explained = explained

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Check the newest recorded diff-report against the rule above."""
        with reader(dbs.api, dbs.api_label) as conn:
            last = diff.last_result(conn)
        run = "run `shadowdb diff-report`"
        if last is None:
            return [f"no diff-report on record; {run}"]
        when = f"the last diff-report (started {last.started_at:%Y-%m-%d %H:%M:%S}Z)"
        if last.superseded_by(diff.CLEANED_UP):
            # Not a diff-report: cleanup's record that the copies the last one compared
            # are gone. Only rebuilt cell copies can be compared again.
            return [
                f"{diff.CLEANED_UP} at {last.started_at:%Y-%m-%d %H:%M:%S}Z: run "
                "`shadowdb backfill --reverse`, then `shadowdb diff-report`"
            ]
        if last.outcome == "incomplete":
            return [f"{when} did not complete; {run}"]
        admitted = (
            self.explained
            and last.unexplained is not None
            and last.unexplained - (last.never_copied or 0) == 0
        )
        if last.outcome != "clean" and not admitted:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(last.counts.items()))
            return [
                f"{when} found {_plural(last.differences, 'difference')} ({kinds}); "
                "repair them (diff-report --repair, then backfill) and run diff-report again"
            ]
        if last.scope != "all":
            return [f"{when} compared cell {last.scope} only; {run} for every cell"]
        reasons = []
        unseen = [c.name for c in dbs.refresh_cells() if c.uuid not in last.cells]
        if unseen:
            reasons.append(f"{when} did not compare cell {', '.join(unseen)}; {run}")
        age = (utcnow() - last.started_at).total_seconds()
        limit = dbs.settings.diff_max_age
        if age > limit:
            reasons.append(
                f"{when} is {_duration(age)} old, more than diff_max_age ({_duration(limit)}); "
                f"{run}"
            )
        if last.epoch != state.epoch:
            reasons.append(
                f"the phase changed since the last diff-report (it ran in {last.phase} at epoch "
                f"{last.epoch}, now epoch {state.epoch}); {run}"
            )
        return reasons


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


# --------------------------------------------------------------------------- the table


#: Every allowed move, ``(from, to)``, and the guards it runs, in the order their reasons
#: are reported: forward one step, or back one step, nothing else. Add a guard by adding it
#: to the tuple of its move; a move with no guard is listed with ``()``.
GUARDS: dict[tuple[Phase, Phase], tuple[Guard, ...]] = {
    # The fence is what makes this safe: no cell-only write commits after the record.
    (_C, _CR): (),
    (_CR, _AR): (UnmigratedCellGroups(), CellJournalsEmpty(), CleanRecentDiff()),
    (_AR, _A): (
        ApiJournalEmpty(),
        CellJournalsEmpty(),
        UnmigratedCellGroups(),
        CleanRecentDiff(),
    ),
    # The cell stays authoritative; the API copies merely stop being written, and backfill
    # must bring them level again before dual-write-api-reads.
    (_CR, _C): (),
    (_AR, _CR): (ApiJournalEmpty(),),
    # Every api-only write is journaled until cleanup: the cells' lag is all explained.
    (_A, _AR): (CellsNotRetired(), CellJournalsEmpty(), CleanRecentDiff(explained=True)),
}


#: Every allowed move, in the order of :data:`GUARDS`.
TRANSITIONS: tuple[tuple[Phase, Phase], ...] = tuple(GUARDS)


def allowed_next(phase: Phase) -> tuple[Phase, ...]:
    """Return the phases the table allows moving to from ``phase``, in forward order."""
    return tuple(sorted((to for frm, to in GUARDS if frm is phase), key=lambda p: p.index))


def transition_refusal(current: Phase, target: Phase) -> str | None:
    """Return why the table refuses ``current -> target``, or ``None`` if it allows it."""
    if current is target:
        return f"already in {current.value}"
    if (current, target) in GUARDS:
        return None
    steps = " or ".join(p.value for p in allowed_next(current))
    return (
        f"cannot move from {current.value} to {target.value}: "
        f"phases change one step at a time, allowed next: {steps}"
    )
