"""Measure diff-report's rate beside a plain fetch-and-hash of the same rows, in one run.

The data: 10,000, 30,000 or 100,000 groups, level in the API database and the cells (two
thirds in ``cell1``, a third in ``cell2``), each with two policies and five members: eight
rows per group per side, on SQLite, MariaDB and PostgreSQL. Measured, on each backend and
size:

* ``scan-hash-dbapi`` and ``scan-hash-core``, the baseline: read every live row the diff
  accounts for (groups; policies and members joined to their live group, for the group
  uuid) from the API database and from each cell, and MD5 each row in Python; through the
  bare driver (sqlite3, PyMySQL, psycopg) and through SQLAlchemy Core. The faster is the
  floor.
* ``diff-report``: :func:`shadowdb.commands.diff_report` on the clean deployment, which
  must report it clean having checksummed exactly those rows (and stored its result).

The figures are rows per second (all rows of both sides / best round) and the diff's ratio
to the floor, held to :data:`TARGET` (the servers compute the checksums themselves and
must beat fetching the rows; SQLite hashes them in Python). A separate test runs one
diff-report in a fresh process and records its peak RSS during the run (Linux ``VmHWM``,
reset just before it) against the process's RSS before it, and, in this process, the peak
of Python allocations during a run (``tracemalloc``), held to a fixed bound: the diff's
memory follows its chunk size, not the number of rows.

Pick a size with ``-k``: ``-k 10k`` runs the smallest on every backend. The deployment
lives in ``$SHADOWDB_BENCH_DIR/diff`` (SQLite; default ``./.bench-data``), in the
``sdbbench_diff_*`` databases on the local MariaDB (``SHADOWDB_BENCH_MYSQL_URL``, default
root on 127.0.0.1) and on the local PostgreSQL (as postgres), rebuilt for every size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from benchmarks.deployments import fresh_urls, server_settings
from shadowdb import commands, models
from shadowdb.databases import Databases, connect
from shadowdb.diff import DEFAULT_CHUNK
from shadowdb.settings import Settings
from shadowdb.state import Phase, utcnow

SIZES = (10_000, 30_000, 100_000)
POLICIES = ("anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity")
MEMBERS = 5
#: Rows per group on one side: the group, two policies, its members.
ROWS_PER_GROUP = 1 + 2 + MEMBERS
BATCH = 5_000
ROUNDS = 5
#: diff-report must check at least this multiple of the plain scan's rows per second: the
#: servers checksum in place, SQLite streams every row through Python.
TARGET = {"sqlite": 0.5, "mysql": 5.0, "postgresql": 5.0}
#: Python allocations a clean diff may peak at (it holds chunk sums, not rows).
PEAK_PYTHON_BYTES = 16 * 1024 * 1024
NOW = dt.datetime(2026, 5, 1, 12, 0, 0)
SEED = 20260501

_MARKS = {
    "sqlite": pytest.mark.sqlite,
    "mysql": pytest.mark.mysql,
    "postgresql": pytest.mark.postgresql,
}
DEPLOYMENTS = [
    pytest.param((backend, size), marks=mark, id=f"{backend}-{size // 1000}k")
    for size in SIZES
    for backend, mark in _MARKS.items()
]
_DB_NAMES = ("sdbbench_diff_api", "sdbbench_diff_cell1", "sdbbench_diff_cell2")


@dataclasses.dataclass
class Deployment:
    """The benchmark's deployment: its URLs and shadowdb's databases."""

    backend: str
    groups: int
    api_url: str
    cell_urls: tuple[str, str]
    dbs: Databases

    @property
    def rows_per_side(self) -> int:
        return self.groups * ROWS_PER_GROUP

    @property
    def rows(self) -> int:
        """Every row the diff accounts for: both sides."""
        return 2 * self.rows_per_side


# --------------------------------------------------------------------------- set-up


def _urls(backend: str) -> list[str]:
    return fresh_urls(backend, "diff", _DB_NAMES)


def _groups(count: int) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    return [
        {
            "uuid": str(uuidlib.UUID(int=rng.getrandbits(128), version=4)),
            "name": f"group-{i}",
            "project_id": f"p{i % 97}",
            "user_id": f"u{i % 13}",
            "created_at": NOW,
            "policies": [POLICIES[i % 4], POLICIES[(i + 1) % 4]],
            "members": [
                str(uuidlib.UUID(int=rng.getrandbits(128), version=4)) for _ in range(MEMBERS)
            ],
        }
        for i in range(count)
    ]


def _seed(engine: sa.Engine, groups: list[dict[str, Any]], *, cell: bool) -> None:
    """Insert ``groups`` with ids 1..n, their policy and members, in batches."""
    if cell:
        g, p, m, column = (
            models.cell_groups,
            models.cell_policies,
            models.cell_members,
            "instance_id",
        )
    else:
        g, p, m, column = (
            models.api_groups,
            models.api_policies,
            models.api_members,
            "instance_uuid",
        )
    extra = {"deleted": 0} if cell else {}
    with engine.begin() as conn:
        for start in range(0, len(groups), BATCH):
            batch = list(enumerate(groups[start : start + BATCH], start=start + 1))
            conn.execute(
                g.insert(),
                [
                    {
                        "id": i,
                        "uuid": x["uuid"],
                        "name": x["name"],
                        "project_id": x["project_id"],
                        "user_id": x["user_id"],
                        "created_at": x["created_at"],
                        **extra,
                    }
                    for i, x in batch
                ],
            )
            conn.execute(
                p.insert(),
                [
                    {"group_id": i, "policy": policy, "created_at": NOW, **extra}
                    for i, x in batch
                    for policy in x["policies"]
                ],
            )
            conn.execute(
                m.insert(),
                [
                    {"group_id": i, column: member, "created_at": NOW, **extra}
                    for i, x in batch
                    for member in x["members"]
                ],
            )


def build(backend: str, count: int) -> Deployment:
    """Create ``count`` groups on ``backend`` afresh: level, in ``dual-write-cell-reads``."""
    api_url, cell1_url, cell2_url = _urls(backend)
    settings = Settings(actor="bench", phase_ttl=0.0, write_grace=0.0)
    dbs = connect(api_url, settings=settings, create=True)
    commands.sync_schema(dbs)
    commands.add_cell(dbs, "cell1", cell1_url, default=True, create=True)
    commands.add_cell(dbs, "cell2", cell2_url, create=True)
    commands.sync_schema(dbs)
    groups = _groups(count)
    cut = count * 2 // 3
    _seed(dbs.api, groups, cell=False)
    _seed(dbs.cell("cell1").engine, groups[:cut], cell=True)
    _seed(dbs.cell("cell2").engine, groups[cut:], cell=True)
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_state.update().values(
                phase=Phase.DUAL_WRITE_CELL_READS.value,
                epoch=1,
                changed_at=utcnow() - dt.timedelta(minutes=1),
            )
        )
    dbs.phases.invalidate()
    if backend == "postgresql":
        # Fresh tables: give the planner their statistics, as autovacuum would.
        for engine in (dbs.api, *(c.engine for c in dbs.cells)):
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
    return Deployment(backend, count, api_url, (cell1_url, cell2_url), dbs)


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    backend, count = request.param
    deployment = build(backend, count)
    try:
        yield deployment
    finally:
        deployment.dbs.dispose()


# --------------------------------------------------------------------------- the baseline

#: The rows the diff accounts for, per side: (sql, live filter) on each kind of database.
_SELECTS = {
    "api": (
        "SELECT uuid, name, user_id, project_id, created_at FROM instance_groups",
        "SELECT g.uuid, p.policy FROM instance_group_policy p"
        " JOIN instance_groups g ON g.id = p.group_id",
        "SELECT g.uuid, m.instance_uuid FROM instance_group_member m"
        " JOIN instance_groups g ON g.id = m.group_id",
    ),
    "cell": (
        "SELECT uuid, name, user_id, project_id, created_at FROM instance_groups WHERE deleted = 0",
        "SELECT g.uuid, p.policy FROM instance_group_policy p"
        " JOIN instance_groups g ON g.id = p.group_id WHERE g.deleted = 0 AND p.deleted = 0",
        "SELECT g.uuid, m.instance_id FROM instance_group_member m"
        " JOIN instance_groups g ON g.id = m.group_id WHERE g.deleted = 0 AND m.deleted = 0",
    ),
}


def _hash_rows(rows: Any) -> int:
    seen = 0
    for row in rows:
        hashlib.md5("|".join(map(str, row)).encode(), usedforsecurity=False).digest()
        seen += 1
    return seen


def _dbapi_connect(url: str) -> Any:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return sqlite3.connect(str(parsed.database))
    if parsed.get_backend_name() == "postgresql":
        import psycopg

        return psycopg.connect(
            host=parsed.host,
            port=parsed.port or 5432,
            user=parsed.username,
            password=parsed.password or "",
            dbname=parsed.database,
        )
    import pymysql

    return pymysql.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=parsed.username,
        password=parsed.password or "",
        database=parsed.database,
        charset="utf8mb4",
    )


def scan_hash_dbapi(dep: Deployment) -> int:
    """Read and MD5 every row the diff accounts for, on bare DB-API connections."""
    seen = 0
    for url, kind in ((dep.api_url, "api"), *((u, "cell") for u in dep.cell_urls)):
        conn = _dbapi_connect(url)
        try:
            cursor = conn.cursor()
            for sql in _SELECTS[kind]:
                cursor.execute(sql)
                seen += _hash_rows(cursor)
        finally:
            conn.close()
    return seen


def scan_hash_core(dep: Deployment) -> int:
    """The same reads through SQLAlchemy Core on shadowdb's engines."""
    seen = 0
    engines = [(dep.dbs.api, "api"), *((c.engine, "cell") for c in dep.dbs.cells)]
    for engine, kind in engines:
        with engine.connect() as conn:
            for sql in _SELECTS[kind]:
                seen += _hash_rows(conn.exec_driver_sql(sql))
    return seen


