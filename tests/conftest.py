"""The topology fixture: an API database and two cells, on SQLite, MariaDB and PostgreSQL.

``backend`` is parametrized over the three backends with one marker each, so
``-m "not mysql"`` and friends work. A server that cannot be reached skips its tests
locally and fails them when ``CI`` is set: on the project's machines every backend runs.

Server databases are created and synced once per session and emptied before each test
(shadowdb's phase row goes back to ``cell-only``). SQLite topologies are fresh files in
each test's own folder: copies of a set synced once per process, their mappings aimed at
the copies and emptied the same way as the servers' databases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import signal
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL

from shadowdb import commands, models, schema
from shadowdb.databases import Databases, connect, create_engine
from shadowdb.settings import Settings
from shadowdb.state import initialise_state
from tests.support.backends import BACKENDS, Server, worker_id
from tests.support.cli import Cli
from tests.support.proxy import Proxy, proxied

CELL_NAMES = ("cell1", "cell2")


def pytest_configure(config: pytest.Config) -> None:
    # Logs stay quiet in tests unless a test captures them itself.
    import logging

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # A suite started as a background job of a non-interactive shell inherits SIGINT
    # ignored, and so would every shadowdb process it starts: the Ctrl-C tests would then
    # see a signal that does nothing. Give SIGINT back its default, as a terminal has it.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    folder = tmp_path_factory.mktemp("sqlite-template")
    made = {b: Server.for_backend(b, folder) for b in BACKENDS}
    yield made
    for backend, (api_url, cell_urls) in _synced.items():
        for url in (api_url, *cell_urls.values()):
            made[backend].drop(str(url.database))
    for server in made.values():
        server.dispose()


_unreachable: dict[str, str] = {}


def _require(server: Server) -> None:
    if server.backend in _unreachable:
        reason = _unreachable[server.backend]
    else:
        try:
            server.ping()
            return
        except Exception as err:  # any failure to connect
            reason = _unreachable[server.backend] = f"{server.backend} unreachable: {err}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI requires every backend)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(
    scope="session",
    params=[pytest.param(b, marks=getattr(pytest.mark, b)) for b in BACKENDS],
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(backend: str, servers: dict[str, Server]) -> Server:
    s = servers[backend]
    _require(s)
    return s


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for tests: a short phase TTL keeps flips quick without skipping the wait."""
    return Settings(data_dir=tmp_path / "data", phase_ttl=0.05, write_grace=0.05, actor="tests")


@dataclasses.dataclass
class Topology:
    """An API database and two registered, synced cells."""

    backend: str
    api_url: URL
    cell_urls: dict[str, URL]
    settings: Settings
    dbs: Databases

    @property
    def api_url_text(self) -> str:
        return self.api_url.render_as_string(hide_password=False)

    def cell_engine(self, name: str) -> sa.Engine:
        return self.dbs.cell(name).engine


def _db_name(role: str) -> str:
    # The pid keeps concurrent test runs on one server (and xdist workers) apart.
    return f"sdbtest_{os.getpid()}_{worker_id()}_{role}"


_synced: dict[str, tuple[URL, dict[str, URL]]] = {}


def _empty(engine: sa.Engine, metadata: sa.MetaData, keep: set[str]) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name not in keep:
                conn.execute(table.delete())


def _server_topology(server: Server, settings: Settings) -> tuple[URL, dict[str, URL]]:
    if server.backend not in _synced:
        api_url = server.create(_db_name("api"))
        cell_urls = {name: server.create(_db_name(name)) for name in CELL_NAMES}
        with connect(api_url.render_as_string(hide_password=False), settings=settings) as dbs:
            commands.sync_schema(dbs)
            for name in CELL_NAMES:
                url = cell_urls[name].render_as_string(hide_password=False)
                commands.add_cell(dbs, name, url, default=name == CELL_NAMES[0])
            commands.sync_schema(dbs)
        _synced[server.backend] = (api_url, cell_urls)
        return _synced[server.backend]
    api_url, cell_urls = _synced[server.backend]
    empty_topology(api_url, cell_urls, settings)
    return api_url, cell_urls


