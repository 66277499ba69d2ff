"""Make the empty databases a benchmark deploys shadowdb on (SQLite files, MariaDB, PostgreSQL)."""

from __future__ import annotations

import os
import platform
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa


def mysql_url(name: str) -> str:
    """Return the URL of MariaDB database ``name`` (``SHADOWDB_BENCH_MYSQL_URL``'s server)."""
    base = os.environ.get("SHADOWDB_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")
    return (
        sa.make_url(base)
        .set(drivername="mysql+pymysql", database=name)
        .render_as_string(hide_password=False)
    )


def postgresql_url(name: str) -> str:
    """Return the URL of PostgreSQL database ``name`` (``SHADOWDB_BENCH_POSTGRESQL_URL``'s)."""
    base = os.environ.get(
        "SHADOWDB_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    return (
        sa.make_url(base)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


def _fresh_postgresql(db_names: Sequence[str]) -> list[str]:
    admin = sa.create_engine(postgresql_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in db_names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as err:
        pytest.skip(f"postgresql unreachable: {err}")
    finally:
        admin.dispose()
    return [postgresql_url(n) for n in db_names]


def fresh_urls(backend: str, topic: str, db_names: Sequence[str]) -> list[str]:
    """Return the URLs of an API and cell databases, emptied: SQLite files or a server's.

    SQLite files live in ``$SHADOWDB_BENCH_DIR/<topic>`` (default ``.bench-data``), named
    api, cell1, cell2; MariaDB and PostgreSQL databases are ``db_names``, dropped and
    created anew.
    """
    if backend == "sqlite":
        folder = Path(os.environ.get("SHADOWDB_BENCH_DIR", ".bench-data")).resolve() / topic
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("*.sqlite*"):
            path.unlink()
        return [f"sqlite:///{folder / n}.sqlite" for n in ("api", "cell1", "cell2")]
    if backend == "postgresql":
        return _fresh_postgresql(db_names)
    admin = sa.create_engine(mysql_url(""), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in db_names:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
                conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except sa.exc.OperationalError as err:
        pytest.skip(f"mysql unreachable: {err}")
    finally:
        admin.dispose()
    return [mysql_url(n) for n in db_names]


#: MariaDB settings recorded beside every MariaDB figure.
_MARIADB_SETTINGS = (
    "version",
    "innodb_buffer_pool_size",
    "innodb_flush_log_at_trx_commit",
    "innodb_doublewrite",
    "sync_binlog",
    "log_bin",
    "tx_isolation",
)


def server_settings(backend: str, engine: sa.Engine) -> dict[str, str]:
    """Return the server settings a figure depends on, to record beside it."""
    if backend == "sqlite":
        return {"sqlite": sqlite3.sqlite_version, "python": platform.python_version()}
    if backend == "postgresql":
        with engine.connect() as conn:
            return {
                n: str(conn.exec_driver_sql(f"SHOW {n}").scalar_one())
                for n in ("server_version", "shared_buffers", "synchronous_commit", "fsync")
            }
    with engine.connect() as conn:
        return {
            n: str(conn.exec_driver_sql(f"SELECT @@{n}").scalar_one()) for n in _MARIADB_SETTINGS
        }
