"""Move the deployment from one phase to the next: guarded, fenced, recorded.

A phase change is a :class:`Switcher` run of the steps in :data:`STEPS`, always in this
order. Each :class:`SwitchStep` holds its description and its action side by side; a
plan is that list bound to one :class:`Transition`, and the dry run prints the very
plan the run executes, so the two cannot drift apart:

1. **preconditions**: finish any half-done change (:func:`shadowdb.fence.settle`),
   read the phase row fresh from the API database (never from a cache), check that the
   move is in the table (:data:`shadowdb.guards.GUARDS`: forward only to the next
   phase, backward only to the previous one) and run every guard it lists for the move.
   Every failure reason is collected, none is dropped; ``force`` overrides failed guards
   (they are recorded as overridden) but never a move the table does not allow.
2. **record** (the fence): open a transaction on every cell, in cell order, and lock its
   phase row exclusively; then lock the API database's. Every writer holds the row of
   each database it writes under a shared lock for its whole transaction, so these locks
   wait for the writers in flight and, once held, no write is in flight anywhere.
   Under them: require the epoch the guards saw, every cell settled at it and the same
   cells registered; run the guards whose verdict must be exact (the journals,
   :meth:`~shadowdb.guards.LockedGuard.check_locked`); write the new phase and
   ``epoch + 1`` and a ``shadowdb_phase_history`` row in the API database; *prepare*
   every cell (the new epoch in its row's ``next_epoch``) and commit it; then commit the
   API database: that is the commit point. Each cell then takes the new phase
   (``fence.settle_cell``). A cell that cannot be reached refuses the change before the
   commit point; one lost after it stays prepared and is settled by the next
   ``phase set``, ``status`` or writer, which ask the API row (:mod:`shadowdb.fence`).
3. **announce** (after the commit; a receiver cannot change the outcome): drop this
   process's cached phase, log ``phase_changed``, send the ``phase-changed`` signal.
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
    unless the epoch is still the one the guards saw. Why the guards outside the lock
    are enough is argued in :mod:`shadowdb.guards`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
from collections.abc import Callable, Sequence
from typing import NoReturn

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb import bookkeeping, signals
from shadowdb.databases import Cell, Databases, database_errors
from shadowdb.errors import GuardRefused, OperationalError, ShadowDBError
from shadowdb.failures import one_line
from shadowdb.fence import describe_row, prepare_cell, settle, settle_cell, settled_at
from shadowdb.guards import GUARDS, Guard, LockedGuard, transition_refusal
from shadowdb.journals import drain_journals
from shadowdb.state import Phase, PhaseState, read_cell_state, read_state, utcnow
from shadowdb.transactions import commit, transaction

__all__ = ["STEPS", "PlannedStep", "StepKind", "SwitchStep", "Switched", "Switcher", "Transition"]

log = structlog.get_logger(__name__)


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

    def announced(self) -> dict[str, object]:
        """Name the change as the ``phase-changed`` signal does: its keyword arguments."""
        return {
            "from_phase": self.from_phase.value,
            "to_phase": self.to_phase.value,
            "epoch": self.new_epoch,
            "forced": self.forced,
            "reason": self.reason,
            "actor": self.actor,
        }


class StepKind(enum.Enum):
    """The steps of a phase change, in the order they run."""

    PRECONDITIONS = "preconditions"
    RECORD = "record"
    ANNOUNCE = "announce"
    CATCH_UP = "catch-up"


@dataclasses.dataclass
class _Outcome:
    """What the steps of one run have done so far."""

    changed_at: dt.datetime | None = None
    catch_up: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SwitchStep:
    """One step of every phase change: what it does, in words and in code, side by side.

    Attributes:
        kind: which step.
        describe: the step's one-line description for a transition (the dry run's text).
        run: the step's action; it records what it did in the run's outcome.
        applies: whether the step is part of a transition's plan at all.
    """

    kind: StepKind
    describe: Callable[[Switcher, Transition], str]
    run: Callable[[Switcher, Transition, _Outcome], None]
    applies: Callable[[Transition], bool] = lambda _t: True


@dataclasses.dataclass(frozen=True)
class PlannedStep:
    """One step of a planned phase change, bound to its transition."""

    step: SwitchStep = dataclasses.field(repr=False)
    transition: Transition = dataclasses.field(repr=False)
    #: The step's description for this transition, fixed when the plan was made.
    detail: str

    @property
    def kind(self) -> StepKind:
        """Which step this is."""
        return self.step.kind

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Switched:
    """A phase change that was recorded and announced."""

    transition: Transition
    epoch: int
    changed_at: dt.datetime
    steps: tuple[PlannedStep, ...]
    #: What the catch-up left for ``backfill`` (one line each), if it ran.
    catch_up: tuple[str, ...] = ()


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
                step, before anything is written, and with ``"prepared"`` once every
                cell is prepared, before the commit point (tests interleave there).
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

    def _refused(
        self, state: PhaseState, target: Phase, reasons: list[str], force: bool
    ) -> NoReturn:
        log.info(
            "phase_change_refused",
            phase=state.phase.value,
            target=target.value,
            epoch=state.epoch,
            force=force,
            reasons=reasons,
        )
        raise GuardRefused(target.value, reasons)

    def plan(
        self, target: Phase, *, force: bool = False, reason: str | None = None
    ) -> list[PlannedStep]:
        """Evaluate the preconditions and return the steps that would make the change.

        The plan holds only for the epoch it saw: the record step refuses it once another
        change has been recorded.

        Raises:
            GuardRefused: as :meth:`check`.
        """
        t = self.check(target, force=force, reason=reason)
        return [PlannedStep(step, t, step.describe(self, t)) for step in STEPS if step.applies(t)]

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

    def execute(self, steps: Sequence[PlannedStep]) -> Switched:
        """Execute the steps of a plan from :meth:`plan`, in order.

        Raises:
            GuardRefused: another change was recorded since the plan was made.
        """
        if not steps:
            raise ValueError("empty plan")
        transition = steps[0].transition
        outcome = _Outcome()
        for planned in steps:
            if planned.transition != transition:
                raise ValueError("steps from different plans")
            planned.step.run(self, transition, outcome)
        if outcome.changed_at is None:
            raise ValueError("a plan without a record step")
        return Switched(
            transition, transition.new_epoch, outcome.changed_at, tuple(steps), outcome.catch_up
        )

    def _locked_guards(self, t: Transition) -> list[LockedGuard]:
        """Return the guards of ``t``'s move that the record step runs again, exactly."""
        guards = self.guards.get((t.from_phase, t.to_phase), ())
        return [guard for guard in guards if isinstance(guard, LockedGuard)]

    def _record(self, t: Transition) -> dt.datetime:
        now = utcnow()
        with contextlib.ExitStack() as stack:
            held: list[tuple[Cell, Connection, PhaseState | None]] = []
            cells = self.dbs.refresh_cells()
            for cell in cells:
                # Refused before anything is written: a change needs every cell's fence.
                conn = stack.enter_context(transaction(cell.engine, cell.label))
                with database_errors(cell.label):
                    held.append(
                        (cell, conn, read_cell_state(conn, for_update=True, label=cell.label))
                    )
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
        written = bookkeeping.write_phase(
            aconn,
            expected_epoch=t.epoch,
            phase=t.to_phase.value,
            epoch=t.new_epoch,
            changed_at=now,
        )
        # The row is locked and its epoch checked, so this is one row; a zero here means
        # the lock did not hold, and nothing must be written.
        if not written:
            raise OperationalError(f"{self.dbs.api_label}: phase row changed under its lock")
        bookkeeping.append_phase_history(
            aconn,
            bookkeeping.HistoryEntry(
                epoch=t.new_epoch,
                from_phase=t.from_phase.value,
                to_phase=t.to_phase.value,
                changed_at=now,
                actor=t.actor,
                reason=t.reason,
                forced=t.forced,
                overridden=t.overridden,
            ),
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
            for guard in self._locked_guards(t):
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


# --------------------------------------------------------------------------- the steps
#
# Each step's description and its action, side by side, then the list the plan, the dry
# run and the run all walk.


def _describe_preconditions(_switcher: Switcher, t: Transition) -> str:
    guards = ", ".join(t.guards) if t.guards else "none"
    pre = f"{t.from_phase.value} -> {t.to_phase.value} allowed at epoch {t.epoch}; "
    if t.overridden:
        return pre + f"guards ({guards}) failed, overridden by force: " + "; ".join(t.overridden)
    return pre + f"guards passed: {guards}"


def _run_preconditions(_switcher: Switcher, _t: Transition, _outcome: _Outcome) -> None:
    """Evaluated when the plan was made (:meth:`Switcher.check`); the record step
    enforces the epoch they saw."""


def _describe_record(switcher: Switcher, t: Transition) -> str:
    exact = ", ".join(g.name for g in switcher._locked_guards(t)) or "none"
    return (
        f"lock shadowdb_state in {len(t.cells)} cell(s), then in the API database; require "
        f"epoch {t.epoch} everywhere, the same cells and the exact guards ({exact}); "
        f"set phase {t.to_phase.value} at epoch {t.new_epoch} and append history "
        f"(actor {t.actor}, reason {t.reason or '-'}, forced {'yes' if t.forced else 'no'}) "
        f"in the API database; prepare every cell for epoch {t.new_epoch} and commit it, "
        "then commit the API database (the commit point); then every cell takes the new phase"
    )


def _run_record(switcher: Switcher, t: Transition, outcome: _Outcome) -> None:
    outcome.changed_at = switcher._record(t)


def _drop_cached_phase(switcher: Switcher, _t: Transition) -> None:
    switcher.dbs.phases.invalidate()


def _log_changed(_switcher: Switcher, t: Transition) -> None:
    # What the signal says, and which guard failures force overrode.
    log.info("phase_changed", **t.announced(), overridden=list(t.overridden))


def _send_changed(switcher: Switcher, t: Transition) -> None:
    signals.send(signals.phase_changed, switcher.dbs, **t.announced())


#: What the announce step does after the commit point, in order, each with its words.
#: The cache goes first, so a receiver of the signal in this process reads the new phase.
_ANNOUNCE: tuple[tuple[str, Callable[[Switcher, Transition], None]], ...] = (
    ("drop this process's cached phase", _drop_cached_phase),
    ("log phase_changed", _log_changed),
    ("send phase-changed", _send_changed),
)


def _describe_announce(_switcher: Switcher, _t: Transition) -> str:
    return ", ".join(words for words, _action in _ANNOUNCE)


def _run_announce(switcher: Switcher, t: Transition, _outcome: _Outcome) -> None:
    for _words, action in _ANNOUNCE:
        action(switcher, t)


#: Moves after which the cell copies are levelled (see ``Switcher._catch_up``).
_CATCH_UP = {
    (Phase.API_ONLY, Phase.DUAL_WRITE_API_READS): (
        "replay the API journal (one entry per group api-only wrote) onto the cells"
    ),
}


def _describe_catch_up(_switcher: Switcher, t: Transition) -> str:
    return _CATCH_UP[(t.from_phase, t.to_phase)]


def _run_catch_up(switcher: Switcher, t: Transition, outcome: _Outcome) -> None:
    outcome.catch_up = switcher._catch_up(t)


#: Every step of a phase change, in the order it runs; a step that does not apply to a
#: move is left out of its plan.
STEPS: tuple[SwitchStep, ...] = (
    SwitchStep(StepKind.PRECONDITIONS, _describe_preconditions, _run_preconditions),
    SwitchStep(StepKind.RECORD, _describe_record, _run_record),
    SwitchStep(StepKind.ANNOUNCE, _describe_announce, _run_announce),
    SwitchStep(
        StepKind.CATCH_UP,
        _describe_catch_up,
        _run_catch_up,
        applies=lambda t: (t.from_phase, t.to_phase) in _CATCH_UP,
    ),
)
