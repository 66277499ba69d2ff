"""Persist the migration phase and serve it to every process through a short cache.

The phase lives in the API database, in the single row of ``shadowdb_state``, with a
monotonically increasing **epoch** (bumped on every change) and a row per change in
``shadowdb_phase_history``. Processes read it through :class:`PhaseStore`, whose cache
keeps an answer for at most ``Settings.phase_ttl`` seconds; the flip protocol in
:mod:`shadowdb.switcher` relies on that bound.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import threading
import time
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb.errors import DatabaseUnreachable, NotTheWriterNode, SchemaError, UnknownPhase
from shadowdb.models import api_cell_mappings, api_phase_history, api_state, cell_state
from shadowdb.transactions import galera_node, read_again_once

log = structlog.get_logger(__name__)

__all__ = ["Phase", "PhaseState", "PhaseStore", "read_cell_state", "read_state", "utcnow"]


class Phase(enum.Enum):
    """The four phases, in forward order; the values are what the database stores."""

    CELL_ONLY = "cell-only"
    DUAL_WRITE_CELL_READS = "dual-write-cell-reads"
    DUAL_WRITE_API_READS = "dual-write-api-reads"
    API_ONLY = "api-only"

    @classmethod
    def parse(cls, text: str) -> Phase:
        """Return the phase named ``text``.

        Raises:
            UnknownPhase: no phase has that name.
        """
        try:
            return cls(text)
        except ValueError:
            raise UnknownPhase(text, [p.value for p in cls]) from None

    @property
    def index(self) -> int:
        """Position in the forward order, from 0."""
        return list(Phase).index(self)

    @property
    def dual_write(self) -> bool:
        """True in the two phases that write both databases."""
        return self in (Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS)


def utcnow() -> dt.datetime:
    """Return the current UTC time, naive, to the second (as Nova stores timestamps)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


@dataclasses.dataclass(frozen=True)
class PhaseState:
    """The phase row as last read."""

    phase: Phase
    epoch: int
    changed_at: dt.datetime
    default_cell_uuid: str | None
    #: ``cleanup`` has begun retiring the cell copies (API database only).
    cells_retired: bool = False
    #: A cell's row only: the epoch of a change prepared in it whose outcome the API
    #: database's row decides (:mod:`shadowdb.fence`).
    next_epoch: int | None = None


_SELECT_STATE = sa.select(
    api_state.c.phase,
    api_state.c.epoch,
    api_state.c.changed_at,
    api_state.c.default_cell_uuid,
    api_state.c.cells_retired,
    api_state.c.writer_node,
).where(api_state.c.id == 1)


#: The phase row as :class:`PhaseStore` reads it, with a fingerprint of ``cell_mappings``
#: (how many rows, the highest id) in the same statement: a process learns that a cell was
#: registered or removed as soon as it would learn of a phase change, at no extra cost.
_SELECT_STATE_AND_CELLS = sa.select(
    *_SELECT_STATE.selected_columns,
    sa.select(sa.func.count()).select_from(api_cell_mappings).scalar_subquery().label("cells"),
    sa.select(sa.func.coalesce(sa.func.max(api_cell_mappings.c.id), 0))
    .scalar_subquery()
    .label("last_cell"),
).where(api_state.c.id == 1)


def check_writer_node(conn: Connection, recorded: str | None, database: str) -> None:
    """Refuse a write through a Galera node other than the one recorded by ``db sync``.

    The fence rests on row locks, which Galera neither replicates nor certifies: a
    writer on a second node could commit under a phase that a ``phase set`` through the
    first has left. So every locking read (each write transaction's first statement)
    checks the node it runs on.

    Raises:
        NotTheWriterNode: on Galera, through another node than the recorded one.
    """
    node = galera_node(conn)
    if node is not None and recorded is not None and node != recorded:
        raise NotTheWriterNode(database, node, recorded)


def _locking(stmt: sa.Select[Any], for_update: bool, share: bool) -> sa.Select[Any]:
    if for_update:
        return stmt.with_for_update()
    if share:
        return stmt.with_for_update(read=True)
    return stmt


def _queue_fairly(conn: Connection, for_update: bool) -> None:
    """On PostgreSQL, queue the exclusive locker of the phase row behind its writers fairly.

    A row's ``FOR SHARE`` lockers there do not wait behind a waiting ``FOR UPDATE``: under
    steady writes the changer of the phase could wait for ever. A table lock in
    ``EXCLUSIVE`` mode (which plain reads pass, and ``FOR SHARE`` does not) is queued in
    order: the writers in flight finish, the ones after it wait. MariaDB's row locks
    queue in order already; SQLite serialises whole databases.
    """
    if for_update and conn.dialect.name == "postgresql":
        conn.execute(sa.text("LOCK TABLE shadowdb_state IN EXCLUSIVE MODE"))


def read_cell_state(
    conn: Connection,
    *,
    for_update: bool = False,
    share: bool = False,
    label: str = "cell database",
) -> PhaseState | None:
    """Read a cell's phase row (the fence, :mod:`shadowdb.fence`); ``None`` if it has none.

    ``label`` names the cell in errors (``cell NAME``): an operator has to know which.

    Raises:
        SchemaError: the cell database was never synced by shadowdb.
    """
    c = cell_state.c
    columns = (c.phase, c.epoch, c.changed_at, c.next_epoch, c.writer_node)
    stmt = _locking(sa.select(*columns).where(c.id == 1), for_update, share)
    try:
        _queue_fairly(conn, for_update)
        row = conn.execute(stmt).one_or_none()
    except (sa.exc.ProgrammingError, sa.exc.OperationalError) as err:
        if "shadowdb_state" in str(err.orig):
            raise SchemaError(label, "not synced (run `shadowdb db sync`)") from err
        raise
    if row is None:
        return None
    if for_update or share:
        check_writer_node(conn, row.writer_node, "cell database")
    return PhaseState(Phase(row.phase), row.epoch, row.changed_at, None, next_epoch=row.next_epoch)


