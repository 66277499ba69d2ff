"""Scope units of work: read and write transactions, and the driver errors they raise.

Query functions elsewhere take the :class:`~sqlalchemy.engine.Connection` they are given
and never commit or open one; the caller scopes the unit of work here, with
:func:`reader`, :func:`writer` or :func:`transaction` (oslo.db's reader/writer idea,
without its decorators). Driver errors raised inside are translated once, by
:func:`database_errors`, into shadowdb's own (:mod:`shadowdb.errors`).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from shadowdb import urls
from shadowdb.errors import (
    CommitUncertain,
    DatabaseUnreachable,
    OperationalError,
    TransientError,
)

__all__ = [
    "GALERA_NODE",
    "commit",
    "database_errors",
    "found_dead",
    "galera_node",
    "read_again_once",
    "read_session",
    "reader",
    "share_reads",
    "transaction",
    "writer",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: The key of a connection's ``info`` where the engine's connect hook leaves the name of
#: the Galera node it reached (:mod:`shadowdb.databases`).
GALERA_NODE = "shadowdb_galera_node"


def galera_node(conn: Connection) -> str | None:
    """Name the Galera node ``conn`` reached, or ``None`` off Galera (or not probed)."""
    node: str | None = conn.info.get(GALERA_NODE)
    return node


@contextlib.contextmanager
def database_errors(label: str) -> Iterator[None]:
    """Translate driver errors raised inside the block into shadowdb errors.

    A lost or refused connection becomes :class:`DatabaseUnreachable`; any other
    driver-level operational failure becomes :class:`OperationalError`. Integrity errors
    pass through: callers decide what a constraint violation means.
    """
    try:
        yield
    except exc.IntegrityError:
        raise
    except exc.DBAPIError as err:
        detail = urls.mask_text(str(err.orig).strip().splitlines()[0] if err.orig else str(err))
        if err.connection_invalidated or _is_connection_error(err):
            raise DatabaseUnreachable(label, detail) from err
        code = _transient_code(err)
        if code is not None:
            raise TransientError(label, code, detail) from err
        raise OperationalError(f"{label}: {detail}") from err


#: Server errors after which the whole transaction is gone and nothing of it committed:
#: MariaDB/MySQL deadlock (also Galera's certification conflict) and lock wait timeout
#: (shadowdb rolls the rest back), PostgreSQL serialization failure and deadlock.
_TRANSIENT_MYSQL = {1213: "1213", 1205: "1205"}
_TRANSIENT_POSTGRESQL = {"40001", "40P01"}


def _transient_code(err: exc.DBAPIError) -> str | None:
    orig = err.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL: (errno, message)
        return _TRANSIENT_MYSQL.get(args[0])
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg
    if isinstance(sqlstate, str) and sqlstate in _TRANSIENT_POSTGRESQL:
        return sqlstate
    return None


def _is_connection_error(err: exc.DBAPIError) -> bool:
    if isinstance(err, exc.InterfaceError):
        return True
    text = str(err.orig).lower()
    markers = (
        "can't connect",
        "connection refused",
        "lost connection",
        "server has gone away",
        "unable to open database file",
        "could not connect",
        "connection timeout",
        "timeout expired",
        "server closed the connection",
        "connection is closed",
        "the connection is lost",
        "connection failed",
        "unknown database",
        "name or service not known",
        "access denied",
        "authentication failed",
    )
    if re.search(r'database "[^"]*" does not exist', text):
        return True
    return any(marker in text for marker in markers)


def found_dead(err: DatabaseUnreachable) -> bool:
    """Say whether ``err`` is an open connection the driver found dead under a statement.

    A server-side kill or a network cut, as opposed to a database that cannot be
    connected to at all (retrying that would only wait out the connect timeout again).
    """
    cause = err.__cause__
    return isinstance(cause, exc.DBAPIError) and bool(cause.connection_invalidated)


def read_again_once(engine: Engine, label: str, read: Callable[[Connection], T]) -> T:
    """Run ``read`` in a :func:`reader`; if it found its connection dead, run it once more.

    The hot-path engines check nothing out before use (no pre-ping round trip: see
    :func:`shadowdb.databases.create_read_engine`), so a connection the server or the
    network closed while it sat in the pool is found dead by its first statement.
    SQLAlchemy then invalidates the pool; a read has nothing to commit, so running it
    again on a new connection is safe (SQLAlchemy's "optimistic" disconnect handling).
    A second failure, or any other error, is the caller's: an outage is never hidden.
    """
    try:
        with reader(engine, label) as conn:
            return read(conn)
    except DatabaseUnreachable as err:
        if not found_dead(err):
            raise
        log.info("read_retried", database=label, error=str(err))
    with reader(engine, label) as conn:
        return read(conn)


#: Hot-path read engines (autocommit): the only ones a read session may share.
_READ_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
#: The connections of the current read session, per read engine (see read_session).
_session: contextvars.ContextVar[dict[Engine, Connection] | None] = contextvars.ContextVar(
    "shadowdb_read_session", default=None
)


def share_reads(engine: Engine) -> None:
    """Let ``engine`` (an autocommit hot-path read engine) be shared by a read session."""
    _READ_ENGINES.add(engine)


@contextlib.contextmanager
def read_session() -> Iterator[None]:
    """Let hot-path reads in this block share one connection per read engine.

    The scheduler's path reads the same database two or three times in a row (the
    group, then the routing of its members); a pool checkout costs about as much as a
    small statement, so the block checks out once per database. Only autocommit read
    engines share (each statement is its own transaction anyway); threads started
    inside the block (the cell scatter) check out their own.
    """
    token = _session.set({})
    try:
        yield
    finally:
        held = _session.get() or {}
        _session.reset(token)
        for conn in held.values():
            conn.close()


@contextlib.contextmanager
def reader(engine: Engine, label: str = "database") -> Iterator[Connection]:
    """Open a read unit of work on ``engine``; it is rolled back, never committed."""
    held = _session.get()
    if held is None or engine not in _READ_ENGINES:
        with database_errors(label), engine.connect() as conn:
            yield conn
        return
    with database_errors(label):
        shared = held.get(engine)
        if shared is None:
            shared = held[engine] = engine.connect()
        try:
            yield shared
        except BaseException:
            # The connection may be broken: do not hand it to the next read.
            held.pop(engine, None)
            shared.close()
            raise


@contextlib.contextmanager
def writer(engine: Engine, label: str = "database") -> Iterator[Connection]:
    """Open a write transaction on ``engine``: committed on success, else rolled back.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``, taking the write lock
    before the first read, so that read-then-write units cannot deadlock.
    """
    with database_errors(label), engine.connect() as conn:
        conn = conn.execution_options(shadowdb_write=True)
        with conn.begin():
            yield conn


@contextlib.contextmanager
def transaction(engine: sa.Engine, label: str) -> Iterator[Connection]:
    """Open a write transaction the caller commits or rolls back explicitly.

    Unlike :func:`writer`, the commit is the caller's (:func:`commit`): the protocol
    needs to commit the two databases in a chosen order. Left open, it is rolled back.
    """
    with database_errors(label), engine.connect() as conn:
        conn = conn.execution_options(shadowdb_write=True)
        conn.begin()
        try:
            yield conn
        finally:
            if conn.in_transaction():
                conn.rollback()


def commit(conn: Connection, label: str) -> None:
    """Commit ``conn``, translating driver errors.

    Raises:
        CommitUncertain: the connection died during the commit, which may have happened.
    """
    try:
        with database_errors(label):
            conn.commit()
    except DatabaseUnreachable as err:
        raise CommitUncertain(err.database, f"{err.detail} (while committing)") from err
