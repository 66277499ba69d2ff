"""Run the backfill's migrations the way ``nova-manage db online_data_migrations`` does.

A fixed list of migrations, each ``(count) -> (found, done)``, run in batches that share
a ``max_count`` budget (:func:`backfill`); :func:`remaining` counts what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa
import structlog

from shadowdb import urls
from shadowdb.backfill.backlog import uncopied
from shadowdb.backfill.conflicts import ConflictStore
from shadowdb.backfill.forward import DEFAULT_BATCH, FORWARD_PHASES, ForwardCopier
from shadowdb.backfill.results import (
    BackfillResult,
    BatchStep,
    CopyConflict,
    Migration,
    MigrationTotal,
)
from shadowdb.backfill.reverse import REVERSE_PHASES, ReverseCopier
from shadowdb.databases import Cell, Databases, writer
from shadowdb.errors import GuardRefused, InvalidInput, ShadowDBError
from shadowdb.failures import one_line
from shadowdb.fence import settle
from shadowdb.journals import drain_journals
from shadowdb.models import api_state
from shadowdb.state import Phase, read_state

__all__ = ["Backfiller", "backfill", "remaining"]

log = structlog.get_logger(__name__)


def _wrong_phase(phase: Phase, reverse: bool) -> str:
    """Say which phases the backfill runs in, and what to run in ``phase`` instead."""
    if reverse:
        text = "backfill --reverse runs in api-only and dual-write-api-reads; "
        text += f"the phase is {phase.value}"
        if phase is Phase.DUAL_WRITE_CELL_READS:
            text += ": the cells are the authority, run `shadowdb backfill`"
        return text
    text = f"backfill runs in the dual-write phases; the phase is {phase.value}"
    if phase is Phase.API_ONLY:
        text += ": to copy the API groups back to the cells, run `shadowdb backfill --reverse`"
    elif phase is Phase.CELL_ONLY:
        text += ": run `shadowdb phase set dual-write-cell-reads` first"
    return text


class Backfiller:
    """The migrations of one run, in one direction, on some cells of one deployment.

    The run's own choices are its cells (every cell unless given) and its direction; the
    batch size, rate and sleep are passed on to the forward copy (the reverse copy has
    none).
    """

    def __init__(
        self,
        dbs: Databases,
        *,
        cells: Sequence[Cell] | None = None,
        reverse: bool = False,
        batch_size: int = DEFAULT_BATCH,
        max_rate: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.dbs = dbs
        self.cells: tuple[Cell, ...] = tuple(cells) if cells is not None else dbs.cells
        self.reverse = reverse
        self._conflicts = ConflictStore(dbs)
        self._forward = ForwardCopier(
            dbs,
            cells=self.cells,
            batch_size=batch_size,
            max_rate=max_rate,
            sleep=sleep,
            conflicts=self._conflicts,
        )
        self._reverse = ReverseCopier(dbs, cells=self.cells, conflicts=self._conflicts)

    @property
    def migrations(self) -> tuple[tuple[str, Migration], ...]:
        """The migrations of this run, in the order they run (the budget is shared)."""
        if self.reverse:
            return (
                ("reverse_instance_groups", self._reverse.reverse_instance_groups),
                ("drain_journals", self.drain),
            )
        return (
            ("migrate_instance_groups", self._forward.migrate_instance_groups),
            ("drain_journals", self.drain),
        )

    @property
    def conflicts(self) -> tuple[CopyConflict, ...]:
        """Conflicts seen by this run, in the order found."""
        return self._conflicts.seen

    def check_phase(self) -> None:
        """Refuse to run outside the phases where the copy is safe; settle lagging cells.

        Raises:
            GuardRefused: wrong phase for this direction.
        """
        # Finish a half-done phase change where it can be; a cell that still lags (or is
        # out of reach) refuses its own batches: each copy is fenced by the cell's row.
        state, _problems = settle(self.dbs, self.cells)
        allowed = REVERSE_PHASES if self.reverse else FORWARD_PHASES
        if state.phase not in allowed:
            raise GuardRefused(state.phase.value, [_wrong_phase(state.phase, self.reverse)])
        if self.reverse and state.phase is Phase.API_ONLY and state.cells_retired:
            # Rebuilding retired cells: api-only writers journal again from this commit
            # on, and this run's full pass copies whatever they wrote before it.
            with writer(self.dbs.api, self.dbs.api_label) as conn:
                read_state(conn, for_update=True)
                conn.execute(
                    api_state.update().where(api_state.c.id == 1).values(cells_retired=False)
                )
            log.info("cells_unretired")

    def drain(self, count: int) -> BatchStep:
        """Replay up to ``count`` groups' pending journal entries."""
        try:
            result = drain_journals(self.dbs, limit=count)
        except (ShadowDBError, sa.exc.DBAPIError) as err:
            return BatchStep(0, 0, one_line(err))
        error = "; ".join(result.errors) or None
        for uuid in result.conflicts:
            self._conflicts.note(
                CopyConflict(uuid, "journal", "journal-conflict", "journaled on both sides")
            )
        return BatchStep(result.found, result.done, error)


