"""Move the deployment from one phase to the next, guarded, recorded and drained.

A phase change is a :class:`Switcher` run of four steps, always in this order:

1. **preconditions**: read the phase row fresh from the API database (never from a
   cache), check that the move is in :data:`TRANSITIONS` (forward only to the next phase,
   backward only to the previous one) and run every guard :data:`GUARDS` lists for it.
   Every failure reason is collected, none is dropped; ``force`` overrides failed guards
   (they are recorded as overridden) but never a move the table does not allow.
2. **record**: in one API transaction, lock the phase row (``SELECT ... FOR UPDATE``;
   ``BEGIN IMMEDIATE`` on SQLite), check that its epoch is still the one the
   preconditions saw, then write the new phase with ``epoch + 1`` and append a
   ``shadowdb_phase_history`` row (who, when, why, forced, which guard reasons were
   overridden). A writer that pins the phase row with a shared lock for its own
   transaction makes this step wait until that writer commits.
3. **announce**: drop this process's cached phase, send the ``phase-changed`` signal and
   log ``phase_changed``.
4. **drain wait**: sleep ``Settings.drain_wait`` seconds (phase TTL plus write grace)
   before returning.

:meth:`Switcher.plan` evaluates the preconditions and returns the steps;
:meth:`Switcher.dry_run` renders the same steps as text, one line each, in that fixed
order, and changes nothing (Vitess's ``switcher_dry_run``).

Why the epoch compare-and-swap
    Guards read the cells and the API database without holding the phase row: holding a
    lock across every cell would stall writers for the length of a scan. So two
    ``phase set`` runs may both pass their guards against the same epoch. The record step
    re-reads the row under its lock and refuses unless the epoch is still the one the
    guards were evaluated against; the loser must re-run and face the guards of the phase
    that is now current. Every recorded transition is therefore one the table allows from
    the phase it actually left, epochs increase by exactly one per change (the history's
    unique epoch makes that a database fact too), and a guard verdict is never applied to a
    phase it was not computed for.

Why the drain wait
    Every process reads the phase through :class:`~shadowdb.phase.PhaseStore`, whose cached
    answer is at most ``phase_ttl`` seconds old, timed from the moment its read *began*.
    A process whose read began before the record committed can go on starting writes of the
    old phase until at most ``phase_ttl`` after the commit, and each such write finishes
    within ``write_grace``. Waiting ``phase_ttl + write_grace`` after the commit therefore
    means that when ``phase set`` returns, no writer of the old phase is running or can
    start; whatever the operator does next (start a backfill after entering
    ``dual-write-cell-reads``, trust that the API is complete after entering
    ``api-only``) no longer races a ``cell-only`` or dual-write writer. This is the
    "wait out the phase cache before backfilling" rule of the design.

What guards do not promise
    A guard verdict is a snapshot. Writers of the current phase keep running while guards
    scan, so a journal may gain a row between the guard and the record; the journals are
    drained by backfill in the phase that follows, and a later guard (into ``api-only``)
    requires them empty again. :class:`CleanRecentDiff` explains why a clean diff-report
    stays valid until the move, writes since it included.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb import diff, signals
from shadowdb.databases import Cell, Databases, reader, writer
from shadowdb.errors import DatabaseUnreachable, GuardRefused, OperationalError
from shadowdb.models import (
    api_groups,
    api_journal,
    api_phase_history,
    api_state,
    cell_groups,
    cell_journal,
)
from shadowdb.phase import Phase, PhaseState, read_state, utcnow

__all__ = [
    "GUARDS",
    "TRANSITIONS",
    "ApiJournalEmpty",
    "CellJournalsEmpty",
    "CleanRecentDiff",
    "Guard",
    "ReverseSyncDone",
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

#: uuids per ``IN (...)`` list: under every backend's bind-parameter limit.
_BATCH = 500

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


def _settled(dbs: Databases, read: Callable[[], set[Any]]) -> set[Any]:
    """Return what ``read`` finds now and still finds ``write_grace`` seconds later.

    A guard scans while writers go on: a dual-write writer's journal entry (the outbox of
    ``dual-write-api-reads``) or a group whose second copy is about to commit can show for
    a few milliseconds. Whatever is still there once the longest write has had time to
    finish is real; what came and went was a write in flight.
    """
    first = read()
    if not first:
        return first
    time.sleep(dbs.settings.write_grace)
    return first & read()


class UnmigratedCellGroups:
    """Require every live cell group (``deleted = 0``) to have an API copy (same uuid)."""

    name = "unmigrated-cell-groups"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Count live cell groups, cell by cell, whose uuid the API database lacks."""
        reasons: list[str] = []
        missing: dict[str, int] = {}
        for cell in dbs.refresh_cells():
            try:
                count = self._count_missing(dbs, cell)
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

    @staticmethod
    def _count_missing(dbs: Databases, cell: Cell) -> int:
        missing = UnmigratedCellGroups._missing(dbs, cell, None)
        if missing:
            # Writes in flight (a destroy whose cell half has not committed yet) settle.
            time.sleep(dbs.settings.write_grace)
            missing &= UnmigratedCellGroups._missing(dbs, cell, missing)
        return len(missing)

    @staticmethod
    def _missing(dbs: Databases, cell: Cell, among: set[str] | None) -> set[str]:
        """Return the live cell groups' uuids (of ``among``, if given) the API lacks."""
        missing: set[str] = set()
        if among is not None:
            with reader(cell.engine, cell.label) as conn:
                live = set(
                    conn.scalars(
                        sa.select(cell_groups.c.uuid).where(
                            cell_groups.c.deleted == 0, cell_groups.c.uuid.in_(sorted(among))
                        )
                    )
                )
            with reader(dbs.api, dbs.api_label) as conn:
                found = set(
                    conn.scalars(
                        sa.select(api_groups.c.uuid).where(api_groups.c.uuid.in_(sorted(live)))
                    )
                )
            return live - found
        after = 0
        while True:
            # Keyset pages over the cell's primary key: no OFFSET, no long-held snapshot.
            with reader(cell.engine, cell.label) as conn:
                rows = conn.execute(
                    sa.select(cell_groups.c.id, cell_groups.c.uuid)
                    .where(cell_groups.c.deleted == 0, cell_groups.c.id > after)
                    .order_by(cell_groups.c.id)
                    .limit(_BATCH)
                ).all()
            if not rows:
                return missing
            after = rows[-1].id
            uuids = {row.uuid for row in rows}
            with reader(dbs.api, dbs.api_label) as conn:
                found = set(
                    conn.scalars(
                        sa.select(api_groups.c.uuid).where(api_groups.c.uuid.in_(sorted(uuids)))
                    )
                )
            missing |= uuids - found


