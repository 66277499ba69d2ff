"""Copy the live cell groups the API database lacks into it (cells -> API).

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

The batches walk the chunks of :mod:`shadowdb.backfill.chunks`, so a re-run after a crash
rescans from the checkpoint and skips the groups already in the API database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb import childmap, signals
from shadowdb.backfill.chunks import Chunks
from shadowdb.backfill.conflicts import ConflictStore
from shadowdb.backfill.pacing import Pacer
from shadowdb.backfill.results import BatchStep
from shadowdb.databases import Cell, Databases, reader
from shadowdb.errors import DatabaseUnreachable, GuardRefused, InvalidInput, ShadowDBError
from shadowdb.failures import one_line
from shadowdb.queries import API, CELL, GroupRecord
from shadowdb.state import Phase, read_cell_state, read_state
from shadowdb.transactions import commit, transaction

__all__ = ["DEFAULT_BATCH", "FORWARD_PHASES", "ForwardCopier"]

log = structlog.get_logger(__name__)

#: Nova's batch size when no ``--max-count`` is given.
DEFAULT_BATCH = 50

#: The phases the forward copy runs in.
FORWARD_PHASES = (Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS)


class ForwardCopier:
    """Run the ``migrate_instance_groups`` migration on some cells (all by default)."""

    def __init__(
        self,
        dbs: Databases,
        *,
        cells: Sequence[Cell] | None = None,
        batch_size: int = DEFAULT_BATCH,
        max_rate: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        conflicts: ConflictStore | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput("--batch-size must be a whole number >= 1")
        self.dbs = dbs
        self.cells: tuple[Cell, ...] = tuple(cells) if cells is not None else dbs.cells
        self.batch_size = batch_size
        self.conflicts = conflicts if conflicts is not None else ConflictStore(dbs)
        self.pacer = Pacer(max_rate, sleep=sleep)
        self._down: dict[str, str] = {}
        self.chunks = Chunks(dbs, self.cells, self._cell_down)

    def migrate_instance_groups(self, count: int) -> BatchStep:
        """Copy up to ``count`` live cell groups the API database lacks (module docstring).

        A cell that cannot be reached is reported in the step's error while the others
        make progress.
        """
        found = done = 0
        try:
            self.chunks.plan()
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
            return BatchStep(found, done, "; ".join([*self._down.values(), one_line(err)]))
        return BatchStep(found, done, "; ".join(self._down.values()) or None)

    def _cell_down(self, cell: Cell, err: BaseException) -> None:
        if cell.uuid not in self._down:
            self._down[cell.uuid] = f"{cell.label}: {one_line(err)}"
            # Reported in the result (the CLI's one error line); the detail stays in the log.
            log.info("backfill_cell_unreachable", cell=cell.name, error=one_line(err))

    def _one_batch(self, budget: int) -> tuple[int, int] | None:
        """Claim a chunk, copy what its next rows lack, move its checkpoint.

        Returns ``(found, done)``, or ``None`` when no chunk is left.
        """
        up = [c for c in self.cells if c.uuid not in self._down]
        with self.chunks.claim(up) as claim:
            if claim is None:
                return None
            chunk = claim.chunk
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
            claim.checkpoint(scanned_to + 1, done=scanned_to >= chunk.end_id)
        signals.send(
            signals.backfill_step, self.dbs, step="checkpointed", cell=cell.name, count=done
        )
        self.pacer.pace(found)
        return found, done

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
            if fenced is None or fenced.phase not in FORWARD_PHASES:
                at = "no phase" if fenced is None else fenced.phase.value
                raise GuardRefused(at, [f"{cell.label} is in {at}: the phase moved"])
            records = childmap.lock_many(cconn, ids, fenced.epoch)
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
                if state.phase not in FORWARD_PHASES or state.epoch != fenced.epoch:
                    raise GuardRefused(
                        state.phase.value,
                        [f"the phase moved to {state.phase.value} (epoch {state.epoch})"],
                    )
                there = {r.uuid: r for r in API.get_many(aconn, uuids)}
                records = childmap.exact(cconn, records, there)
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
                        self.conflicts.record(
                            aconn,
                            record.uuid,
                            cell,
                            "api-copy-differs",
                            "the API copy differs from the cell copy outside any journal",
                        )
                    elif record.uuid in buried:
                        # Deleted in the API database: never brought back by a copy.
                        self.conflicts.record(
                            aconn,
                            record.uuid,
                            cell,
                            "deleted-in-api",
                            "the API database deleted this group (tombstone); the cell copy "
                            "is a leftover: retire it with diff-report --repair",
                        )
                    elif record.uuid in twins:
                        self.conflicts.record(
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
                self.conflicts.record(
                    aconn,
                    record.uuid,
                    cell,
                    "cannot-copy",
                    f"the API database refused the row: {one_line(err)}",
                )
        return copied

    def _retry_conflicts(self, count: int) -> tuple[int, int]:
        """Re-examine recorded conflicts; copy those that have resolved."""
        found = done = 0
        for conflict in self.conflicts.recorded(self.cells, count):
            cell = next(c for c in self.cells if c.uuid == conflict.cell_uuid)
            with reader(cell.engine, cell.label) as conn:
                live = conn.execute(
                    sa.select(CELL.groups.c.id).where(
                        CELL.groups.c.uuid == conflict.group_uuid, CELL.groups.c.deleted == 0
                    )
                ).first()
            if live is not None:
                f, d = self._copy(cell, [live.id])
                found, done = found + f, done + d
                if f and not d:
                    continue  # still in conflict: keep it for the next run
            self.conflicts.resolved(conflict)
        return found, done