def run_diff(dep: Deployment) -> int:
    """Run diff-report on the clean deployment; return the rows it checksummed."""
    report = commands.diff_report(dep.dbs)
    assert report.clean, report.findings[:5]
    assert report.rows.api_hashed == report.rows.cells_hashed == dep.rows_per_side
    assert report.rows.chunks_differing == 0
    return report.rows.api_hashed + report.rows.cells_hashed


# --------------------------------------------------------------------------- measurements

_best: dict[tuple[str, int, str], float] = {}

PLAIN: dict[str, Callable[[Deployment], int]] = {
    "scan-hash-dbapi": scan_hash_dbapi,
    "scan-hash-core": scan_hash_core,
}


def _measure(benchmark: Any, dep: Deployment, what: str, fn: Callable[[], int]) -> float:
    rows = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert rows == dep.rows
    best = float(benchmark.stats.stats.min)
    _best[(dep.backend, dep.groups, what)] = best
    benchmark.extra_info.update(
        {
            "backend": dep.backend,
            "groups": dep.groups,
            "what": what,
            "rows": dep.rows,
            "rows_per_s": round(dep.rows / best),
            "settings": _settings(dep),
        }
    )
    return best


def _settings(dep: Deployment) -> dict[str, str]:
    return server_settings(dep.backend, dep.dbs.api)