class CellJournalsEmpty:
    """Require every cell's ``shadowdb_journal`` to be empty (API copies are level)."""

    name = "cell-journals-empty"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Count journal rows in each cell."""
        reasons = []
        for cell in dbs.refresh_cells():
            try:
                read = functools.partial(_journal_ids, cell.engine, cell.label, cell_journal)
                count = len(_settled(dbs, read))
            except OperationalError as err:
                reasons.append(_unreachable(cell, err))
                continue
            if count:
                reasons.append(
                    f"journal of {cell.label} holds {_entries(count)} (API copies lag); "
                    "run backfill"
                )
        return reasons


class ApiJournalEmpty:
    """Require the API database's ``shadowdb_journal`` to be empty (cell copies are level)."""

    name = "api-journal-empty"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Count journal rows in the API database."""
        # The outbox entry of a dual-write-api-reads write lives until its cell half
        # commits: only entries that outlast the longest write count.
        count = len(_settled(dbs, lambda: _journal_ids(dbs.api, dbs.api_label, api_journal)))
        if not count:
            return []
        return [f"API journal holds {_entries(count)} (cell copies lag); run backfill"]


class ReverseSyncDone:
    """Require every API group to have a live copy in some cell (reverse sync done)."""

    name = "reverse-sync"

    def check(self, dbs: Databases, state: PhaseState, target: Phase) -> list[str]:
        """Count API groups that no reachable cell holds live."""
        reasons: list[str] = []
        cells: list[Cell] = []
        # Probe every cell first, so an unreachable one fails the guard even when no batch
        # would have asked it anything (dual-write-api-reads writes to every cell again).
        for cell in dbs.refresh_cells():
            try:
                with reader(cell.engine, cell.label) as conn:
                    conn.execute(sa.select(sa.literal(1))).one()
            except OperationalError as err:
                reasons.append(_unreachable(cell, err))
            else:
                cells.append(cell)
        missing = 0
        after = 0
        while True:
            with reader(dbs.api, dbs.api_label) as conn:
                rows = conn.execute(
                    sa.select(api_groups.c.id, api_groups.c.uuid)
                    .where(api_groups.c.id > after)
                    .order_by(api_groups.c.id)
                    .limit(_BATCH)
                ).all()
            if not rows:
                break
            after = rows[-1].id
            left = {row.uuid for row in rows}
            for cell in list(cells):
                if not left:
                    break
                try:
                    with reader(cell.engine, cell.label) as conn:
                        left -= set(
                            conn.scalars(
                                sa.select(cell_groups.c.uuid).where(
                                    cell_groups.c.deleted == 0, cell_groups.c.uuid.in_(sorted(left))
                                )
                            )
                        )
                except OperationalError as err:
                    # Never count around a cell we could not read: say so and stop asking it.
                    reasons.append(_unreachable(cell, err))
                    cells.remove(cell)
            missing += len(left)
        if missing:
            where = "any cell" if len(reasons) == 0 else "any reachable cell"
            reasons.insert(
                0,
                f"{_plural(missing, 'API group')} without a live copy in {where}; "
                "run the reverse sync",
            )
        return reasons


class CleanRecentDiff:
    """Require a clean diff-report of every cell, recent, run in the current phase.

    The newest run recorded by :mod:`shadowdb.diff` admits the move when it

    1. completed, compared every cell (not one ``--cell``) and found no difference;
    2. started at most ``Settings.diff_max_age`` seconds ago;
    3. ran at the current epoch. A phase change since the run could have let writers
       that skip a database (``cell-only`` writers after a step back, ``api-only``
       writers) leave copies unequal without a trace, so any change voids the run.

    What about writes since the run, in the same phase? In a dual-write phase a write
    leaves the two copies unequal only when its second half fails, and then it records a
    journal entry in the transaction of its first half (:mod:`shadowdb.phases.base`).
    Every move this guard gates also runs the journal guards of the journals its source
    phase writes (``cell-journals-empty`` from ``dual-write-cell-reads``; both from
    ``dual-write-api-reads``; ``api-journal-empty`` from ``api-only``), so such an entry,
    while pending, refuses the move; once replayed, its copies are level again. Writes of
    ``api-only`` reach no cell and leave no journal: leaving it, the switcher's catch-up
    step levels the cells once more after the drain wait. This guard reads only the API
    database.
    """

    name = "clean-recent-diff"

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
        if last.outcome != "clean":
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(last.counts.items()))
            return [
                f"{when} found {_plural(last.differences, 'difference')} ({kinds}); "
                "repair them (diff-report --repair, then backfill) and run diff-report again"
            ]
        if last.scope != "all":
            return [f"{when} compared cell {last.scope} only; {run} for every cell"]
        reasons = []
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
    # The drain wait is what makes this safe: no cell-only writer survives it.
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
    (_A, _AR): (ReverseSyncDone(), ApiJournalEmpty(), CleanRecentDiff()),
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
    """

    from_phase: Phase
    to_phase: Phase
    epoch: int
    guards: tuple[str, ...]
    forced: bool
    overridden: tuple[str, ...]
    reason: str | None
    actor: str

    @property
    def new_epoch(self) -> int:
        """The epoch the change records."""
        return self.epoch + 1


