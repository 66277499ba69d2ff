"""Open the write transactions of one group, fenced and locked in the one order.

The lock protocol (see also :mod:`shadowdb.phases.base`): a unit that touches both copies
of group G first locks G's live row in the cell database that holds it
(``SELECT ... FOR UPDATE`` inside the cell transaction; SQLite's ``BEGIN IMMEDIATE``),
then G's row in the API database. Every dual-write writer and every replay take the
locks in that order, so they are serialised per group and cannot deadlock one another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.engine import Connection

from shadowdb.databases import Cell, Databases
from shadowdb.fence import pin_api, pin_cell
from shadowdb.phase import PhaseState
from shadowdb.queries import API, CELL, GroupRecord
from shadowdb.transactions import transaction

__all__ = ["api_transaction", "cell_transaction"]


@contextlib.contextmanager
def cell_transaction(
    dbs: Databases, cell: Cell, state: PhaseState, group_uuid: str
) -> Iterator[tuple[Connection, GroupRecord | None]]:
    """Open a write transaction on ``cell`` for one group, fenced and locked.

    In this order, the same for every writer of every phase (so none can deadlock
    another): the cell's phase row under a shared lock (:func:`~shadowdb.fence.pin_cell`,
    the first statement), the group's identity lock (held whether or not a row exists),
    then the group's live row. Yields the connection and the locked cell copy.
    """
    with transaction(cell.engine, cell.label) as conn:
        pin_cell(conn, cell, state)
        CELL.lock_identity(conn, group_uuid)
        yield conn, CELL.get(conn, group_uuid, lock=True)


@contextlib.contextmanager
def api_transaction(
    dbs: Databases, state: PhaseState, group_uuid: str
) -> Iterator[tuple[Connection, GroupRecord | None]]:
    """Open a write transaction on the API database for one group, fenced and locked.

    The API database's phase row under a shared lock first (:func:`~shadowdb.fence.pin_api`),
    then the group's row. Always taken after the cell's locks, never before.
    """
    with transaction(dbs.api, dbs.api_label) as conn:
        pin_api(conn, state)
        yield conn, API.get(conn, group_uuid, lock=True)
