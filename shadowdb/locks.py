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
from shadowdb.queries import API, CELL, GroupRecord
from shadowdb.state import PhaseState
from shadowdb.transactions import transaction

__all__ = ["api_transaction", "cell_transaction", "lock_api", "lock_cell"]


#: A locked copy: the connection of its transaction, the copy (``None`` if the side has
#: none) and the ids of the group's journal entries on that side.
Locked = tuple[Connection, GroupRecord | None, list[int]]


@contextlib.contextmanager
def lock_cell(dbs: Databases, cell: Cell, state: PhaseState, group_uuid: str) -> Iterator[Locked]:
    """Open a write transaction on ``cell`` for one group, fenced and locked.

    In this order, the same for every writer of every phase (so none can deadlock
    another): the cell's phase row under a shared lock (:func:`~shadowdb.fence.pin_cell`,
    the first statement), the group's identity lock (held whether or not a row exists),
    then the group's live row. Yields the connection, the locked cell copy and its
    journal entries, read once (:meth:`~shadowdb.queries.Side.get_locked`).
    """
    with transaction(cell.engine, cell.label) as conn:
        pin_cell(conn, cell, state)
        CELL.lock_identity(conn, group_uuid)
        yield conn, *CELL.get_locked(conn, group_uuid)


@contextlib.contextmanager
def lock_api(dbs: Databases, state: PhaseState, group_uuid: str) -> Iterator[Locked]:
    """Open a write transaction on the API database for one group, fenced and locked.

    The API database's phase row under a shared lock first (:func:`~shadowdb.fence.pin_api`),
    then the group's row. Always taken after the cell's locks, never before. Yields as
    :func:`lock_cell` does.
    """
    with transaction(dbs.api, dbs.api_label) as conn:
        pin_api(conn, state)
        yield conn, *API.get_locked(conn, group_uuid)


@contextlib.contextmanager
def cell_transaction(
    dbs: Databases, cell: Cell, state: PhaseState, group_uuid: str
) -> Iterator[tuple[Connection, GroupRecord | None]]:
    """Open :func:`lock_cell`'s transaction; yield the connection and the locked copy."""
    with lock_cell(dbs, cell, state, group_uuid) as (conn, record, _):
        yield conn, record


@contextlib.contextmanager
def api_transaction(
    dbs: Databases, state: PhaseState, group_uuid: str
) -> Iterator[tuple[Connection, GroupRecord | None]]:
    """Open :func:`lock_api`'s transaction; yield the connection and the locked copy."""
    with lock_api(dbs, state, group_uuid) as (conn, record, _):
        yield conn, record
