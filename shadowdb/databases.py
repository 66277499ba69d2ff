"""Own the engines: one for the API database and one per cell, created once.

Units of work are scoped by the caller with :func:`reader` and :func:`writer`; query
functions elsewhere take the :class:`~sqlalchemy.engine.Connection` they are given and
never commit or open one (oslo.db's reader/writer idea, without its decorators).

Cells are discovered the way Nova discovers them: from the API database's
``cell_mappings`` table.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine

from shadowdb import novaconf, urls
from shadowdb.errors import DatabaseUnreachable, ShadowDBError, UnknownCell
from shadowdb.models import api_cell_mappings
from shadowdb.packed import GROUP_CONCAT_MAX_LEN
from shadowdb.settings import Settings
from shadowdb.state import PhaseStore

# Units of work live in shadowdb.transactions; their names stay importable from here.
from shadowdb.transactions import (
    GALERA_NODE,
    database_errors,
    found_dead,
    galera_node,
    read_again_once,
    read_session,
    reader,
    share_reads,
    writer,
)

__all__ = [
    "Cell",
    "Databases",
    "cell0_last",
    "connect",
    "create_engine",
    "create_read_engine",
    "database_errors",
    "database_identity",
    "found_dead",
    "galera_node",
    "read_again_once",
    "read_each",
    "read_session",
    "reader",
    "writer",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

#: Nova's cell0 (its uuid is always this one, from ``nova-manage cell_v2 map_cell0``)
#: holds instances that failed to schedule; never groups, never a default cell.
CELL0_UUID = "00000000-0000-0000-0000-000000000000"


@dataclasses.dataclass(frozen=True)
class Cell:
    """A cell database as ``cell_mappings`` describes it, with its engine."""

    id: int
    uuid: str
    name: str
    url: URL
    engine: Engine = dataclasses.field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """Name the cell in messages and logs."""
        return f"cell {self.name}"

    @property
    def is_cell0(self) -> bool:
        """Whether this is Nova's cell0 (instances that never got a host; no groups)."""
        return self.uuid == CELL0_UUID


def choose_default(cells: Sequence[Cell], chosen_uuid: str | None) -> Cell | None:
    """Return the cell new groups go to: the one chosen, else the only one besides cell0.

    cell0 is never the default (Nova's services never look there for groups). ``None``
    when nothing was chosen and several cells qualify, or none does.
    """
    usable = [c for c in cells if not c.is_cell0]
    for cell in usable:
        if cell.uuid == chosen_uuid:
            return cell
    return usable[0] if len(usable) == 1 else None


def cell0_last(cells: Iterable[Cell]) -> list[Cell]:
    """Order ``cells`` for a lookup that stops at the first answer: cell0 last, else by id.

    cell0 holds no group Nova made (its instances never got a host); it is still asked,
    after every other cell, so a group found nowhere else is not missed, but a group found
    in a real cell costs cell0 no statement.
    """
    return sorted(cells, key=lambda cell: cell.is_cell0)


def read_each(
    cells: Iterable[Cell],
    read: Callable[[Connection], T],
    *,
    catch: type[E],
    failed: Callable[[Cell, E], None],
) -> Iterator[tuple[Cell, T]]:
    """Read each cell in a reader of its own; yield what it read, in cell order.

    A cell whose read raises ``catch`` is handed to ``failed`` and the others are still
    read: a cell is reported, never skipped silently. Any other error propagates.
    """
    for cell in cells:
        try:
            with reader(cell.engine, cell.label) as conn:
                found = read(conn)
        except catch as err:
            failed(cell, err)
            continue
        yield cell, found


#: Every MariaDB/MySQL connection: utf8mb4, and room for the lists the hot path's
#: statements pack into one value (:mod:`shadowdb.packed`).
_MYSQL_CONNECT_ARGS: dict[str, Any] = {
    "charset": "utf8mb4",
    "init_command": f"SET SESSION group_concat_max_len = {GROUP_CONCAT_MAX_LEN}",
}


