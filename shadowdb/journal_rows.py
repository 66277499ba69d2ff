"""Read and write one side's journal: the groups whose other copy may lag this side's.

:class:`~shadowdb.queries.Side` delegates its ``journal_*`` methods and ``journaled``
here. Every method takes the :class:`~sqlalchemy.engine.Connection` it is given and never
commits or opens one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.bulk import chunks
from shadowdb.records import JournalEntry
from shadowdb.state import utcnow

__all__ = ["JournalRows"]


class JournalRows:
    """The statements on one side's journal table."""

    def __init__(self, journal: sa.Table) -> None:
        self.journal = journal
        uuids: sa.BindParameter[list[str]] = sa.bindparam("uuids", expanding=True)
        self._journaled = sa.select(journal.c.group_uuid).where(journal.c.group_uuid.in_(uuids))

    def journaled(self, conn: Connection, group_uuids: Sequence[str]) -> set[str]:
        """Return which of ``group_uuids`` have pending journal entries here.

        A journal holds only writes not yet replayed, and is near empty most of the time:
        when it has no more entries than there are uuids to check, it is read whole (one
        statement without a long ``IN`` list) and matched here.
        """
        wanted = set(group_uuids)
        if not wanted:
            return set()
        j = self.journal
        head = conn.execute(sa.select(j.c.group_uuid).limit(len(wanted) + 1)).scalars().all()
        if len(head) <= len(wanted):
            return wanted.intersection(head)
        found: set[str] = set()
        for chunk in chunks(sorted(wanted)):
            found.update(conn.execute(self._journaled, {"uuids": chunk}).scalars())
        return found

    def add(self, conn: Connection, group_uuid: str, epoch: int, error: str | None = None) -> int:
        """Record that ``group_uuid``'s other copy may lag this side's; return the row id."""
        result = conn.execute(
            self.journal.insert().values(
                group_uuid=group_uuid, created_at=utcnow(), epoch=epoch, error=error
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])

    def note(self, conn: Connection, entry_id: int, error: str) -> None:
        """Attach the error that kept an entry pending."""
        conn.execute(
            self.journal.update().where(self.journal.c.id == entry_id).values(error=error[:2000])
        )

    def clear(self, conn: Connection, group_uuid: str, entry_ids: Sequence[int]) -> int:
        """Delete exactly the entries ``entry_ids`` of ``group_uuid``; return how many.

        Never a range: an entry written by another writer meanwhile is not the caller's to
        clear, whatever its id.
        """
        if not entry_ids:
            return 0
        j = self.journal
        result = conn.execute(
            j.delete().where(j.c.group_uuid == group_uuid, j.c.id.in_(list(entry_ids)))
        )
        return int(result.rowcount or 0)

    def pending(self, conn: Connection, limit: int | None = None) -> list[JournalEntry]:
        """List pending entries, oldest first."""
        j = self.journal
        stmt = sa.select(j.c.id, j.c.group_uuid, j.c.created_at, j.c.epoch, j.c.error).order_by(
            j.c.id
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        return [JournalEntry(*row) for row in conn.execute(stmt)]

    def ids_for(self, conn: Connection, group_uuid: str) -> list[int]:
        """Return the ids of ``group_uuid``'s pending entries."""
        j = self.journal
        return [
            int(r[0])
            for r in conn.execute(
                sa.select(j.c.id).where(j.c.group_uuid == group_uuid).order_by(j.c.id)
            )
        ]

    def count(self, conn: Connection) -> int:
        """Count pending entries."""
        return int(conn.execute(sa.select(sa.func.count()).select_from(self.journal)).scalar_one())
