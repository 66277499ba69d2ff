"""Set up the hot-path benchmarks: the 1M-instance data set on SQLite and MariaDB.

The data set (``benchmarks/dataset.py``) is built once and reused across runs: the
SQLite files live in ``$SHADOWDB_BENCH_DIR`` (default ``./.bench-data``), the MariaDB
databases are ``sdbbench_*`` on ``SHADOWDB_BENCH_MYSQL_URL`` (default the local server
as root). A backend that cannot be reached is skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

from benchmarks import dataset
from shadowdb import models
from shadowdb.databases import Databases, connect
from shadowdb.phase import Phase
from shadowdb.settings import Settings

BACKENDS = ("sqlite", "mysql")


def pytest_configure(config: pytest.Config) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=False,
    )


def bench_dir() -> Path:
    """Return where the SQLite data set lives."""
    return Path(os.environ.get("SHADOWDB_BENCH_DIR", ".bench-data")).resolve()


_built: dict[str, dataset.DataSet | str] = {}


def data_set(backend: str) -> dataset.DataSet:
    """Build (or reuse) the data set on ``backend``; skip if the backend is unreachable."""
    if backend not in _built:
        try:
            built = dataset.build(backend, bench_dir() / backend)
            dataset.add_newton_tables(built)
            _built[backend] = built
        except sa.exc.OperationalError as err:
            _built[backend] = f"{backend} unreachable: {err}"
    built = _built[backend]
    if isinstance(built, str):
        pytest.skip(built)
    return built


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def data(backend: str) -> dataset.DataSet:
    return data_set(backend)


@pytest.fixture(scope="session")
def dbs(data: dataset.DataSet) -> Iterator[Databases]:
    """The deployment as a scheduler process holds it (default phase cache lifetime)."""
    with connect(data.api_url, settings=Settings(actor="bench")) as databases:
        yield databases


def set_phase(dbs: Databases, phase: Phase) -> None:
    """Put the data set's deployment in ``phase`` (directly: the data is already level)."""
    with dbs.api.begin() as conn:
        conn.execute(models.api_state.update().values(phase=phase.value))
    dbs.phases.invalidate()
    assert dbs.phases.get().phase is phase


def server_settings(backend: str, dbs: Databases) -> dict[str, str]:
    """Return the server settings that bear on the figures (MariaDB), for the report."""
    if backend != "mysql":
        import sqlite3

        return {"sqlite": sqlite3.sqlite_version}
    names = (
        "version",
        "innodb_buffer_pool_size",
        "innodb_flush_log_at_trx_commit",
        "in_predicate_conversion_threshold",
        "innodb_adaptive_hash_index",
    )
    with dbs.api.connect() as conn:
        return {n: str(conn.exec_driver_sql(f"SELECT @@{n}").scalar_one()) for n in names}