def create_engine(
    url: URL, settings: Settings, *, create_dirs: bool = False, must_exist: bool = False
) -> Engine:
    """Create the engine for ``url`` with shadowdb's per-backend settings.

    SQLite runs in WAL mode with a busy timeout, and its transactions are begun by us so
    that writers can take the database lock up front (``BEGIN IMMEDIATE``): SQLite's own
    deferred BEGIN would let two writers both read, then deadlock on upgrade.
    MySQL/MariaDB run at READ COMMITTED, which avoids InnoDB gap locks between writers of
    different groups; every cross-database guarantee comes from explicit row locks.
    """
    backend = urls.backend_of(url)
    if backend == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and create_dirs:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        _make_sqlite_transactional(engine)
        if must_exist and database and database != ":memory:":
            _refuse_missing_file(engine, Path(database))
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": int(max(1, settings.connect_timeout))}
    # Pre-ping: a pooled connection the server killed while idle (or that a network cut
    # left dead) is found before use and replaced, never reported as an outage. Writes
    # and administration only: the hot-path read engine keeps checkouts free.
    kwargs: dict[str, Any] = {
        "pool_recycle": 3600,
        "pool_size": 10,
        "max_overflow": 20,
        "pool_pre_ping": True,
    }
    if backend == "mysql":
        connect_args.update(_MYSQL_CONNECT_ARGS)
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
    if backend == "mysql":
        event.listen(engine, "connect", _probe_galera)
    return engine


