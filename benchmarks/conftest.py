"""Set up the hot-path benchmarks: the 1M-instance data set on SQLite, MariaDB and PostgreSQL.

The data set (``benchmarks/dataset.py``) is built once and reused across runs: the
SQLite files live in ``$SHADOWDB_BENCH_DIR`` (default ``./.bench-data``), the MariaDB
and PostgreSQL databases are ``sdbbench_*`` on the local servers (MariaDB as root,
PostgreSQL as postgres). A backend that cannot be reached is skipped.

Each data set is read as two deployments (``TOPOLOGIES``): ``two-cells``, its API
database with ``cell1`` and ``cell2``, and ``single-cell``, a second API database that
maps cell0 first and then the same ``cell1`` (``dataset.single_cell``).
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
from shadowdb.settings import Settings
from shadowdb.state import Phase

BACKENDS = dataset.BACKENDS
TOPOLOGIES = ("single-cell", "two-cells")


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
        else:
            _built[f"{backend} single-cell"] = dataset.single_cell(built, bench_dir() / backend)
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


_deployments: dict[tuple[str, str], tuple[dataset.DataSet, Databases]] = {}


@pytest.fixture(scope="session")
def deployments() -> Iterator[dict[tuple[str, str], tuple[dataset.DataSet, Databases]]]:
    """Every deployment connected so far, by (backend, topology); disposed at the end."""
    yield _deployments
    for _, databases in _deployments.values():
        databases.dispose()


@pytest.fixture
def deployment(
    backend: str,
    topology: str,
    deployments: dict[tuple[str, str], tuple[dataset.DataSet, Databases]],
) -> tuple[dataset.DataSet, Databases]:
    """The data set read as ``topology``, and its databases as a scheduler holds them."""
    key = (backend, topology)
    if key not in deployments:
        built = data_set(backend)
        if topology == "single-cell":
            single = _built[f"{backend} single-cell"]
            assert not isinstance(single, str)
            built = single
        databases = connect(built.api_url, settings=Settings(actor="bench"))
        deployments[key] = (built, databases)
    return deployments[key]


def set_phase(dbs: Databases, phase: Phase) -> None:
    """Put the data set's deployment in ``phase`` (directly: the data is already level)."""
    with dbs.api.begin() as conn:
        conn.execute(models.api_state.update().values(phase=phase.value))
    dbs.phases.invalidate()
    assert dbs.phases.get().phase is phase


def server_settings(backend: str, dbs: Databases) -> dict[str, str]:
    """Return the server settings that bear on the figures, for the report."""
    if backend == "sqlite":
        import sqlite3

        return {"sqlite": sqlite3.sqlite_version}
    if backend == "postgresql":
        with dbs.api.connect() as conn:
            return {
                n: str(conn.exec_driver_sql(f"SHOW {n}").scalar_one())
                for n in ("server_version", "shared_buffers", "effective_cache_size", "jit")
            }
    names = (
        "version",
        "innodb_buffer_pool_size",
        "innodb_flush_log_at_trx_commit",
        "in_predicate_conversion_threshold",
        "innodb_adaptive_hash_index",
    )
    with dbs.api.connect() as conn:
        return {n: str(conn.exec_driver_sql(f"SELECT @@{n}").scalar_one()) for n in names}