def _floor(dep: Deployment) -> float:
    """Return the faster plain scan's best seconds (measured here if it was deselected)."""
    for what, scan in PLAIN.items():
        if (dep.backend, dep.groups, what) not in _best:
            scan(dep)  # warm-up, as pedantic does
            times = []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                assert scan(dep) == dep.rows
                times.append(time.perf_counter() - started)
            _best[(dep.backend, dep.groups, what)] = min(times)
    return min(_best[(dep.backend, dep.groups, what)] for what in PLAIN)


@pytest.mark.benchmark(group="diff-report")
@pytest.mark.parametrize("what", list(PLAIN))
def test_plain_scan_and_hash(benchmark: Any, deployment: Deployment, what: str) -> None:
    _measure(benchmark, deployment, what, lambda: PLAIN[what](deployment))


@pytest.mark.benchmark(group="diff-report")
def test_diff_report(benchmark: Any, deployment: Deployment) -> None:
    seconds = _measure(benchmark, deployment, "diff-report", lambda: run_diff(deployment))
    ratio = _floor(deployment) / seconds
    benchmark.extra_info["ratio_to_plain_scan"] = round(ratio, 3)
    rows = deployment.rows
    print(
        f"\n{deployment.backend}, {deployment.groups:,} groups: diff-report "
        f"{rows / seconds:,.0f} rows/s, floor {rows / _floor(deployment):,.0f} rows/s, "
        f"ratio {ratio:.2f}"
    )
    target = TARGET[deployment.backend]
    assert ratio >= target, f"diff-report at {ratio:.2f}x the plain scan's rate, not {target}x"