def empty_topology(api_url: URL, cell_urls: dict[str, URL], settings: Settings) -> None:
    """Empty every table of a synced topology; the phase goes back to ``cell-only``."""
    api = create_engine(api_url, settings)
    try:
        _empty(api, models.api_metadata, keep={"cell_mappings"})
        with api.begin() as conn:
            conn.execute(
                models.api_cell_mappings.delete().where(
                    models.api_cell_mappings.c.name.not_in(CELL_NAMES)
                )
            )
            for name, url in cell_urls.items():  # a test may have re-aimed a mapping
                conn.execute(
                    models.api_cell_mappings.update()
                    .where(models.api_cell_mappings.c.name == name)
                    .values(database_connection=url.render_as_string(hide_password=False))
                )
            initialise_state(conn, "tests")
            first = conn.scalar(
                sa.select(models.api_cell_mappings.c.uuid).where(
                    models.api_cell_mappings.c.name == CELL_NAMES[0]
                )
            )
            conn.execute(models.api_state.update().values(default_cell_uuid=first))
    finally:
        api.dispose()
    for url in cell_urls.values():
        engine = create_engine(url, settings)
        try:
            _empty(engine, models.cell_metadata, keep=set())
            with engine.begin() as conn:
                # The fence: every cell takes the API database's cell-only, epoch 0.
                conn.execute(
                    models.cell_state.insert().values(
                        id=1, phase="cell-only", epoch=0, changed_at=dt.datetime(2026, 1, 1)
                    )
                )
        finally:
            engine.dispose()


_sqlite_template: list[tuple[URL, dict[str, URL]]] = []


def _sqlite_urls(folder: Path) -> tuple[URL, dict[str, URL]]:
    """Return the URLs of a topology's API database and cells as files in ``folder``."""
    api_url = sa.URL.create("sqlite+pysqlite", database=str(folder / "api.sqlite"))
    cell_urls = {
        n: sa.URL.create("sqlite+pysqlite", database=str(folder / f"{n}.sqlite"))
        for n in CELL_NAMES
    }
    return api_url, cell_urls