class StepKind(enum.Enum):
    """The steps of a phase change, in the order they run."""

    PRECONDITIONS = "preconditions"
    RECORD = "record"
    ANNOUNCE = "announce"
    DRAIN_WAIT = "drain-wait"
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
    """A phase change that was recorded, announced and drained."""

    transition: Transition
    epoch: int
    changed_at: dt.datetime
    steps: tuple[Step, ...]


#: Moves after which the cell copies are levelled once more (see ``Switcher._catch_up``).
_CATCH_UP = {
    (Phase.API_ONLY, Phase.DUAL_WRITE_API_READS): (
        "copy what api-only wrote since the reverse sync to the cells (backfill --reverse)"
    ),
}


def _overridden_text(overridden: Sequence[str]) -> str | None:
    return "\n".join(overridden) if overridden else None


class Switcher:
    """Change the phase of one deployment through guarded, recorded, drained steps."""

    def __init__(
        self,
        dbs: Databases,
        *,
        guards: dict[tuple[Phase, Phase], tuple[Guard, ...]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Prepare a switcher.

        Args:
            dbs: the deployment.
            guards: the guards per move; :data:`GUARDS` unless given.
            sleep: what the drain wait calls with ``settings.drain_wait``.
        """
        self.dbs = dbs
        self.guards = GUARDS if guards is None else guards
        self._sleep = sleep

    # ------------------------------------------------------------------ planning

    def check(self, target: Phase, *, force: bool = False, reason: str | None = None) -> Transition:
        """Evaluate the preconditions of moving to ``target`` from the current phase.

        Raises:
            GuardRefused: the table does not allow the move (whatever ``force`` says), or
                a guard failed and ``force`` is false; ``.reasons`` lists every failure.
        """
        with reader(self.dbs.api, self.dbs.api_label) as conn:
            state = read_state(conn)
        refusal = transition_refusal(state.phase, target)
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
        settings = self.dbs.settings
        guards = ", ".join(t.guards) if t.guards else "none"
        pre = f"{t.from_phase.value} -> {t.to_phase.value} allowed at epoch {t.epoch}; "
        if t.overridden:
            pre += f"guards ({guards}) failed, overridden by force: " + "; ".join(t.overridden)
        else:
            pre += f"guards passed: {guards}"
        record = (
            f"in one API transaction lock shadowdb_state, require epoch {t.epoch}, "
            f"set phase {t.to_phase.value} at epoch {t.new_epoch}, append history "
            f"(actor {t.actor}, reason {t.reason or '-'}, forced {'yes' if t.forced else 'no'})"
        )
        announce = "invalidate the cached phase, send phase-changed, log phase_changed"
        drain = (
            f"wait {settings.drain_wait:g}s (phase TTL {settings.phase_ttl:g}s + write grace "
            f"{settings.write_grace:g}s) until no process writes as {t.from_phase.value}"
        )
        steps = [
            Step(StepKind.PRECONDITIONS, pre, t),
            Step(StepKind.RECORD, record, t),
            Step(StepKind.ANNOUNCE, announce, t),
            Step(StepKind.DRAIN_WAIT, drain, t),
        ]
        if (t.from_phase, t.to_phase) in _CATCH_UP:
            steps.append(Step(StepKind.CATCH_UP, _CATCH_UP[(t.from_phase, t.to_phase)], t))
        return steps

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
        changed_at: dt.datetime | None = None
        for step in steps:
            if step.transition != transition:
                raise ValueError("steps from different plans")
            if step.kind is StepKind.PRECONDITIONS:
                continue  # evaluated when the plan was made; the record step enforces its epoch
            if step.kind is StepKind.RECORD:
                changed_at = self._record(transition)
            elif step.kind is StepKind.ANNOUNCE:
                self._announce(transition)
            elif step.kind is StepKind.DRAIN_WAIT:
                self._sleep(self.dbs.settings.drain_wait)
            elif step.kind is StepKind.CATCH_UP:
                self._catch_up(transition)
        if changed_at is None:
            raise ValueError("a plan without a record step")
        return Switched(transition, transition.new_epoch, changed_at, tuple(steps))

    def _record(self, t: Transition) -> dt.datetime:
        now = utcnow()
        with writer(self.dbs.api, self.dbs.api_label) as conn:
            state = read_state(conn, for_update=True)
            if state.epoch != t.epoch or state.phase is not t.from_phase:
                # Another `phase set` won the race: its change was recorded after our guards
                # ran, so our verdict describes a phase that is no longer current.
                self._refused(
                    state,
                    t.to_phase,
                    [
                        f"phase changed while the guards ran: expected {t.from_phase.value} at "
                        f"epoch {t.epoch}, found {state.phase.value} at epoch {state.epoch}; "
                        "run again to re-check"
                    ],
                    t.forced,
                )
            updated = conn.execute(
                api_state.update()
                .where(api_state.c.id == 1, api_state.c.epoch == t.epoch)
                .values(phase=t.to_phase.value, epoch=t.new_epoch, changed_at=now)
            )
            # The row is locked and its epoch checked, so this is one row; a zero here means
            # the lock did not hold, and nothing must be written.
            if updated.rowcount != 1:
                raise OperationalError(f"{self.dbs.api_label}: phase row changed under its lock")
            conn.execute(
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
        return now

    def _catch_up(self, t: Transition) -> None:
        """Level the cell copies with what ``api-only`` wrote after the reverse sync.

        Writers of ``api-only`` never touch the cells: whatever they wrote between the
        operator's reverse backfill and the record step is on the API side only, with no
        journal entry. After the drain wait every writer dual-writes again, so one more
        reverse pass now leaves nothing behind.
        """
        from shadowdb.backfill import backfill

        result = backfill(self.dbs, reverse=True, sleep=self._sleep)
        log.info(
            "phase_catch_up",
            to_phase=t.to_phase.value,
            outcome=result.outcome,
            done=sum(total.done for total in result.totals),
        )
        if result.outcome != "done":
            raise OperationalError(
                f"the phase is {t.to_phase.value}, but levelling the cell copies did not "
                f"finish ({'; '.join(result.errors) or result.outcome}): "
                "run `shadowdb backfill --reverse`"
            )

    def _announce(self, t: Transition) -> None:
        # This process must not serve the old phase from its own cache for another TTL.
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
        try:
            signals.phase_changed.send(
                self.dbs,
                from_phase=t.from_phase.value,
                to_phase=t.to_phase.value,
                epoch=t.new_epoch,
                forced=t.forced,
                reason=t.reason,
                actor=t.actor,
            )
        except Exception:
            # Signals observe, never control: the change is recorded and the drain wait
            # must still happen, whatever a receiver does.
            log.exception("phase_changed_receiver_failed", epoch=t.new_epoch)
