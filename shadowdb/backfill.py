"""Copy legacy cell groups into the API database while the cloud keeps writing.

The online data migration, with ``nova-manage db online_data_migrations`` semantics: a
fixed list of migrations, each ``(count) -> (found, done)``, run in batches that share a
``max_count`` budget (:func:`backfill`).

Safety with live traffic
========================

The backfill runs only in the dual-write phases, each batch fenced by the phase row of
the cell it copies from (:mod:`shadowdb.fence`): once a cell holds a dual-write phase,
every live write to its groups also levels the API copy, so a group the backfill has
copied stays level, and the backfill only has to copy groups the API database lacks.

Copying takes the same per-group lock as the writers: the batch's cell rows are locked
(``SELECT ... FOR UPDATE``, in id order) before anything is read for the copy, then the
API transaction pins the phase (the writers' epoch barrier) and inserts. Therefore:

* **no resurrection**: a group deleted before the lock is not selected (only live rows
  are locked); one deleted after waits for our commit and is then deleted from both. A
  group with a pending API-side journal entry (a write the cell copy has not seen yet,
  a delete for instance) is left to the journal replay instead of being copied;
* **no stale overwrite**: an API copy is never overwritten. A copy that appeared since the
  scan (a writer levelled it) counts as done; conflicts (a uuid live in two cells) are
  recorded in ``shadowdb_backfill_conflicts``, reported, and retried on every run;
* **nothing lost**: the copy is the cell's committed state under the lock, and nothing is
  deleted: the cell copy is what makes rollback possible (``shadowdb cleanup`` later).

Resumable and parallel
======================

The id range of each cell's ``instance_groups`` is cut into chunks recorded in
``shadowdb_backfill_chunks``. A process claims a chunk by locking its row
(``FOR UPDATE SKIP LOCKED`` on MariaDB/MySQL and PostgreSQL) for the length of one batch,
copies, then moves the chunk's ``next_id`` checkpoint and releases it. A killed process
releases its claim with its connection; a re-run rescans from the checkpoint and skips
the groups already in the API database. Several processes split the chunks between them.
SQLite has a single writer: there the chunk is claimed without a lock.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb import signals, urls
from shadowdb.databases import Cell, Databases, reader, writer
from shadowdb.errors import DatabaseUnreachable, GuardRefused, InvalidInput, ShadowDBError
from shadowdb.fence import CellBehind, EpochChanged, settle
from shadowdb.models import api_backfill_chunks, api_backfill_conflicts, api_state
from shadowdb.phase import Phase, PhaseState, read_cell_state, read_state, utcnow
from shadowdb.queries import API, CELL, GroupRecord
from shadowdb.sync import (
    api_transaction,
    cell_transaction,
    commit,
    copy_group,
    default_cell,
    drain_journals,
    locate,
    one_line,
    transaction,
)

__all__ = [
    "DEFAULT_BATCH",
    "BackfillResult",
    "Backfiller",
    "Conflict",
    "MigrationTotal",
    "Step",
    "backfill",
]

log = structlog.get_logger(__name__)

#: Nova's batch size when no ``--max-count`` is given.
DEFAULT_BATCH = 50
#: Group ids per claimable chunk.
CHUNK_IDS = 1000

_FORWARD_PHASES = (Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS)
_REVERSE_PHASES = (Phase.API_ONLY, Phase.DUAL_WRITE_API_READS)


@dataclasses.dataclass(frozen=True)
class Step:
    """What one call of one migration did (partial progress survives an error)."""

    found: int
    done: int
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class MigrationTotal:
    """One row of the summary table: totals across every batch of a run."""

    migration: str
    found: int
    done: int


@dataclasses.dataclass(frozen=True)
class Conflict:
    """A group the backfill refused to copy, and why."""

    group_uuid: str
    cell: str
    kind: str
    detail: str


@dataclasses.dataclass(frozen=True)
class BackfillResult:
    """What a backfill run did, and how it should end.

    ``outcome`` follows ``nova-manage``: ``"done"`` (nothing left that can be done),
    ``"more"`` (``max_count`` was given and the batch completed something: run again) or
    ``"error"`` (a migration raised, and the run was unlimited or nothing else
    progressed); beyond Nova, ``"stuck"`` when records were found that cannot be migrated.
    """

    totals: tuple[MigrationTotal, ...]
    batches: int
    errors: tuple[str, ...]
    conflicts: tuple[Conflict, ...]
    stuck: tuple[str, ...]
    outcome: str
    max_count: int | None


Migration = Callable[[int], Step]


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
    """Run the backfill's migrations on one deployment (optionally one cell)."""

    def __init__(
        self,
        dbs: Databases,
        *,
        cell: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        max_rate: float | None = None,
        reverse: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput("--batch-size must be a whole number >= 1")
        if max_rate is not None and max_rate <= 0:
            raise InvalidInput("--max-rate must be a number > 0")
        self.dbs = dbs
        self.cells: tuple[Cell, ...] = (dbs.cell(cell),) if cell else dbs.cells
        self.batch_size = batch_size
        self.max_rate = max_rate
        self.reverse = reverse
        self._sleep = sleep
        self._planned = False
        self._down: dict[str, str] = {}
        self._conflicts: dict[tuple[str, str], Conflict] = {}
        self._reverse_after: dict[str, int] = {}
        self._rate_started = time.monotonic()
        self._rate_rows = 0

    # ------------------------------------------------------------------ the list

    @property
    def migrations(self) -> tuple[tuple[str, Migration], ...]:
        """The migrations of this run, in the order they run (the budget is shared)."""
        if self.reverse:
            return (
                ("reverse_instance_groups", self.reverse_instance_groups),
                ("drain_journals", self.drain),
            )
        return (
            ("migrate_instance_groups", self.migrate_instance_groups),
            ("drain_journals", self.drain),
        )

    @property
    def conflicts(self) -> tuple[Conflict, ...]:
        """Conflicts seen by this backfiller, in the order found."""
        return tuple(self._conflicts.values())

    def remaining(self) -> int:
        """Count exactly what is left to copy (for a progress bar's total).

        Forward: live cell groups the API database lacks. Reverse: groups whose cell copy
        differs from the API copy, plus live cell groups the API database no longer has.
        """
        if self.reverse:
            probe = Backfiller(self.dbs, reverse=True)
            return len(probe._reverse_candidates(10**12))
        total = 0
        g = CELL.groups
        for cell in self.cells:
            after = 0
            while True:
                with reader(cell.engine, cell.label) as conn:
                    rows = conn.execute(
                        sa.select(g.c.id, g.c.uuid)
                        .where(g.c.deleted == 0, g.c.id > after)
                        .order_by(g.c.id)
                        .limit(1000)
                    ).all()
                if not rows:
                    break
                after = rows[-1].id
                with reader(self.dbs.api, self.dbs.api_label) as conn:
                    have = API.present(conn, [r.uuid for r in rows])
                total += sum(1 for r in rows if r.uuid not in have)
        return total

    # ------------------------------------------------------------------ preconditions

    def check_phase(self) -> PhaseState:
        """Refuse to run outside the phases where the copy is safe; settle lagging cells.

        Raises:
            GuardRefused: wrong phase for this direction.
        """
        # Finish a half-done phase change where it can be; a cell that still lags (or is
        # out of reach) refuses its own batches: each copy is fenced by the cell's row.
        state, _problems = settle(self.dbs, self.cells)
        allowed = _REVERSE_PHASES if self.reverse else _FORWARD_PHASES
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
            state = dataclasses.replace(state, cells_retired=False)
            log.info("cells_unretired")
        return state

    # ------------------------------------------------------------------ chunks

    def _plan(self) -> None:
        """Record chunks covering every cell's group ids up to the current maximum."""
        if self._planned:
            return
        c = api_backfill_chunks
        for cell in self.cells:
            try:
                with reader(cell.engine, cell.label) as conn:
                    top = conn.execute(sa.select(sa.func.max(CELL.groups.c.id))).scalar() or 0
            except DatabaseUnreachable as err:
                # The other cells go on; this one is reported, never skipped silently.
                self._cell_down(cell, err)
                continue
            with writer(self.dbs.api, self.dbs.api_label) as conn:
                covered = (
                    conn.execute(
                        sa.select(sa.func.max(c.c.end_id)).where(c.c.cell_uuid == cell.uuid)
                    ).scalar()
                    or 0
                )
                rows = [
                    {
                        "cell_uuid": cell.uuid,
                        "start_id": start,
                        "end_id": start + CHUNK_IDS - 1,
                        "next_id": start,
                        "done": False,
                        "updated_at": utcnow(),
                    }
                    for start in range(covered + 1, top + 1, CHUNK_IDS)
                ]
                if rows:
                    try:
                        with conn.begin_nested():
                            conn.execute(c.insert(), rows)
                    except sa.exc.IntegrityError:
                        # Another backfill planned the same chunks first: theirs stand.
                        pass
        self._planned = True

    def _cell_down(self, cell: Cell, err: BaseException) -> None:
        if cell.uuid not in self._down:
            self._down[cell.uuid] = f"{cell.label}: {one_line(err)}"
            # Reported in the result (the CLI's one error line); the detail stays in the log.
            log.info("backfill_cell_unreachable", cell=cell.name, error=one_line(err))

    def _claim(self, conn: Connection) -> Any:
        """Lock and return one pending chunk of our cells, skipping those others hold."""
        c = api_backfill_chunks
        stmt = (
            sa.select(c.c.id, c.c.cell_uuid, c.c.start_id, c.c.end_id, c.c.next_id)
            .where(
                c.c.done.is_(False),
                c.c.cell_uuid.in_(
                    [cell.uuid for cell in self.cells if cell.uuid not in self._down]
                ),
            )
            .order_by(c.c.id)
            .limit(1)
        )
        if conn.dialect.name != "sqlite":
            stmt = stmt.with_for_update(skip_locked=True)
        return conn.execute(stmt).first()

    # ------------------------------------------------------------------ migrations

    def migrate_instance_groups(self, count: int) -> Step:
        """Copy up to ``count`` live cell groups the API database lacks (module docstring).

        A cell that cannot be reached is reported in the step's error while the others
        make progress.
        """
        found = done = 0
        try:
            self._plan()
            f, d = self._retry_conflicts(count)
            found, done = found + f, done + d
            while found < count:
                progressed = self._one_batch(count - found)
                if progressed is None:
                    break
                found, done = found + progressed[0], done + progressed[1]
                signals.send(
                    signals.backfill_progress,
                    self.dbs,
                    migration="migrate_instance_groups",
                    found=found,
                    done=done,
                    batch=count,
                )
        except (ShadowDBError, sa.exc.DBAPIError) as err:
            log.info("backfill_failed", migration="migrate_instance_groups", error=one_line(err))
            return Step(found, done, "; ".join([*self._down.values(), one_line(err)]))
        return Step(found, done, "; ".join(self._down.values()) or None)

    def _one_batch(self, budget: int) -> tuple[int, int] | None:
        """Claim a chunk, copy what its next rows lack, move its checkpoint.

        Returns ``(found, done)``, or ``None`` when no chunk is left.
        """
        api = self.dbs.api
        # On a server the claim is a row lock held for the batch; SQLite has one writer
        # and would block our own copy behind it, so there the claim is a plain read.
        locking = api.dialect.name != "sqlite"
        opened = (
            transaction(api, self.dbs.api_label) if locking else reader(api, self.dbs.api_label)
        )
        with opened as claim_conn:
            chunk = self._claim(claim_conn)
            if chunk is None:
                return None
            cell = next(c for c in self.cells if c.uuid == chunk.cell_uuid)
            g = CELL.groups
            with reader(cell.engine, cell.label) as conn:
                rows = conn.execute(
                    sa.select(g.c.id, g.c.uuid)
                    .where(g.c.deleted == 0, g.c.id >= chunk.next_id, g.c.id <= chunk.end_id)
                    .order_by(g.c.id)
                    .limit(min(self.batch_size, budget))
                ).all()
            found = done = 0
            if rows:
                signals.send(
                    signals.backfill_step, self.dbs, step="scanned", cell=cell.name, count=len(rows)
                )
                scanned_to = rows[-1].id
                found, done = self._copy(cell, [r.id for r in rows])
                if done:
                    signals.send(
                        signals.backfill_step, self.dbs, step="copied", cell=cell.name, count=done
                    )
            else:
                scanned_to = chunk.end_id
            finished = scanned_to >= chunk.end_id
            if locking:
                self._checkpoint(claim_conn, chunk.id, scanned_to + 1, done=finished)
                commit(claim_conn, self.dbs.api_label)
            else:
                with writer(api, self.dbs.api_label) as conn:
                    self._checkpoint(conn, chunk.id, scanned_to + 1, done=finished)
        signals.send(
            signals.backfill_step, self.dbs, step="checkpointed", cell=cell.name, count=done
        )
        self._pace(found)
        return found, done

    def _checkpoint(self, conn: Connection, chunk_id: int, next_id: int, *, done: bool) -> None:
        c = api_backfill_chunks
        conn.execute(
            c.update()
            .where(c.c.id == chunk_id)
            .values(next_id=next_id, done=done, updated_at=utcnow())
        )

    def _pace(self, rows: int) -> None:
        if self.max_rate is None or rows == 0:
            return
        self._rate_rows += rows
        due = self._rate_started + self._rate_rows / self.max_rate
        delay = due - time.monotonic()
        if delay > 0:
            self._sleep(delay)

    def _live_elsewhere(self, cell: Cell, uuids: Sequence[str]) -> dict[str, str]:
        """Return which of ``uuids`` are also live in another cell (uuid -> cell name)."""
        elsewhere: dict[str, str] = {}
        for other in self.dbs.cells:
            if other.uuid == cell.uuid or other.uuid in self._down:
                continue
            try:
                with reader(other.engine, other.label) as conn:
                    for uuid in CELL.present(conn, uuids):
                        elsewhere.setdefault(uuid, other.name)
            except DatabaseUnreachable as err:
                # Reported as this run's error: a twin there cannot be ruled out.
                self._cell_down(other, err)
        return elsewhere

    def _copy(self, cell: Cell, ids: Sequence[int]) -> tuple[int, int]:
        """Copy the live cell groups with these ids that the API database lacks.

        Under the groups' locks: a group whose API copy is level, or that has a pending
        journal entry on either side (the replay owns it), needs nothing. A group whose
        API copy differs outside a journal, or that is live in another cell too, is a
        conflict: reported and recorded, never overwritten. Returns ``(found, done)``:
        groups that needed work, and those copied.
        """
        api = self.dbs.api
        with transaction(cell.engine, cell.label) as cconn:
            fenced = read_cell_state(cconn, share=True)
            if fenced is None or fenced.phase not in _FORWARD_PHASES:
                at = "no phase" if fenced is None else fenced.phase.value
                raise GuardRefused(at, [f"{cell.label} is in {at}: the phase moved"])
            records = CELL.lock_many(cconn, ids)
            if not records:
                return 0, 0
            signals.send(
                signals.backfill_step, self.dbs, step="locked", cell=cell.name, count=len(records)
            )
            uuids = [r.uuid for r in records]
            twins = self._live_elsewhere(cell, uuids)
            cell_journaled = CELL.journaled(cconn, uuids)
            with transaction(api, self.dbs.api_label) as aconn:
                state = read_state(aconn, share=True)
                if state.phase not in _FORWARD_PHASES or state.epoch != fenced.epoch:
                    raise GuardRefused(
                        state.phase.value,
                        [f"the phase moved to {state.phase.value} (epoch {state.epoch})"],
                    )
                there = {r.uuid: r for r in API.get_many(aconn, uuids)}
                journaled = cell_journaled | API.journaled(aconn, uuids)
                buried = API.tombstoned(aconn, [u for u in uuids if u not in there])
                todo: list[GroupRecord] = []
                found = 0
                for record in records:
                    api_copy = there.get(record.uuid)
                    if record.uuid in journaled or (
                        api_copy is not None and api_copy.same_data(record)
                    ):
                        continue
                    found += 1
                    if api_copy is not None:
                        self._conflict(
                            aconn,
                            record.uuid,
                            cell,
                            "api-copy-differs",
                            "the API copy differs from the cell copy outside any journal",
                        )
                    elif record.uuid in buried:
                        # Deleted in the API database: never brought back by a copy.
                        self._conflict(
                            aconn,
                            record.uuid,
                            cell,
                            "deleted-in-api",
                            "the API database deleted this group (tombstone); the cell copy "
                            "is a leftover: retire it with diff-report --repair",
                        )
                    elif record.uuid in twins:
                        self._conflict(
                            aconn,
                            record.uuid,
                            cell,
                            "live-in-two-cells",
                            f"also live in cell {twins[record.uuid]}",
                        )
                    else:
                        todo.append(record)
                todo = self._insert_or_report(aconn, cell, todo)
                if todo:
                    # Both transactions open, the copies not yet committed: a crash here
                    # must leave neither the copies nor a moved checkpoint behind.
                    signals.send(
                        signals.backfill_step,
                        self.dbs,
                        step="copying",
                        cell=cell.name,
                        count=len(todo),
                    )
                commit(aconn, self.dbs.api_label)
            commit(cconn, cell.label)
        log.info("backfill_batch", cell=cell.name, found=found, done=len(todo))
        return found, len(todo)

    def _insert_or_report(
        self, aconn: Connection, cell: Cell, todo: list[GroupRecord]
    ) -> list[GroupRecord]:
        """Insert the batch; if the API database refuses a row, copy the others alone.

        A legacy value the API database cannot store (a character its charset lacks, a
        value too long, a constraint) is reported as a conflict of kind ``cannot-copy``
        with the database's reason, and never blocks the rest of its batch.
        """
        if not todo:
            return todo
        refused = (sa.exc.DataError, sa.exc.IntegrityError)
        try:
            with aconn.begin_nested():
                API.insert_many(aconn, todo)
            return todo
        except refused:
            pass
        copied: list[GroupRecord] = []
        for record in todo:
            try:
                with aconn.begin_nested():
                    API.insert_many(aconn, [record])
                copied.append(record)
            except refused as err:
                self._conflict(
                    aconn,
                    record.uuid,
                    cell,
                    "cannot-copy",
                    f"the API database refused the row: {one_line(err)}",
                )
        return copied

    def _conflict(
        self, conn: Connection, group_uuid: str, cell: Cell, kind: str, detail: str
    ) -> None:
        t = api_backfill_conflicts
        exists = conn.execute(
            sa.select(t.c.id).where(t.c.group_uuid == group_uuid, t.c.cell_uuid == cell.uuid)
        ).first()
        if exists is None:
            conn.execute(
                t.insert().values(
                    group_uuid=group_uuid,
                    cell_uuid=cell.uuid,
                    kind=kind,
                    detail=detail,
                    found_at=utcnow(),
                )
            )
        self._conflicts[(group_uuid, cell.name)] = Conflict(group_uuid, cell.name, kind, detail)
        signals.send(signals.divergence, self.dbs, group_uuid=group_uuid, kind=kind, detail=detail)
        log.warning("backfill_conflict", group_uuid=group_uuid, cell=cell.name, kind=kind)

    def _retry_conflicts(self, count: int) -> tuple[int, int]:
        """Re-examine recorded conflicts; copy those that have resolved."""
        t = api_backfill_conflicts
        with reader(self.dbs.api, self.dbs.api_label) as conn:
            rows = conn.execute(
                sa.select(t.c.id, t.c.group_uuid, t.c.cell_uuid, t.c.kind, t.c.detail)
                .where(t.c.cell_uuid.in_([c.uuid for c in self.cells]))
                .order_by(t.c.id)
                .limit(count)
            ).all()
        found = done = 0
        for row in rows:
            cell = next(c for c in self.cells if c.uuid == row.cell_uuid)
            with reader(cell.engine, cell.label) as conn:
                live = conn.execute(
                    sa.select(CELL.groups.c.id).where(
                        CELL.groups.c.uuid == row.group_uuid, CELL.groups.c.deleted == 0
                    )
                ).first()
            if live is not None:
                f, d = self._copy(cell, [live.id])
                found, done = found + f, done + d
                if f and not d:
                    continue  # still in conflict: keep it for the next run
            with writer(self.dbs.api, self.dbs.api_label) as conn:
                conn.execute(t.delete().where(t.c.id == row.id))
        return found, done

    def drain(self, count: int) -> Step:
        """Replay up to ``count`` groups' pending journal entries."""
        try:
            result = drain_journals(self.dbs, limit=count)
        except (ShadowDBError, sa.exc.DBAPIError) as err:
            return Step(0, 0, one_line(err))
        error = "; ".join(result.errors) or None
        for uuid in result.conflicts:
            self._conflicts[(uuid, "journal")] = Conflict(
                uuid, "journal", "journal-conflict", "journaled on both sides"
            )
        return Step(result.found, result.done, error)

    def reverse_instance_groups(self, count: int) -> Step:
        """Make cell copies equal to API copies (API -> cell), for leaving ``api-only``.

        Groups the API database no longer has are soft-deleted in the cells; groups it
        has are created in (or levelled on) the cell holding them, else the default cell.
        """
        found = done = 0
        try:
            # Fenced per batch, and per group under the locks: a phase moved back to
            # where the cells are authoritative stops the copy at once.
            state = self.dbs.phases.fresh()
            if state.phase not in _REVERSE_PHASES:
                raise GuardRefused(state.phase.value, [f"the phase moved to {state.phase.value}"])
            for uuid in self._reverse_candidates(count):
                found += 1
                if self._level_cell(uuid, state):
                    done += 1
        except (ShadowDBError, sa.exc.DBAPIError, EpochChanged, CellBehind) as err:
            return Step(found, done, one_line(err))
        return Step(found, done)

    def _reverse_candidates(self, count: int) -> list[str]:
        """Return up to ``count`` uuids whose cell copy differs from the API copy."""
        differing: list[str] = []
        g = API.groups
        after = self._reverse_after.get("api", 0)
        while len(differing) < count:
            with reader(self.dbs.api, self.dbs.api_label) as conn:
                rows = conn.execute(
                    sa.select(g.c.id, g.c.uuid).where(g.c.id > after).order_by(g.c.id).limit(500)
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
        self._reverse_after["api"] = after
        if len(differing) < count:
            differing.extend(self._cell_orphans(count - len(differing)))
        return differing

    def _cell_orphans(self, count: int) -> list[str]:
        """Return live cell groups the API database does not have (deleted there)."""
        orphans: list[str] = []
        for cell in self.cells:
            after = self._reverse_after.get(cell.uuid, 0)
            g = CELL.groups
            while len(orphans) < count:
                with reader(cell.engine, cell.label) as conn:
                    rows = conn.execute(
                        sa.select(g.c.id, g.c.uuid)
                        .where(g.c.deleted == 0, g.c.id > after)
                        .order_by(g.c.id)
                        .limit(500)
                    ).all()
                if not rows:
                    break
                with reader(self.dbs.api, self.dbs.api_label) as conn:
                    have = API.present(conn, [r.uuid for r in rows])
                for row in rows:
                    after = row.id
                    if row.uuid not in have:
                        orphans.append(row.uuid)
                        if len(orphans) >= count:
                            break
            self._reverse_after[cell.uuid] = after
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
                self._conflict(
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


def backfill(
    dbs: Databases,
    *,
    max_count: int | None = None,
    cell: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    max_rate: float | None = None,
    reverse: bool = False,
    on_batch: Callable[[str, Step], None] | None = None,
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
        dbs, cell=cell, batch_size=batch_size, max_rate=max_rate, reverse=reverse, sleep=sleep
    )
    backfiller.check_phase()
    if on_start is not None:
        on_start()
    totals: dict[str, list[int]] = {}
    errors: list[str] = []
    batches = 0
    last_steps: dict[str, Step] = {}
    while True:
        budget = max_count if max_count is not None else batch_size
        batches += 1
        ran = 0
        last_steps = {}
        for name, migration in backfiller.migrations:
            remaining = budget - ran
            if remaining <= 0:
                break
            try:
                step = migration(remaining)
            except Exception as err:  # a migration that raises must not stop the others
                step = Step(0, 0, one_line(err))
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
