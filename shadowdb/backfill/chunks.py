"""Cut each cell's group ids into chunks, and claim one chunk at a time for a batch.

The id range of each cell's ``instance_groups`` is cut into chunks recorded in
``shadowdb_backfill_chunks``. A process claims a chunk by locking its row
(``FOR UPDATE SKIP LOCKED`` on MariaDB/MySQL and PostgreSQL) for the length of one batch,
copies, then moves the chunk's ``next_id`` checkpoint and releases it. A killed process
releases its claim with its connection; a re-run rescans from the checkpoint. Several
processes split the chunks between them. SQLite has a single writer: there the chunk is
claimed without a lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb import bookkeeping
from shadowdb.bookkeeping import Chunk
from shadowdb.databases import Cell, Databases, read_each, reader, writer
from shadowdb.errors import DatabaseUnreachable
from shadowdb.queries import CELL
from shadowdb.transactions import commit, transaction

__all__ = ["CHUNK_IDS", "Chunks", "Claim"]

#: Group ids per claimable chunk.
CHUNK_IDS = 1000


class Claim:
    """A chunk held for one batch, and the way to move its checkpoint before release."""

    def __init__(self, dbs: Databases, conn: Connection, chunk: Chunk, *, locked: bool) -> None:
        self.dbs = dbs
        self.chunk = chunk
        self._conn = conn
        self._locked = locked

    def checkpoint(self, next_id: int, *, done: bool) -> None:
        """Move the chunk's resume point and commit it (which releases a locked claim)."""
        if self._locked:
            bookkeeping.move_checkpoint(self._conn, self.chunk.id, next_id, done=done)
            commit(self._conn, self.dbs.api_label)
        else:
            with writer(self.dbs.api, self.dbs.api_label) as conn:
                bookkeeping.move_checkpoint(conn, self.chunk.id, next_id, done=done)


def _top_id(conn: Connection) -> int:
    """Return the cell's highest group id (0 if it holds none)."""
    return conn.execute(sa.select(sa.func.max(CELL.groups.c.id))).scalar() or 0


class Chunks:
    """Plan and claim the chunks of a run's cells."""

    def __init__(
        self,
        dbs: Databases,
        cells: Sequence[Cell],
        on_unreachable: Callable[[Cell, BaseException], None],
    ) -> None:
        self.dbs = dbs
        self.cells = tuple(cells)
        self._on_unreachable = on_unreachable
        self._planned = False

    def plan(self) -> None:
        """Record chunks covering every cell's group ids up to the current maximum (once)."""
        if self._planned:
            return
        # A cell out of reach is reported; the other cells go on.
        for cell, top in read_each(
            self.cells, _top_id, catch=DatabaseUnreachable, failed=self._on_unreachable
        ):
            with writer(self.dbs.api, self.dbs.api_label) as conn:
                covered = bookkeeping.chunks_covered_to(conn, cell.uuid)
                starts = range(covered + 1, top + 1, CHUNK_IDS)
                if starts:
                    try:
                        with conn.begin_nested():
                            bookkeeping.add_chunks(conn, cell.uuid, starts, CHUNK_IDS)
                    except sa.exc.IntegrityError:
                        # Another backfill planned the same chunks first: theirs stand.
                        pass
        self._planned = True

    @contextlib.contextmanager
    def claim(self, cells: Sequence[Cell]) -> Iterator[Claim | None]:
        """Hold one pending chunk of ``cells`` for the block, skipping those others hold.

        Yields ``None`` when no chunk is left. A block that raises releases the chunk
        with its checkpoint unmoved.
        """
        api = self.dbs.api
        # On a server the claim is a row lock held for the batch; SQLite has one writer
        # and would block our own copy behind it, so there the claim is a plain read.
        locking = api.dialect.name != "sqlite"
        opened = (
            transaction(api, self.dbs.api_label) if locking else reader(api, self.dbs.api_label)
        )
        with opened as conn:
            chunk = bookkeeping.claim_chunk(conn, [c.uuid for c in cells], lock=locking)
            yield None if chunk is None else Claim(self.dbs, conn, chunk, locked=locking)