def _named_cells(dbs: Databases, cell: str | None) -> tuple[Cell, ...]:
    """Return the cell a run names (``--cell``), or every cell if it names none.

    Raises:
        InvalidInput: unknown cell.
    """
    return (dbs.cell(cell),) if cell else dbs.cells


def remaining(dbs: Databases, cell: str | None = None, *, reverse: bool = False) -> int:
    """Count exactly what is left to copy (for a progress bar's total).

    Forward: the live groups of ``cell`` (else of every cell) the API database lacks,
    tombstoned leftovers aside (:func:`~shadowdb.backfill.backlog.uncopied`). Reverse:
    groups whose cell copy differs from the API copy, plus live cell groups the API
    database no longer has, over every cell.

    Raises:
        InvalidInput: unknown cell.
        OperationalError: a database could not be read.
    """
    cells = _named_cells(dbs, cell)
    if reverse:
        # The reverse copy compares against every cell, whichever one the run names.
        return len(ReverseCopier(dbs).candidates(10**12))
    return sum(uncopied(dbs, c) for c in cells)


def backfill(
    dbs: Databases,
    *,
    max_count: int | None = None,
    cell: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    max_rate: float | None = None,
    reverse: bool = False,
    on_batch: Callable[[str, BatchStep], None] | None = None,
    on_start: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BackfillResult:
    """Run the backfill the way ``nova-manage db online_data_migrations`` runs migrations.

    With ``max_count``, one batch runs with that budget, shared by the migrations in
    order (each gets what the previous ones left; once spent, the rest are skipped).
    Without it, batches of ``batch_size`` run until one completes nothing. Totals add up
    across batches.

    Raises:
        InvalidInput: ``max_count`` or ``batch_size`` below 1, unknown cell.
        GuardRefused: the phase does not allow this direction.
    """
    if max_count is not None and max_count < 1:
        raise InvalidInput("--max-count must be a whole number >= 1")
    backfiller = Backfiller(
        dbs,
        cells=_named_cells(dbs, cell),
        reverse=reverse,
        batch_size=batch_size,
        max_rate=max_rate,
        sleep=sleep,
    )
    backfiller.check_phase()
    if on_start is not None:
        on_start()
    totals: dict[str, list[int]] = {}
    errors: list[str] = []
    batches = 0
    last_steps: dict[str, BatchStep] = {}
    while True:
        budget = max_count if max_count is not None else batch_size
        batches += 1
        ran = 0
        last_steps = {}
        for name, migration in backfiller.migrations:
            left = budget - ran
            if left <= 0:
                break
            try:
                step = migration(left)
            except Exception as err:  # a migration that raises must not stop the others
                step = BatchStep(0, 0, one_line(err))
            last_steps[name] = step
            total = totals.setdefault(name, [0, 0])
            total[0] += step.found
            total[1] += step.done
            if step.error:
                errors.append(f"{name}: {step.error}")
                log.info("migration_failed", migration=name, error=step.error)
            if on_batch is not None:
                on_batch(name, step)
            ran += step.done
        if max_count is not None or ran == 0:
            break
    stuck = tuple(name for name, step in last_steps.items() if step.found > 0 and step.done == 0)
    if errors and (max_count is None or ran == 0):
        outcome = "error"
    elif stuck:
        outcome = "stuck"
    elif max_count is not None and ran:
        outcome = "more"
    else:
        outcome = "done"
    result = BackfillResult(
        totals=tuple(
            MigrationTotal(name, found, done) for name, (found, done) in sorted(totals.items())
        ),
        batches=batches,
        errors=tuple(urls.mask_text(e) for e in errors),
        conflicts=backfiller.conflicts,
        stuck=stuck,
        outcome=outcome,
        max_count=max_count,
    )
    log.info(
        "backfill_finished",
        outcome=outcome,
        batches=batches,
        found=sum(t.found for t in result.totals),
        done=sum(t.done for t in result.totals),
    )
    return result