def _synced_sqlite(settings: Settings, folder: Path) -> tuple[URL, dict[str, URL]]:
    """Create and sync an API database and its cells as SQLite files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    api_url, cell_urls = _sqlite_urls(folder)
    with connect(str(api_url), settings=settings, create=True) as dbs:
        commands.sync_schema(dbs)
        for name in CELL_NAMES:
            commands.add_cell(
                dbs, name, str(cell_urls[name]), default=name == CELL_NAMES[0], create=True
            )
        commands.sync_schema(dbs)
    return api_url, cell_urls


def _sqlite_topology(settings: Settings, folder: Path) -> tuple[URL, dict[str, URL]]:
    """Return a synced, empty SQLite topology of files in ``folder``, copied from a template.

    Syncing three databases costs a test far more than copying three files, so the
    first call of each process syncs a set of its own and every call copies it (through
    SQLite's backup API, whole and consistent), then empties it as
    :func:`empty_topology` empties the servers' databases, mappings re-aimed at the copies.
    """
    if not _sqlite_template:
        template = Path(tempfile.mkdtemp(prefix="sdbtest-sqlite-template-"))
        _sqlite_template.append(_synced_sqlite(settings, template))
    template_api, template_cells = _sqlite_template[0]
    folder.mkdir(parents=True, exist_ok=True)
    api_url, cell_urls = _sqlite_urls(folder)
    pairs = [(template_api, api_url)] + [(template_cells[n], cell_urls[n]) for n in CELL_NAMES]
    for source, target in pairs:
        with (
            contextlib.closing(sqlite3.connect(str(source.database))) as src,
            contextlib.closing(sqlite3.connect(str(target.database))) as dst,
        ):
            src.backup(dst)
    empty_topology(api_url, cell_urls, settings)
    return api_url, cell_urls


@pytest.fixture
def topology(server: Server, settings: Settings, tmp_path: Path) -> Iterator[Topology]:
    """An API database with cells ``cell1`` (the default) and ``cell2``, all synced, empty."""
    if server.backend == "sqlite":
        api_url, cell_urls = _sqlite_topology(settings, tmp_path / "topology")
    else:
        api_url, cell_urls = _server_topology(server, settings)
    dbs = connect(api_url.render_as_string(hide_password=False), settings=settings)
    try:
        yield Topology(server.backend, api_url, cell_urls, settings, dbs)
    finally:
        dbs.dispose()


@dataclasses.dataclass
class FreshDatabases:
    """Three empty databases (API and two cells) nobody has touched yet."""

    backend: str
    server: Server
    api_url: URL
    cell_urls: dict[str, URL]


@pytest.fixture
def fresh(server: Server, tmp_path: Path) -> Iterator[FreshDatabases]:
    """Empty databases, created for this test and dropped after it."""
    if server.backend == "sqlite":
        server = Server("sqlite", folder=tmp_path)
    names = {"api": _db_name("fresh_api")} | {n: _db_name(f"fresh_{n}") for n in CELL_NAMES}
    urls = {role: server.create(name) for role, name in names.items()}
    yield FreshDatabases(server.backend, server, urls.pop("api"), {n: urls[n] for n in CELL_NAMES})
    for name in names.values():
        server.drop(name)


@pytest.fixture
def single_cell(fresh: FreshDatabases, settings: Settings) -> Iterator[Topology]:
    """The common Nova deployment: cell0 mapped first (on ``cell2``'s database), then cell1."""
    from tests.support.helpers import map_cell0

    api_url = fresh.api_url.render_as_string(hide_password=False)
    dbs = connect(api_url, settings=settings, create=True)
    try:
        commands.sync_schema(dbs)
        map_cell0(dbs, fresh.cell_urls["cell2"])
        cell1 = fresh.cell_urls["cell1"].render_as_string(hide_password=False)
        commands.add_cell(dbs, "cell1", cell1, create=True)
        commands.sync_schema(dbs)
        assert [c.name for c in dbs.refresh_cells()] == ["cell0", "cell1"]
        urls = {"cell0": fresh.cell_urls["cell2"], "cell1": fresh.cell_urls["cell1"]}
        yield Topology(fresh.backend, fresh.api_url, urls, settings, dbs)
    finally:
        dbs.dispose()


__all__ = ["FreshDatabases", "Topology", "schema"]


# --------------------------------------------------------------------------- proxies


@pytest.fixture
def api_behind_proxy(topology: Topology) -> Iterator[tuple[Databases, Proxy]]:
    """The topology's databases, the API one reached through a proxy."""
    with proxied(topology.api_url) as proxy:
        url = proxy.url_for(topology.api_url).render_as_string(hide_password=False)
        dbs = connect(url, settings=topology.settings)
        try:
            yield dbs, proxy
        finally:
            dbs.dispose()


@pytest.fixture
def cell_behind_proxy(topology: Topology) -> Iterator[tuple[Databases, Proxy]]:
    """The topology's databases, cell1 reached through a proxy."""
    with proxied(topology.cell_urls["cell1"]) as proxy:
        dbs = connect(topology.api_url_text, settings=topology.settings)
        cells = tuple(
            dataclasses.replace(c, engine=create_engine(proxy.url_for(c.url), topology.settings))
            if c.name == "cell1"
            else c
            for c in dbs.cells
        )
        dbs._cells = cells
        try:
            yield dbs, proxy
        finally:
            cells[0].engine.dispose()
            dbs.dispose()


@pytest.fixture
def cli_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """Run shadowdb's command line in-process from an empty folder; logging restored after."""
    saved = structlog.get_config()
    monkeypatch.delenv("FORCE_COLOR", raising=False)  # keep rich's output plain
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    yield Cli({"SHADOWDB_DATA_DIR": str(tmp_path / "data")})
    structlog.configure(**saved)  # the command line configured logging for its stderr
