"""Move the deployment from one phase to the next: guarded, fenced, recorded.

A phase change is a :class:`Switcher` run of these steps, always in this order; each
step's description and action live together in :data:`_STEPS`, so the dry run cannot
drift from the run:

1. **preconditions**: finish any half-done change (:func:`shadowdb.fence.settle`),
   read the phase row fresh from the API database (never from a cache), check that the
   move is in :data:`TRANSITIONS` (forward only to the next phase, backward only to the
   previous one) and run every guard :data:`GUARDS` lists for it. Every failure reason
   is collected, none is dropped; ``force`` overrides failed guards (they are recorded
   as overridden) but never a move the table does not allow.
2. **record** (the fence): open a transaction on every cell, in cell order, and lock its
   phase row exclusively; then lock the API database's. Every writer holds the row of
   each database it writes under a shared lock for its whole transaction, so these locks
   wait for the writers in flight and, once held, no write is in flight anywhere.
   Under them: require the epoch the guards saw, every cell settled at it and the same
   cells registered; run the guards whose verdict must be exact (the journals,
   :meth:`LockedGuard.check_locked`); write the new phase and ``epoch + 1`` and a
   ``shadowdb_phase_history`` row in the API database; *prepare* every cell (the new
   epoch in its row's ``next_epoch``) and commit it; then commit the API database: that
   is the commit point. Each cell then takes the new phase (``fence.settle_cell``). A
   cell that cannot be reached refuses the change before the commit point; one lost
   after it stays prepared and is settled by the next ``phase set``, ``status`` or
   writer, which ask the API row (:mod:`shadowdb.fence`).
3. **announce**: log ``phase_changed``, send the ``phase-changed`` signal (after the
   commit; a receiver cannot change the outcome).
4. **catch-up** (leaving ``api-only`` only): replay the API journal, which holds one
   entry per group ``api-only`` wrote, onto the cells.

There is no drain wait: no safety property rests on how long a process caches the phase.
A process whose cache still names the old phase plans a write under it and is stopped
by the first database it writes (its row holds the new epoch), then re-plans under the
phase found there. The cache only bounds how stale a *read* may be.

Why the epoch compare-and-swap
    Guards scan without holding the fence (holding every cell's phase row across a scan
    would stall all writers). Two ``phase set`` runs may both pass their guards against
    the same epoch; the record step re-reads the rows under their locks and refuses
    unless the epoch is still the one the guards saw.

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
import dataclasses
import datetime as dt
import enum
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb import diff, signals
from shadowdb.backfill import uncopied
from shadowdb.databases import Cell, Databases, database_errors, reader
from shadowdb.errors import DatabaseUnreachable, GuardRefused, OperationalError, ShadowDBError
from shadowdb.fence import describe_row, prepare_cell, settle, settle_cell, settled_at
from shadowdb.models import api_phase_history, api_state
from shadowdb.phase import Phase, PhaseState, read_cell_state, read_state, utcnow
from shadowdb.queries import API, CELL, GroupRecord, GroupTables, JournalEntry
from shadowdb.sync import OUTBOX, commit, copy_group, drain_journals, one_line, transaction

__all__ = [
    "GUARDS",
    "TRANSITIONS",
    "ApiJournalEmpty",
    "CellJournalsEmpty",
    "CellsNotRetired",
    "CleanRecentDiff",
    "Guard",
    "LockedGuard",
    "Step",
    "StepKind",
    "Switched",
    "Switcher",
    "Transition",
    "UnmigratedCellGroups",
    "allowed_next",
    "transition_refusal",
]

log = structlog.get_logger(__name__)


_C, _CR, _AR, _A = (
    Phase.CELL_ONLY,
    Phase.DUAL_WRITE_CELL_READS,
    Phase.DUAL_WRITE_API_READS,
    Phase.API_ONLY,
)

#: Every allowed move, ``(from, to)``: forward one step, or back one step. Nothing else.
TRANSITIONS: tuple[tuple[Phase, Phase], ...] = (
    (_C, _CR),
    (_CR, _AR),
    (_AR, _A),
    (_CR, _C),
    (_AR, _CR),
    (_A, _AR),
)


def allowed_next(phase: Phase) -> tuple[Phase, ...]:
    """Return the phases the table allows moving to from ``phase``, in forward order."""
    return tuple(sorted((to for frm, to in TRANSITIONS if frm is phase), key=lambda p: p.index))


def transition_refusal(current: Phase, target: Phase) -> str | None:
    """Return why the table refuses ``current -> target``, or ``None`` if it allows it."""
    if current is target:
        return f"already in {current.value}"
    if (current, target) in TRANSITIONS:
        return None
    steps = " or ".join(p.value for p in allowed_next(current))
    return (
        f"cannot move from {current.value} to {target.value}: "
        f"phases change one step at a time, allowed next: {steps}"
    )


# --------------------------------------------------------------------------- guards


class Guard(Protocol):
    """Check one condition a transition needs; an empty list means it holds."""

    name: str

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Return every reason the condition fails, as operator-readable sentences."""
        ...