_PROCESS = """
import json, resource, sys
from shadowdb import commands
from shadowdb.databases import connect
from shadowdb.settings import Settings


def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


with connect(sys.argv[1], settings=Settings(actor="bench")) as dbs:
    dbs.refresh_cells()
    try:
        # Restart the high-water mark here (Linux): the peak is then the diff's own.
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    before = status()
    report = commands.diff_report(dbs, chunk_size=int(sys.argv[2]))
    after = status()
print(json.dumps({
    "clean": report.clean,
    "rows": report.rows.api_hashed + report.rows.cells_hashed,
    "rss_before_kib": before["VmRSS"],
    "rss_peak_kib": after["VmHWM"],
    "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def test_clean_groups_in_bounded_memory(deployment: Deployment) -> None:
    """One diff in a fresh process: its peak RSS; in this one: its Python allocations."""
    out = subprocess.run(
        [sys.executable, "-c", _PROCESS, deployment.api_url, str(DEFAULT_CHUNK)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["clean"] and figures["rows"] == deployment.rows
    tracemalloc.start()
    try:
        assert run_diff(deployment) == deployment.rows
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = figures["rss_peak_kib"] - figures["rss_before_kib"]
    print(
        f"\n{deployment.backend}: {deployment.groups:,} clean groups reported clean; peak RSS "
        "during the "
        f"diff {figures['rss_peak_kib'] / 1024:.1f} MiB ({growth / 1024:+.1f} MiB over the "
        f"connected process before it; whole-process ru_maxrss "
        f"{figures['maxrss_kib'] / 1024:.1f} MiB); Python allocations peaked at "
        f"{peak / 2**20:.2f} MiB (chunk size {DEFAULT_CHUNK})"
    )
    assert peak < PEAK_PYTHON_BYTES, f"the diff held {peak / 2**20:.1f} MiB of Python objects"


def test_every_chunk_differing_in_bounded_memory(deployment: Deployment) -> None:
    """Rename 500 API copies across every chunk: all are read row by row, one at a time.

    Every (groups / 500)-th group in uuid order, so that each chunk (a range of uuids
    holding about 1,000 groups) has some: 500 drawn at random miss one of 100 chunks about
    half the time.
    """
    g = models.api_groups
    with deployment.dbs.api.begin() as conn:
        ordered = conn.scalars(sa.select(g.c.id).order_by(g.c.uuid)).all()
        ids = ordered[:: len(ordered) // 500][:500]
        names = {
            r.id: r.name for r in conn.execute(sa.select(g.c.id, g.c.name).where(g.c.id.in_(ids)))
        }
        conn.execute(g.update().where(g.c.id.in_(ids)).values(name=g.c.name + "!"))
    try:
        # Timed on its own: tracemalloc slows every allocation down several times.
        started = time.perf_counter()
        report = commands.diff_report(deployment.dbs, keys_only=True)
        seconds = time.perf_counter() - started
        assert report.total == 500 and report.counts == {"field-mismatch": 500}
        assert report.rows.chunks_differing == report.rows.chunks - 1  # all but the odd one
        tracemalloc.start()
        try:
            assert commands.diff_report(deployment.dbs, keys_only=True).total == 500
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(
            f"\n{deployment.backend}: 500 of {deployment.groups:,} groups differing, in "
            f"{report.rows.chunks_differing} chunks: reported in {seconds:.2f}s, "
            f"{report.rows.api_compared + report.rows.cells_compared:,} rows read row by row, "
            f"Python allocations peaked at {peak / 2**20:.2f} MiB"
        )
        assert peak < PEAK_PYTHON_BYTES, f"the diff held {peak / 2**20:.1f} MiB of Python objects"
    finally:
        with deployment.dbs.api.begin() as conn:
            conn.execute(
                g.update().where(g.c.id == sa.bindparam("gid")).values(name=sa.bindparam("old")),
                [{"gid": gid, "old": name} for gid, name in names.items()],
            )
