"""Find the test database servers and create, empty and drop databases on them.

Servers come from ``SHADOWDB_TEST_MYSQL_URL`` and ``SHADOWDB_TEST_POSTGRES_URL``
(defaults: the local servers, MariaDB as root without a password, PostgreSQL with trust
authentication). Database names carry the xdist worker id so workers never share one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

BACKENDS = ("sqlite", "mysql", "postgresql")

DEFAULT_URLS = {
    # PyMySQL negotiates TLS with a server that offers it, at ~25 ms per connection;
    # the local test server needs none, and the suite opens many connections.
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/?ssl_disabled=true",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
}
ENV_VARS = {"mysql": "SHADOWDB_TEST_MYSQL_URL", "postgresql": "SHADOWDB_TEST_POSTGRES_URL"}


def worker_id() -> str:
    """Return this pytest-xdist worker's id, or ``main`` outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@dataclasses.dataclass
class Server:
    """One database server (or, for SQLite, a folder) that tests make databases on."""

    backend: str
    admin_url: URL | None = None
    folder: Path | None = None
    _admin: sa.Engine | None = None

    @classmethod
    def for_backend(cls, backend: str, folder: Path) -> Server:
        if backend == "sqlite":
            return cls(backend, folder=folder)
        raw = os.environ.get(ENV_VARS[backend]) or DEFAULT_URLS[backend]
        url = make_url(raw)
        if backend == "mysql":
            url = url.set(drivername="mysql+pymysql")
        else:
            url = url.set(drivername="postgresql+psycopg")
        return cls(backend, admin_url=url)

    @property
    def admin(self) -> sa.Engine:
        if self._admin is None:
            assert self.admin_url is not None
            self._admin = sa.create_engine(
                self.admin_url,
                isolation_level="AUTOCOMMIT",
                poolclass=sa.pool.NullPool,
                connect_args={"connect_timeout": 5},
            )
        return self._admin

    def ping(self) -> None:
        """Raise if the server cannot be reached."""
        if self.backend == "sqlite":
            return
        with self.admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def url(self, name: str) -> URL:
        """Return the URL of database ``name`` on this server."""
        if self.backend == "sqlite":
            assert self.folder is not None
            return sa.URL.create("sqlite+pysqlite", database=str(self.folder / f"{name}.sqlite"))
        assert self.admin_url is not None
        return self.admin_url.set(database=name)

    def create(self, name: str) -> URL:
        """Create database ``name`` empty (dropping any earlier one) and return its URL."""
        self.drop(name)
        if self.backend == "sqlite":
            import sqlite3

            sqlite3.connect(str(self.url(name).database)).close()  # as CREATE DATABASE does
        elif self.backend == "mysql":
            with self.admin.connect() as conn:
                conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        elif self.backend == "postgresql":
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def kill_connection(self, ident: int) -> None:
        """End one server connection from the server side (MariaDB ``KILL``, PostgreSQL
        ``pg_terminate_backend``), as an operator or a failing server would."""
        with self.admin.connect() as conn:
            if self.backend == "mysql":
                conn.execute(sa.text(f"KILL {int(ident)}"))
            else:
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": ident})

    def drop(self, name: str) -> None:
        """Drop database ``name`` if it exists."""
        if self.backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.url(name).database) + suffix).unlink(missing_ok=True)
        elif self.backend == "mysql":
            with self.admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        else:
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def dispose(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