def read_state(conn: Connection, *, for_update: bool = False, share: bool = False) -> PhaseState:
    """Read the phase row on ``conn``; lock it until commit if asked.

    ``for_update`` takes the exclusive lock (the switcher, changing the phase); ``share``
    takes a shared lock (a writer, pinning the phase for the length of its transaction:
    the switcher's update waits until the writer commits).

    Raises:
        SchemaError: the API database was never synced by shadowdb.
    """
    row = _api_state_row(conn, _locking(_SELECT_STATE, for_update, share), for_update)
    if for_update or share:
        check_writer_node(conn, row.writer_node, "API database")
    return _api_state_of(row)


def _read_state_and_cells(conn: Connection) -> tuple[PhaseState, tuple[int, int]]:
    """Read the phase row (unlocked) and the fingerprint of ``cell_mappings``, in one go."""
    row = _api_state_row(conn, _SELECT_STATE_AND_CELLS)
    return _api_state_of(row), (int(row.cells), int(row.last_cell))


def _api_state_row(conn: Connection, stmt: sa.Select[Any], for_update: bool = False) -> Any:
    """Run a read of the API phase row; a database never synced says so.

    Raises:
        SchemaError: the API database was never synced by shadowdb.
    """
    try:
        _queue_fairly(conn, for_update)
        row = conn.execute(stmt).one_or_none()
    except (sa.exc.ProgrammingError, sa.exc.OperationalError) as err:
        if "shadowdb_state" in str(err.orig):
            raise SchemaError("API database", "not synced (run `shadowdb db sync`)") from err
        raise
    if row is None:
        raise SchemaError("API database", "not synced (run `shadowdb db sync`)")
    return row


def _api_state_of(row: Any) -> PhaseState:
    return PhaseState(
        Phase(row.phase),
        row.epoch,
        row.changed_at,
        row.default_cell_uuid,
        bool(row.cells_retired),
    )


def initialise_state(conn: Connection, actor: str) -> bool:
    """Create the phase row in ``cell-only`` at epoch 0 if it is missing.

    Returns:
        True if the row was created.
    """
    if conn.execute(sa.select(api_state.c.id).where(api_state.c.id == 1)).first():
        return False
    now = utcnow()
    conn.execute(
        api_state.insert().values(id=1, phase=Phase.CELL_ONLY.value, epoch=0, changed_at=now)
    )
    conn.execute(
        api_phase_history.insert().values(
            epoch=0,
            from_phase=None,
            to_phase=Phase.CELL_ONLY.value,
            changed_at=now,
            actor=actor,
            reason="initial state (db sync)",
            forced=False,
        )
    )
    return True


class PhaseStore:
    """Serve the current phase from a cache no older than ``ttl`` seconds.

    Thread-safe. ``get()`` is what object methods call on every operation; ``fresh()``
    bypasses the cache (used when a decision must not rest on a stale phase).
    """

    def __init__(self, engine: sa.Engine, ttl: float, label: str = "API database") -> None:
        self._engine = engine
        self._ttl = ttl
        self._label = label
        self._lock = threading.Lock()
        self._cached: PhaseState | None = None
        self._read_at = 0.0
        #: ``(rows, highest id)`` of ``cell_mappings`` at the last read, or None before one.
        self.cells_seen: tuple[int, int] | None = None

    @property
    def ttl(self) -> float:
        """Seconds a cached answer may be served."""
        return self._ttl

    def get(self) -> PhaseState:
        """Return the phase, from the cache while it is younger than the TTL.

        If the API database cannot be reached, the last phase read is served (and a
        warning logged) instead of failing: the cell-authoritative phases must keep
        accepting writes through an API outage. This is safe because the phase cannot
        change while nobody reaches the API database, and a process cut off alone still
        takes the per-group cell lock that every dual-write writer takes.
        """
        cached = self._cached
        if cached is not None and time.monotonic() - self._read_at < self._ttl:
            return cached
        try:
            return self.fresh()
        except DatabaseUnreachable as err:
            if cached is None:
                raise
            log.warning("phase_stale", phase=cached.phase.value, epoch=cached.epoch, error=str(err))
            return cached

    def fresh(self) -> PhaseState:
        """Read the phase from the API database and refresh the cache."""
        started = time.monotonic()
        state, cells = read_again_once(self._engine, self._label, _read_state_and_cells)
        with self._lock:
            self._cached = state
            self._read_at = started
            self.cells_seen = cells
        return state

    def observe(self, state: PhaseState) -> None:
        """Cache ``state`` if it is newer than the cached one (a writer read it, fenced)."""
        with self._lock:
            if self._cached is None or state.epoch > self._cached.epoch:
                self._cached = state
                self._read_at = time.monotonic()

    def invalidate(self) -> None:
        """Forget the cached phase."""
        with self._lock:
            self._cached = None
