"""The groups the backfill refuses to copy: recorded, reported, retried on every run."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy.engine import Connection

from shadowdb import bookkeeping, signals
from shadowdb.backfill.results import CopyConflict
from shadowdb.bookkeeping import RecordedConflict
from shadowdb.databases import Cell, Databases, reader, writer

__all__ = ["ConflictStore"]

log = structlog.get_logger(__name__)


class ConflictStore:
    """Record the conflicts of one run in ``shadowdb_backfill_conflicts`` and keep its list."""

    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs
        self._seen: dict[tuple[str, str], CopyConflict] = {}

    @property
    def seen(self) -> tuple[CopyConflict, ...]:
        """Conflicts seen in this run, in the order found."""
        return tuple(self._seen.values())

    def record(self, conn: Connection, group_uuid: str, cell: Cell, kind: str, detail: str) -> None:
        """Record a conflict on ``conn`` (the caller's API transaction) and report it."""
        bookkeeping.record_conflict(conn, group_uuid, cell.uuid, kind, detail)
        self._seen[(group_uuid, cell.name)] = CopyConflict(group_uuid, cell.name, kind, detail)
        signals.send(signals.divergence, self.dbs, group_uuid=group_uuid, kind=kind, detail=detail)
        log.warning("backfill_conflict", group_uuid=group_uuid, cell=cell.name, kind=kind)

    def note(self, conflict: CopyConflict) -> None:
        """Report a conflict recorded elsewhere (a group journaled on both sides)."""
        self._seen[(conflict.group_uuid, conflict.cell)] = conflict

    def recorded(self, cells: Sequence[Cell], limit: int) -> list[RecordedConflict]:
        """Return up to ``limit`` conflicts earlier runs recorded in these cells."""
        with reader(self.dbs.api, self.dbs.api_label) as conn:
            return bookkeeping.recorded_conflicts(conn, [c.uuid for c in cells], limit)

    def resolved(self, conflict: RecordedConflict) -> None:
        """Forget a recorded conflict that no longer holds."""
        with writer(self.dbs.api, self.dbs.api_label) as conn:
            bookkeeping.forget_conflict(conn, conflict.id)
