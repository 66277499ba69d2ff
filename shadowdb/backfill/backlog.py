"""Find the live cell groups the API database lacks: what the forward copy has left.

The one definition of the backlog, shared by the backfill, the switcher's
``unmigrated-cell-groups`` guard, ``shadowdb status`` and ``shadowdb cleanup``. A cell copy
of a group the API database deleted (its tombstone) is not backlog: it is a leftover
awaiting its replay (a destroy whose cell half failed), never a group left to copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.databases import Cell, Databases, reader
from shadowdb.queries import API, CELL

__all__ = ["LivePage", "live_pages", "uncopied", "uncopied_among"]

#: Cell groups read per keyset page.
PAGE = 500


def uncopied_among(conn: Connection, group_uuids: Sequence[str]) -> set[str]:
    """Return which of these live cell groups the API database (``conn``) neither holds nor
    tombstoned."""
    lacking = set(group_uuids) - API.present(conn, group_uuids)
    return lacking - API.tombstoned(conn, lacking) if lacking else lacking


@dataclasses.dataclass(frozen=True)
class LivePage:
    """One keyset page of a cell's live groups, and which of them the API database lacks."""

    #: ``(id, uuid)`` of each live group of the page, in id order.
    rows: tuple[tuple[int, str], ...]
    #: The uuids of the page the API database lacks.
    lacking: frozenset[str]


def live_pages(
    dbs: Databases,
    cell: Cell,
    *,
    after: int = 0,
    include_tombstoned: bool = False,
    skip_journaled: bool = False,
) -> Iterator[LivePage]:
    """Page through the live groups of ``cell`` with ids above ``after``.

    Each page says which of its groups the API database lacks: with ``include_tombstoned``, a
    group it deleted (tombstone) counts as lacking too (the reverse copy retires those);
    without, it does not (:func:`uncopied_among`). With ``skip_journaled``, a group with a
    pending entry in the cell's journal is not lacking: it is a dual-write write in flight
    (its cell half committed with its entry, its API half not yet) or a queued repair, and
    the journal's replay, not the forward copy, brings it over. The entries are read in
    the page's own cell read, before the API database is asked: an entry gone by then was
    deleted after its API copy committed, which the API read that follows sees.

    Raises:
        OperationalError: a database could not be read.
    """
    g = CELL.groups
    while True:
        # Keyset pages over the cell's primary key: no OFFSET, no long-held snapshot.
        with reader(cell.engine, cell.label) as conn:
            rows = conn.execute(
                sa.select(g.c.id, g.c.uuid)
                .where(g.c.deleted == 0, g.c.id > after)
                .order_by(g.c.id)
                .limit(PAGE)
            ).all()
            journaled = CELL.journaled(conn, [r.uuid for r in rows]) if skip_journaled else set()
        if not rows:
            return
        after = rows[-1].id
        uuids = [r.uuid for r in rows if r.uuid not in journaled]
        with reader(dbs.api, dbs.api_label) as conn:
            if include_tombstoned:
                lacking = set(uuids) - API.present(conn, uuids)
            else:
                lacking = uncopied_among(conn, uuids)
        yield LivePage(tuple((r.id, r.uuid) for r in rows), frozenset(lacking))


def uncopied(dbs: Databases, cell: Cell) -> int:
    """Count the live groups of ``cell`` that the API database lacks: its backlog.

    A group with a pending cell journal entry is not counted (:func:`live_pages`): the
    journal's replay copies it, and the switcher's exact ``cell-journals-empty`` check
    under the lock replays or refuses it. Counting it made the ``unmigrated-cell-groups``
    guard refuse a phase change for every write caught between its two commits.

    Raises:
        OperationalError: a database could not be read.
    """
    return sum(len(p.lacking) for p in live_pages(dbs, cell, skip_journaled=True))