def _probe_galera(dbapi_connection: Any, record: Any) -> None:
    """Note, once per connection, the Galera node it reached (nothing off Galera).

    On Galera the connection's reads are also made causal (``wsrep_sync_wait`` bit 1,
    added to whatever the server sets): a node applies replicated writes some time after
    the cluster committed them, and a read that decides (the phase a ``phase set`` starts
    from, the writer node and epoch a fence read checks, a diff's scan) must see every
    write committed before it, whichever node committed it. The hot path's read engine
    (:func:`create_read_engine`) is left as Nova reads: a phase it read from a node that
    lags only plans a write, which the fence read then checks.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
        row = cursor.fetchone()
        if row is not None and str(row[1]).upper() == "ON":
            cursor.execute("SELECT @@wsrep_node_name")
            record.info[GALERA_NODE] = str(cursor.fetchone()[0])
            cursor.execute("SET SESSION wsrep_sync_wait = @@wsrep_sync_wait | 1")
    finally:
        cursor.close()


def _refuse_missing_file(engine: Engine, path: Path) -> None:
    """Make connecting fail, not create an empty database, if the file has gone."""

    @event.listens_for(engine, "do_connect")
    def _check(*_args: Any) -> None:
        if not path.exists():
            import sqlite3

            raise sqlite3.OperationalError(f"unable to open database file {path}: no such file")


def database_identity(conn: Connection) -> tuple[Any, ...]:
    """Name the database ``conn`` is connected to as its server sees it.

    Two URLs that differ in text (a host name and its address, a driver spelled out or
    not) but reach one database have one identity: MariaDB/MySQL by server host name,
    port, data directory and schema; PostgreSQL by the cluster's system identifier and
    the database; SQLite by the file's real path.
    """
    dialect = conn.dialect.name
    if dialect in ("mysql", "mariadb"):
        row = conn.execute(sa.text("SELECT @@hostname, @@port, @@datadir, DATABASE()")).one()
        return ("mysql", *row)
    if dialect == "postgresql":
        try:
            with conn.begin_nested():
                cluster = conn.scalar(sa.text("SELECT system_identifier FROM pg_control_system()"))
        except exc.DBAPIError:
            # Not allowed to this role: the server's own address and port name it.
            cluster = conn.execute(
                sa.text("SELECT host(inet_server_addr()), inet_server_port()")
            ).one()
        return ("postgresql", str(cluster), conn.scalar(sa.text("SELECT current_database()")))
    database = conn.engine.url.database or ""
    return ("sqlite", str(Path(database).resolve()))


#: Bytes of a SQLite database a hot-path read connection maps into memory.
SQLITE_READ_MMAP = 1 << 30
#: KiB of page cache per hot-path SQLite read connection.
SQLITE_READ_CACHE_KIB = 65536


def create_read_engine(url: URL, settings: Settings) -> Engine:
    """Create a read-only hot-path engine for ``url``: autocommit, nothing on checkout.

    Every statement is its own transaction (``AUTOCOMMIT``), so a pooled connection needs
    no ``BEGIN`` before its first statement and no ``ROLLBACK`` when it goes back to the
    pool (``pool_reset_on_return=None``, ``skip_autocommit_rollback``): a checkout costs no
    round trip. Only single-statement reads may use it; SQLite connections are opened
    ``query_only`` so a write through it fails instead of committing on its own.
    """
    kwargs: dict[str, Any] = {
        "isolation_level": "AUTOCOMMIT",
        "pool_reset_on_return": None,
        "skip_autocommit_rollback": True,
        # The hot-path statements are fixed; one outer-joins the single phase row to a
        # lookup on purpose (shadowdb.lookups), which the FROM linter takes for a
        # forgotten join condition.
        "enable_from_linting": False,
    }
    backend = urls.backend_of(url)
    if backend == "sqlite":
        engine = sa.create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA query_only=1")
            # A member list is thousands of random probes into a large instances table:
            # memory-mapped pages and a larger page cache spare a read() per page
            # (BENCHMARKS.md, "get_hosts hot path").
            cursor.execute(f"PRAGMA mmap_size={SQLITE_READ_MMAP}")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_READ_CACHE_KIB}")
            cursor.close()

        share_reads(engine)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": int(max(1, settings.connect_timeout))}
    if backend == "mysql":
        connect_args.update(_MYSQL_CONNECT_ARGS)
    engine = sa.create_engine(
        url,
        connect_args=connect_args,
        pool_recycle=3600,
        pool_size=10,
        max_overflow=20,
        **kwargs,
    )
    share_reads(engine)
    return engine


def _make_sqlite_transactional(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("shadowdb_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _report_to(fast: Engine, engine: Engine) -> None:
    """Show ``fast``'s statements to ``engine``'s statement listeners too.

    Whoever watches a database's engine (statement counters in tests, tracing in a
    service) thereby sees every statement sent to that database, whichever engine sent it.
    """

    @event.listens_for(fast, "before_cursor_execute")
    def _forward(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if engine.dispatch.before_cursor_execute:
            engine.dispatch.before_cursor_execute(
                conn, cursor, statement, parameters, context, executemany
            )


class Databases:
    """Hold the API engine and one engine per cell; dispose of them with :meth:`dispose`.

    Built by :func:`connect`. Cells are read from ``cell_mappings`` when first needed
    and again on :meth:`refresh_cells`.
    """

    def __init__(self, settings: Settings, api_url: URL, api: Engine) -> None:
        self.settings = settings
        self.api_url = api_url
        self.api = api
        self._cells: tuple[Cell, ...] | None = None
        self._cells_seen: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}
        # Hot-path read engines, keyed by the engine they shadow (created on first use).
        self._read_engines: dict[Engine, Engine] = {}
        self._phases: PhaseStore | None = None

    @property
    def phases(self) -> PhaseStore:
        """The phase of this deployment, cached for ``settings.phase_ttl`` seconds."""
        if self._phases is None:
            # Single-statement reads: the hot-path engine spares them BEGIN and ROLLBACK.
            self._phases = PhaseStore(self.api_fast, self.settings.phase_ttl, self.api_label)
        return self._phases

    @property
    def api_label(self) -> str:
        """Name the API database in messages and logs (password masked)."""
        return f"API database {urls.mask(self.api_url)}"

    @property
    def cells(self) -> tuple[Cell, ...]:
        """Every cell in ``cell_mappings``, ordered by id (cached).

        Read again when the phase read (:class:`PhaseStore`, every ``phase_ttl``) saw
        ``cell_mappings`` change: the hot path asks one or two cells without routing
        (:func:`shadowdb.hosts.targets`), so nothing else would reveal a cell registered
        while this process runs. If that read fails, the list last read is kept.
        """
        if self._cells is None:
            self.refresh_cells()
        elif self._phases is not None:
            seen = self._phases.cells_seen
            if seen is not None and seen != self._cells_seen:
                try:
                    self.refresh_cells()
                except ShadowDBError as err:
                    log.warning("cell_list_stale", error=str(err).splitlines()[0])
        assert self._cells is not None
        return self._cells

    def refresh_cells(self) -> tuple[Cell, ...]:
        """Re-read ``cell_mappings`` and create engines for cells not seen before."""
        t = api_cell_mappings
        with reader(self.api, self.api_label) as conn:
            rows = conn.execute(
                sa.select(t.c.id, t.c.uuid, t.c.name, t.c.database_connection).order_by(t.c.id)
            ).all()
        cells = []
        with self._lock:
            self._cells_seen = (len(rows), max((row.id for row in rows), default=0))
            for row in rows:
                url = cell_url(row.database_connection, self.settings, row.name or row.uuid)
                key = url.render_as_string(hide_password=False)
                engine = self._engines.get(key)
                if engine is None:
                    # A registered cell is never created here: a missing file is an error.
                    engine = create_engine(url, self.settings, must_exist=True)
                    self._engines[key] = engine
                cells.append(Cell(row.id, row.uuid, row.name or row.uuid, url, engine))
            self._cells = tuple(cells)
        return self._cells

    def read_engine(self, engine: Engine) -> Engine:
        """Return the hot-path read engine for ``engine`` (same database), creating it once.

        See :func:`create_read_engine`. ``engine`` is :attr:`api` or a cell's engine; the
        write engines keep their own behaviour.
        """
        fast = self._read_engines.get(engine)
        if fast is None:
            with self._lock:
                fast = self._read_engines.get(engine)
                if fast is None:
                    fast = create_read_engine(engine.url, self.settings)
                    _report_to(fast, engine)
                    self._read_engines[engine] = fast
        return fast

    @property
    def api_fast(self) -> Engine:
        """The hot-path read engine of the API database."""
        return self.read_engine(self.api)

    def cell(self, name: str) -> Cell:
        """Return the cell called ``name`` (or with that uuid).

        Raises:
            UnknownCell: no cell has that name or uuid.
        """
        for cell in self.cells:
            if name in (cell.name, cell.uuid):
                return cell
        raise UnknownCell(name)

    def dispose(self) -> None:
        """Close every pooled connection of every engine."""
        self.api.dispose()
        with self._lock:
            for engine in (*self._engines.values(), *self._read_engines.values()):
                engine.dispose()

    def __enter__(self) -> Databases:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.dispose()


def cell_url(stored: str, settings: Settings, name: str) -> URL:
    """Return the URL a cell mapping's ``database_connection`` means for this process.

    A template (``{scheme}://{username}:{password}@{hostname}/cell1``) is filled from
    ``settings.cell_url_default`` (``[database] connection``), as Nova's services fill
    it (:mod:`shadowdb.novaconf`).

    Raises:
        InvalidInput: a template with nothing to fill it from, or that cannot be filled.
        InvalidURL: the (filled) URL cannot be parsed or names an unsupported backend.
    """
    if novaconf.is_template(stored):
        stored = novaconf.fill_template(stored, settings.cell_url_default, name)
    return urls.parse_url(stored)


def connect(
    api_url: str | None = None,
    *,
    settings: Settings | None = None,
    create: bool = False,
) -> Databases:
    """Connect to the API database (and, lazily, its cells).

    Args:
        api_url: URL of the API database; ``None`` takes ``settings.api_url``, then the
            embedded SQLite file ``<data_dir>/api.sqlite``.
        settings: process settings; defaults to :class:`Settings` with its defaults.
        create: allow creating the embedded SQLite file and its folder (``db sync``).

    Raises:
        InvalidURL: the URL cannot be parsed or names an unsupported backend.
        DatabaseUnreachable: the embedded SQLite file does not exist and ``create`` is
            false (nothing is created by a read).
    """
    settings = settings or Settings()
    raw = api_url or settings.api_url
    url = urls.parse_url(raw) if raw else urls.sqlite_url(settings.data_dir / "api.sqlite")
    if urls.backend_of(url) == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database or "")
        if not create and not path.exists():
            raise DatabaseUnreachable(
                f"API database {urls.mask(url)}",
                "no such file (run `shadowdb db sync` to create it)",
            )
    engine = create_engine(url, settings, create_dirs=create)
    return Databases(settings, url, engine)