def _unreachable(cell: Cell, err: OperationalError) -> str:
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


def _journal_ids(engine: sa.Engine, label: str, table: sa.Table) -> set[int]:
    with reader(engine, label) as conn:
        return set(conn.scalars(sa.select(table.c.id)))


def _count(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


#: The guards each allowed move runs, in the order their reasons are reported. Every key of
#: :data:`TRANSITIONS` is here; add a guard by adding it to the tuple of its move.
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


# --------------------------------------------------------------------------- switcher


@dataclasses.dataclass(frozen=True)
class Transition:
    """A phase change whose preconditions were evaluated at ``epoch``.

    Attributes:
        from_phase: the phase the preconditions saw.
        to_phase: the phase asked for.
        epoch: the epoch the preconditions saw; the change records ``epoch + 1``.
        guards: names of the guards that ran, in order.
        forced: ``force`` was asked for.
        overridden: the guard reasons ``force`` overrode (empty if none failed).
        reason: the operator's reason, recorded in the history.
        actor: who is acting (``Settings.actor``).
        cells: uuids of the cells registered when the guards ran (the record step
            refuses if the set changed: a new cell was never checked).
    """

    from_phase: Phase
    to_phase: Phase
    epoch: int
    guards: tuple[str, ...]
    forced: bool
    overridden: tuple[str, ...]
    reason: str | None
    actor: str
    cells: tuple[str, ...] = ()

    @property
    def new_epoch(self) -> int:
        """The epoch the change records."""
        return self.epoch + 1


class StepKind(enum.Enum):
    """The steps of a phase change, in the order they run."""

    PRECONDITIONS = "preconditions"
    RECORD = "record"
    ANNOUNCE = "announce"
    CATCH_UP = "catch-up"


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a planned phase change and what it will do."""

    kind: StepKind
    detail: str
    transition: Transition = dataclasses.field(repr=False)

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Switched:
    """A phase change that was recorded and announced."""

    transition: Transition
    epoch: int
    changed_at: dt.datetime
    steps: tuple[Step, ...]
    #: What the catch-up left for ``backfill`` (one line each), if it ran.
    catch_up: tuple[str, ...] = ()


#: Moves after which the cell copies are levelled (see ``Switcher._catch_up``).
_CATCH_UP = {
    (Phase.API_ONLY, Phase.DUAL_WRITE_API_READS): (
        "replay the API journal (one entry per group api-only wrote) onto the cells"
    ),
}


def _overridden_text(overridden: Sequence[str]) -> str | None:
    return "\n".join(overridden) if overridden else None


class Switcher:
    """Change the phase of one deployment through guarded, fenced, recorded steps."""

    def __init__(
        self,
        dbs: Databases,
        *,
        guards: dict[tuple[Phase, Phase], tuple[Guard, ...]] | None = None,
        hook: Callable[[str], None] | None = None,
    ) -> None:
        """Prepare a switcher.

        Args:
            dbs: the deployment.
            guards: the guards per move; :data:`GUARDS` unless given.
            hook: called with ``"locked"`` once every phase row is locked in the record
                step, before anything is written (tests interleave there).
        """
        self.dbs = dbs
        self.guards = GUARDS if guards is None else guards
        self._hook = hook

    # ------------------------------------------------------------------ planning

    def check(self, target: Phase, *, force: bool = False, reason: str | None = None) -> Transition:
        """Evaluate the preconditions of moving to ``target`` from the current phase.

        Raises:
            GuardRefused: the table does not allow the move (whatever ``force`` says), or
                a guard failed and ``force`` is false; ``.reasons`` lists every failure.
            DatabaseUnreachable: a cell cannot be reached (a change needs every cell).
        """
        # A cell that cannot be settled (or reached) refuses the record step itself.
        state, _problems = settle(self.dbs)
        refusal = transition_refusal(state.phase, target)
        if refusal is None and not [c for c in self.dbs.cells if not c.is_cell0]:
            # Nothing to move and nowhere to write: a forgotten SHADOWDB_API_URL, most
            # likely. Not a guard --force can override.
            refusal = "no cell besides cell0 is registered (shadowdb cell add NAME URL)"
        if refusal is not None:
            self._refused(state, target, [refusal], force)
        guards = self.guards.get((state.phase, target), ())
        failures: list[str] = []
        for guard in guards:
            failures.extend(guard.check(self.dbs, state, target))
        if failures and not force:
            self._refused(state, target, failures, force)
        return Transition(
            from_phase=state.phase,
            to_phase=target,
            epoch=state.epoch,
            guards=tuple(g.name for g in guards),
            forced=force,
            overridden=tuple(failures),
            reason=reason,
            actor=self.dbs.settings.actor,
            cells=tuple(c.uuid for c in self.dbs.cells),
        )

    def _refused(self, state: PhaseState, target: Phase, reasons: list[str], force: bool) -> None:
        log.info(
            "phase_change_refused",
            phase=state.phase.value,
            target=target.value,
            epoch=state.epoch,
            force=force,
            reasons=reasons,
        )
        raise GuardRefused(target.value, reasons)

    def plan(self, target: Phase, *, force: bool = False, reason: str | None = None) -> list[Step]:
        """Evaluate the preconditions and return the steps that would make the change.

        The plan holds only for the epoch it saw: the record step refuses it once another
        change has been recorded.

        Raises:
            GuardRefused: as :meth:`check`.
        """
        t = self.check(target, force=force, reason=reason)
        steps = [Step(kind, describe(t), t) for kind, (describe, _run) in _STEPS.items()]
        return [step for step in steps if step.detail]

    def dry_run(
        self, target: Phase, *, force: bool = False, reason: str | None = None
    ) -> list[str]:
        """Return the steps of the change as text, one line each, changing nothing.

        Raises:
            GuardRefused: as :meth:`check`: a dry run refuses what a real run refuses.
        """
        return [str(step) for step in self.plan(target, force=force, reason=reason)]

    # ------------------------------------------------------------------ running

    def run(self, target: Phase, *, force: bool = False, reason: str | None = None) -> Switched:
        """Plan the change to ``target`` and execute it.

        Raises:
            GuardRefused: the move is not allowed, a guard failed without ``force``, or
                another change was recorded since the guards ran.
        """
        return self.execute(self.plan(target, force=force, reason=reason))

    def execute(self, steps: Sequence[Step]) -> Switched:
        """Execute the steps of a plan from :meth:`plan`, in order.

        Raises:
            GuardRefused: another change was recorded since the plan was made.
        """
        if not steps:
            raise ValueError("empty plan")
        transition = steps[0].transition
        outcome = _Outcome()
        for step in steps:
            if step.transition != transition:
                raise ValueError("steps from different plans")
            _STEPS[step.kind][1](self, transition, outcome)
        if outcome.changed_at is None:
            raise ValueError("a plan without a record step")
        return Switched(
            transition, transition.new_epoch, outcome.changed_at, tuple(steps), outcome.catch_up
        )

    def _record(self, t: Transition) -> dt.datetime:
        now = utcnow()
        with contextlib.ExitStack() as stack:
            held: list[tuple[Cell, Connection, PhaseState | None]] = []
            cells = self.dbs.refresh_cells()
            for cell in cells:
                # Refused before anything is written: a change needs every cell's fence.
                conn = stack.enter_context(transaction(cell.engine, cell.label))
                with database_errors(cell.label):
                    held.append((cell, conn, read_cell_state(conn, for_update=True)))
            aconn = stack.enter_context(transaction(self.dbs.api, self.dbs.api_label))
            with database_errors(self.dbs.api_label):
                state = read_state(aconn, for_update=True)
            if self._hook is not None:
                self._hook("locked")
            problems = self._locked_refusals(t, state, cells, aconn, held)
            if problems:
                self._refused(state, t.to_phase, problems, t.forced)
            with database_errors(self.dbs.api_label):
                self._write_api(aconn, t, now)
            # Prepare every cell, committed, while the API row stays locked: from here a
            # writer of a cell learns the outcome from the API row (fence.settle_cell).
            for cell, conn, _found in held:
                with database_errors(cell.label):
                    prepare_cell(conn, t.new_epoch)
                commit(conn, cell.label)  # a cell lost here: nothing is changed
            if self._hook is not None:
                self._hook("prepared")
            # The commit point: from here on the change is made.
            commit(aconn, self.dbs.api_label)
        for cell in cells:
            try:
                settle_cell(self.dbs, cell)
            except (ShadowDBError, sa.exc.DBAPIError) as err:
                # The cell stays prepared; the next phase set, status or writer settles it.
                log.warning("phase_cell_deferred", cell=cell.name, error=one_line(err))
        return now

    def _write_api(self, aconn: Connection, t: Transition, now: dt.datetime) -> None:
        updated = aconn.execute(
            api_state.update()
            .where(api_state.c.id == 1, api_state.c.epoch == t.epoch)
            .values(phase=t.to_phase.value, epoch=t.new_epoch, changed_at=now)
        )
        # The row is locked and its epoch checked, so this is one row; a zero here means
        # the lock did not hold, and nothing must be written.
        if updated.rowcount != 1:
            raise OperationalError(f"{self.dbs.api_label}: phase row changed under its lock")
        aconn.execute(
            api_phase_history.insert().values(
                epoch=t.new_epoch,
                from_phase=t.from_phase.value,
                to_phase=t.to_phase.value,
                changed_at=now,
                actor=t.actor,
                reason=t.reason,
                forced=t.forced,
                overridden=_overridden_text(t.overridden),
            )
        )

    def _locked_refusals(
        self,
        t: Transition,
        state: PhaseState,
        cells: Sequence[Cell],
        aconn: Connection,
        held: Sequence[tuple[Cell, Connection, PhaseState | None]],
    ) -> list[str]:
        if state.epoch != t.epoch or state.phase is not t.from_phase:
            # Another `phase set` won the race: its change was recorded after our guards
            # ran, so our verdict describes a phase that is no longer current.
            return [
                f"phase changed while the guards ran: expected {t.from_phase.value} at "
                f"epoch {t.epoch}, found {state.phase.value} at epoch {state.epoch}; "
                "run again to re-check"
            ]
        problems: list[str] = []
        if tuple(c.uuid for c in cells) != t.cells:
            problems.append("the registered cells changed while the guards ran; run again")
        for cell, _conn, found in held:
            if not settled_at(found, state.epoch):
                problems.append(
                    f"{cell.label} is at {describe_row(found)}, not {state.epoch}: "
                    "a change is half done; "
                    "run `shadowdb status` to settle it"
                )
        if problems:
            return problems
        conns = [(cell, conn) for cell, conn, _found in held]
        failures: list[str] = []
        with database_errors(self.dbs.api_label):
            for guard in self.guards.get((t.from_phase, t.to_phase), ()):
                if isinstance(guard, LockedGuard):
                    failures.extend(guard.check_locked(aconn, conns))
        if failures and t.forced:
            log.info("phase_guard_overridden_locked", reasons=failures)
            return []
        return failures

    def _catch_up(self, t: Transition) -> tuple[str, ...]:
        """Replay the API journal onto the cells after leaving ``api-only``.

        Not needed for safety (``dual-write-api-reads`` reads the API database first and
        never serves a tombstoned group from a cell; every write levels its group), but
        it brings the cells level at once. What it cannot replay stays journaled for
        ``backfill``, which drains the journals first.
        """
        result = drain_journals(self.dbs)
        log.info(
            "phase_catch_up",
            to_phase=t.to_phase.value,
            found=result.found,
            done=result.done,
            conflicts=len(result.conflicts),
            errors=len(result.errors),
        )
        left = [f"journal conflict: {uuid}" for uuid in result.conflicts]
        left.extend(result.errors)
        return tuple(left)

    def _announce(self, t: Transition) -> None:
        self.dbs.phases.invalidate()
        log.info(
            "phase_changed",
            from_phase=t.from_phase.value,
            to_phase=t.to_phase.value,
            epoch=t.new_epoch,
            forced=t.forced,
            overridden=list(t.overridden),
            reason=t.reason,
            actor=t.actor,
        )
        signals.send(
            signals.phase_changed,
            self.dbs,
            from_phase=t.from_phase.value,
            to_phase=t.to_phase.value,
            epoch=t.new_epoch,
            forced=t.forced,
            reason=t.reason,
            actor=t.actor,
        )


# --------------------------------------------------------------------------- the steps


@dataclasses.dataclass
class _Outcome:
    changed_at: dt.datetime | None = None
    catch_up: tuple[str, ...] = ()


def _describe_preconditions(t: Transition) -> str:
    guards = ", ".join(t.guards) if t.guards else "none"
    pre = f"{t.from_phase.value} -> {t.to_phase.value} allowed at epoch {t.epoch}; "
    if t.overridden:
        return pre + f"guards ({guards}) failed, overridden by force: " + "; ".join(t.overridden)
    return pre + f"guards passed: {guards}"


def _describe_record(t: Transition) -> str:
    return (
        f"lock shadowdb_state in {len(t.cells)} cell(s), then in the API database; require "
        f"epoch {t.epoch} everywhere and the exact journal guards; set phase "
        f"{t.to_phase.value} at epoch {t.new_epoch} in every database, append history "
        f"(actor {t.actor}, reason {t.reason or '-'}, forced {'yes' if t.forced else 'no'}); "
        "commit the API database first, then the cells"
    )


def _describe_announce(t: Transition) -> str:
    return "log phase_changed, send phase-changed, drop this process's cached phase"


def _describe_catch_up(t: Transition) -> str:
    return _CATCH_UP.get((t.from_phase, t.to_phase), "")


def _run_preconditions(switcher: Switcher, t: Transition, outcome: _Outcome) -> None:
    """Evaluated when the plan was made; the record step enforces its epoch."""


def _run_record(switcher: Switcher, t: Transition, outcome: _Outcome) -> None:
    outcome.changed_at = switcher._record(t)


def _run_announce(switcher: Switcher, t: Transition, outcome: _Outcome) -> None:
    switcher._announce(t)


def _run_catch_up(switcher: Switcher, t: Transition, outcome: _Outcome) -> None:
    outcome.catch_up = switcher._catch_up(t)


#: Each step's description and action, side by side, in the order they run (a step
#: whose description is empty for a move is not part of its plan).
_STEPS: dict[
    StepKind,
    tuple[Callable[[Transition], str], Callable[[Switcher, Transition, _Outcome], None]],
] = {
    StepKind.PRECONDITIONS: (_describe_preconditions, _run_preconditions),
    StepKind.RECORD: (_describe_record, _run_record),
    StepKind.ANNOUNCE: (_describe_announce, _run_announce),
    StepKind.CATCH_UP: (_describe_catch_up, _run_catch_up),
}
