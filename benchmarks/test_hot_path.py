"""Measure the scheduler's path: the group of an instance, then its hosts.

For every group size and backend, in the same run:

* each phase, through ``shadowdb.scheduler.get_group_details`` (what the scheduler calls);
* the **raw floor**: the same statements sent through the bare DB-API driver (sqlite3,
  PyMySQL, psycopg) on connections held open, in several formulations of the member list
  (one JSON value, or on PostgreSQL one array value, as shadowdb sends it; a plain
  ``IN (?, ?, ...)`` list; shadowdb's packed form on SQLite and MariaDB): the fastest,
  size by size, is the floor. Group lookups read the API database (``floor-api-*``) or
  the cell (``floor-cell-*``), as the phases do;
* a **Nova-style** path (Train and later): the member lookup, the group with its
  policies and members joined (policies x members rows), then full instance rows for
  every member, as Nova's ``InstanceGroup.get_hosts`` loads ``Instance`` objects to keep
  their ``host``;
* a **Nova-style (Newton/Ocata)** path, ``nova-newton``: the same group load, then the
  instance-list query Nova ran until Train: instances left-outer-joined to their info
  cache and security groups, then two queries for their metadata and system metadata,
  one dict per instance with all of it, only to keep ``host``. Its tables are Nova's, added
  to the benchmark's data set only (``dataset.add_newton_tables``).

Every path runs in two **topologies** of the same data: ``single-cell`` (cell0 mapped
first, then ``cell1``: most Nova deployments) and ``two-cells`` (``cell1`` and
``cell2``). The raw floor of a single cell is three statements (the group of the
instance, its members, the hosts in the cell); between two cells it is the fastest of
routing the members through ``instance_mappings`` first (``...-route``) and asking both
cells about every member (``...-scatter``, concurrently; ``...-scatter-seq``, one after
the other). The Nova-style paths ask ``cell1`` alone and run in ``two-cells`` only.

Every benchmark checks its answer against the data set's expected hosts.
"""

from __future__ import annotations

import functools
import json
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from benchmarks import dataset
from benchmarks.conftest import TOPOLOGIES, server_settings, set_phase
from shadowdb import hosts as hosts_mod
from shadowdb import models
from shadowdb.databases import SQLITE_READ_CACHE_KIB, SQLITE_READ_MMAP, Databases, connect
from shadowdb.objects import RequestContext
from shadowdb.packed import PAIR_SEPARATOR, concat_sql, pair_sql, unpack
from shadowdb.scheduler import get_group_details
from shadowdb.settings import Settings
from shadowdb.state import Phase, PhaseState, utcnow

PHASES = [p.value for p in Phase]
#: The member-list formulations of the raw floor, per backend.
FORMS = {
    "sqlite": ("json", "in", "packed"),
    "mysql": ("json", "in", "packed"),
    "postgresql": ("json", "in"),
}
#: How the floor reaches the cells, per topology ("" = the one cell, directly).
WAYS = {"single-cell": ("",), "two-cells": ("-route", "-scatter", "-scatter-seq")}
NOVA = ["nova-style", "nova-newton"]
#: api-only with the members routed through instance_mappings (two cells only): beside
#: api-only itself, which asks both cells, the measure behind hosts.SCATTER_UP_TO.
ROUTED = "api-only-routed"


def floor_paths(backend: str, topology: str) -> list[str]:
    """Return the raw-floor paths measured on ``backend`` in ``topology``."""
    return [
        f"floor-{side}-{form}{way}"
        for side in ("api", "cell")
        for form in FORMS[backend]
        for way in WAYS[topology]
    ]


def paths(backend: str, topology: str) -> list[str]:
    """Return every path measured on ``backend`` in ``topology``."""
    others = [ROUTED, *NOVA] if topology == "two-cells" else []
    return [*PHASES, *floor_paths(backend, topology), *others]


def routed(run: Callable[[], tuple[str, set[str]]]) -> Callable[[], tuple[str, set[str]]]:
    """Wrap ``run`` so that shadowdb routes the members whatever the number of cells."""

    def route_then_run() -> tuple[str, set[str]]:
        saved = hosts_mod.SCATTER_UP_TO
        hosts_mod.SCATTER_UP_TO = 1
        try:
            return run()
        finally:
            hosts_mod.SCATTER_UP_TO = saved

    return route_then_run


#: Every path name, for the contiguous benchmarks' parametrization (each skips what
#: its backend and topology do not measure).
ALL_PATHS = sorted(
    {p for b in FORMS for t in TOPOLOGIES for p in paths(b, t)},
    key=lambda p: (p not in PHASES, p),
)

_LIVE = "i.deleted = 0 AND (i.vm_state <> 'soft-delete' OR i.vm_state IS NULL)"


# --------------------------------------------------------------------------- raw floor


class RawFloor:
    """The scheduler path's statements on bare DB-API connections, kept open.

    ``topology`` is the deployment the data set is read as: ``single-cell`` asks
    ``cell1`` directly; ``two-cells`` routes the members first or asks both cells.
    """

    def __init__(self, data: dataset.DataSet, dbs: Databases, topology: str) -> None:
        self.backend = data.backend
        self.topology = topology
        self.cell_id = dbs.cell("cell1").id
        self.cells: dict[int, Any] = {}
        connect_to = {"sqlite": self._sqlite, "mysql": self._mysql, "postgresql": self._pg}
        open_ = connect_to[data.backend]
        self.api: Any = open_(data.api_url)
        self.cell: Any = open_(data.cell_urls["cell1"])
        self.cells[self.cell_id] = self.cell
        if topology == "two-cells":
            self.cells[dbs.cell("cell2").id] = open_(data.cell_urls["cell2"])
        self.pool = ThreadPoolExecutor(max_workers=2)
        if data.backend == "sqlite":
            self.mark = "?"
            json_from = "json_each(?) AS w CROSS JOIN {table}"
            json_match = "{column} = w.value"
        elif data.backend == "mysql":
            self.mark = "%s"
            json_from = (
                "JSON_TABLE(%s, '$[*]' COLUMNS (uuid VARCHAR(36) CHARACTER SET utf8mb3"
                " PATH '$')) AS w STRAIGHT_JOIN {table}"
            )
            json_match = "{column} = w.uuid"
        else:
            # PostgreSQL: the list as one array value, as shadowdb sends it.
            self.mark = "%s"
            json_from = "{table}"
            json_match = "{column} = ANY(%s)"
        q = self.mark
        self.by_member = {
            side: (
                "SELECT g.id, g.uuid, g.name, g.user_id, g.project_id, g.created_at,"
                " g.updated_at FROM instance_group_member m JOIN instance_groups g"
                f" ON m.group_id = g.id WHERE m.{col} = {q}{live}"
                " ORDER BY m.id LIMIT 1"
            )
            for side, col, live in (
                ("api", "instance_uuid", ""),
                ("cell", "instance_id", " AND m.deleted = 0 AND g.deleted = 0"),
            )
        }
        self.children = {
            side: (
                f"SELECT 0 AS kind, p.id AS row_id, p.policy AS value FROM"
                f" instance_group_policy p WHERE p.group_id = {q}{live.format(t='p')}"
                f" UNION ALL SELECT 1, m.id, m.{col} FROM instance_group_member m"
                f" WHERE m.group_id = {q}{live.format(t='m')} ORDER BY kind, row_id"
            )
            for side, col, live in (
                ("api", "instance_uuid", ""),
                ("cell", "instance_id", " AND {t}.deleted = 0"),
            )
        }
        self.route_json = (
            f"SELECT m.instance_uuid, m.cell_id FROM "
            f"{json_from.format(table='instance_mappings m')}"
            f" WHERE {json_match.format(column='m.instance_uuid')}"
        )
        self.hosts_json = (
            f"SELECT DISTINCT i.host FROM {json_from.format(table='instances i')}"
            f" WHERE {json_match.format(column='i.uuid')} AND {_LIVE} AND i.host IS NOT NULL"
        )
        if "packed" not in FORMS[self.backend]:
            return
        # The "packed" form: the JSON member list in, and every list back as one value
        # with its count, one row per statement (per cell for the routing): on MariaDB
        # shadowdb's GROUP_CONCAT form (shadowdb.packed), on SQLite json_group_array.
        if self.backend == "sqlite":

            def pack(expr: str, order_by: str = "", distinct: bool = False) -> str:
                unique = "DISTINCT " if distinct else ""
                # SQLite keeps the input order of an aggregate's rows (it takes no
                # ORDER BY inside one before 3.44): the subqueries below sort them.
                return f"json_group_array({unique}{expr}) AS v, count({unique}{expr}) AS n"

        else:
            pack = concat_sql  # type: ignore[assignment]
        self.children_packed = {
            side: (
                f"SELECT p.v, p.n, m.v, m.n FROM"
                f" (SELECT {pack('policy', order_by='id')} FROM (SELECT policy, id FROM"
                f" instance_group_policy WHERE group_id = {q}{live} ORDER BY id)) AS p CROSS JOIN"
                f" (SELECT {pack(col, order_by='id')} FROM (SELECT {col}, id FROM"
                f" instance_group_member WHERE group_id = {q}{live} ORDER BY id)) AS m"
            )
            if self.backend == "sqlite"
            else (
                f"SELECT 0 AS kind, {pack('policy', order_by='id')} FROM instance_group_policy"
                f" WHERE group_id = {q}{live} UNION ALL SELECT 1, {pack(col, order_by='id')}"
                f" FROM instance_group_member WHERE group_id = {q}{live}"
            )
            for side, col, live in (
                ("api", "instance_uuid", ""),
                ("cell", "instance_id", " AND deleted = 0"),
            )
        }
        # On MariaDB the member list is written into the statement as a hex literal
        # (as shadowdb does, shadowdb.packed.Hex): PyMySQL would escape a bound string
        # character by character in Python.
        packed_from = json_from
        if self.backend != "sqlite":
            packed_from = json_from.replace(
                "JSON_TABLE(%s,", "JSON_TABLE(CONVERT({hex} USING utf8mb4),"
            )
        pair = (
            "m.cell_id || char(31) || m.instance_uuid"
            if self.backend == "sqlite"
            else pair_sql("m.cell_id", "m.instance_uuid")
        )
        self.route_packed = (
            f"SELECT {pack(pair)}"
            f" FROM {packed_from.format(table='instance_mappings m', hex='{hex}')}"
            f" WHERE {json_match.format(column='m.instance_uuid')}"
        )
        self.hosts_packed = (
            f"SELECT {pack('i.host', distinct=True)}"
            f" FROM {packed_from.format(table='instances i', hex='{hex}')}"
            f" WHERE {json_match.format(column='i.uuid')} AND {_LIVE} AND i.host IS NOT NULL"
        )

    @staticmethod
    def _sqlite(url: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            sa.make_url(url).database or "", isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA mmap_size={SQLITE_READ_MMAP}")
        conn.execute(f"PRAGMA cache_size=-{SQLITE_READ_CACHE_KIB}")
        return conn

    @staticmethod
    def _mysql(url: str) -> pymysql.Connection[Any]:
        u = sa.make_url(url)
        return pymysql.connect(
            host=u.host,
            port=u.port or 3306,
            user=u.username,
            password=u.password or "",
            database=u.database,
            charset="utf8mb4",
            autocommit=True,
        )

    @staticmethod
    def _pg(url: str) -> psycopg.Connection[Any]:
        u = sa.make_url(url)
        return psycopg.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            password=u.password or "",
            dbname=u.database,
            autocommit=True,
        )

    def _all(self, conn: Any, sql: str, params: tuple[Any, ...] | list[Any] | None) -> list[Any]:
        if self.backend == "sqlite":
            return conn.execute(sql, params).fetchall()  # type: ignore[no-any-return]
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def _form(self, form: str, uuids: list[str]) -> tuple[list[Any], str, str]:
        """Return the argument, the routing and the hosts statements for ``uuids``."""
        if form == "json":
            arg: Any = uuids if self.backend == "postgresql" else json.dumps(uuids)
            return [arg], self.route_json, self.hosts_json
        marks = ", ".join([self.mark] * len(uuids))
        route = (
            f"SELECT instance_uuid, cell_id FROM instance_mappings WHERE instance_uuid IN ({marks})"
        )
        hosts = (
            f"SELECT DISTINCT i.host FROM instances i WHERE i.uuid IN ({marks})"
            f" AND {_LIVE} AND i.host IS NOT NULL"
        )
        return uuids, route, hosts

    def _gather(
        self, asks: list[tuple[Any, list[str]]], way: str, one: Callable[..., set[str]]
    ) -> set[str]:
        """Ask every (connection, uuids) pair, concurrently for ``-scatter``."""
        found: set[str] = set()
        if way == "-scatter":
            for hosts in self.pool.map(lambda a: one(*a), asks):
                found |= hosts
        else:
            for conn, uuids in asks:
                found |= one(conn, uuids)
        return found

    def run(self, side: str, form: str, instance: str, way: str = "") -> tuple[str, set[str]]:
        """Run the scheduler path; return the group uuid and its hosts."""
        db = self.api if side == "api" else self.cell
        (row,) = self._all(db, self.by_member[side], (instance,))
        if form == "packed":
            return row[1], self._run_packed(db, side, row[0], way)
        # Sorted, as shadowdb sends them (the faster order when the pool is small).
        members = sorted(v for k, _, v in self._all(db, self.children[side], (row[0], row[0])) if k)
        if way == "-route":
            arg, route, _ = self._form(form, members)
            by_cell: dict[int, list[str]] = {}
            for uuid, cell_id in self._all(self.api, route, arg):
                by_cell.setdefault(cell_id, []).append(uuid)
            assert sum(map(len, by_cell.values())) == len(members)
            asks = [(self.cells[cell_id], uuids) for cell_id, uuids in by_cell.items()]
        else:  # the one cell, or every cell
            asks = [(conn, members) for conn in self.cells.values()]

        def one(conn: Any, uuids: list[str]) -> set[str]:
            arg, _, hosts = self._form(form, uuids)
            return {h for (h,) in self._all(conn, hosts, arg)}

        return row[1], self._gather(asks, way, one)

    def _unpack(self, value: str, count: int) -> list[str]:
        if self.backend == "sqlite":
            values: list[str] = json.loads(value)
            assert len(values) == count
            return values
        return unpack(value, count, "values", "floor")

    def _packed_rows(self, conn: Any, sql: str, uuids: list[str]) -> list[Any]:
        if self.backend == "sqlite":
            return self._all(conn, sql, [json.dumps(uuids)])
        return self._all(conn, self._hexed(sql, uuids), None)

    def _run_packed(self, db: Any, side: str, group_id: int, way: str) -> set[str]:
        rows = self._all(db, self.children_packed[side], (group_id, group_id))
        if self.backend == "sqlite":
            ((_, _, packed, count),) = rows
        else:
            ((packed, count),) = [(v, n) for kind, v, n in rows if kind]
        members = sorted(self._unpack(packed, count))
        if way == "-route":
            ((pairs, count),) = self._packed_rows(self.api, self.route_packed, members)
            by_cell: dict[int, list[str]] = {}
            for pair in self._unpack(pairs, count):
                cell_id, _, uuid = pair.partition(PAIR_SEPARATOR)
                by_cell.setdefault(int(cell_id), []).append(uuid)
            asks = [(self.cells[cell_id], uuids) for cell_id, uuids in by_cell.items()]
        else:
            asks = [(conn, members) for conn in self.cells.values()]

        def one(conn: Any, uuids: list[str]) -> set[str]:
            ((hosts, count),) = self._packed_rows(conn, self.hosts_packed, uuids)
            return set(self._unpack(hosts, count))

        return self._gather(asks, way, one)

    @staticmethod
    def _hexed(sql: str, uuids: list[str]) -> str:
        return sql.replace("{hex}", f"X'{json.dumps(uuids).encode().hex()}'")

    def close(self) -> None:
        """Close the connections and the scatter's threads."""
        self.pool.shutdown()
        for conn in (self.api, *self.cells.values()):
            conn.close()


# --------------------------------------------------------------------------- Nova-style


def _nova_group(dbs: Databases, instance: str) -> tuple[str, list[str]]:
    """Load the group of ``instance`` as Nova does: its uuid and member uuids."""
    g, p, m = models.api_groups, models.api_policies, models.api_members
    with dbs.api.connect() as conn:
        group_id = conn.execute(
            sa.select(m.c.group_id).where(m.c.instance_uuid == instance).limit(1)
        ).scalar_one()
        rows = conn.execute(
            sa.select(g, p.c.policy, m.c.instance_uuid)
            .select_from(
                g.outerjoin(p, p.c.group_id == g.c.id).outerjoin(m, m.c.group_id == g.c.id)
            )
            .where(g.c.id == group_id)
        ).all()
    return rows[0].uuid, list(dict.fromkeys(r.instance_uuid for r in rows))


def nova_style(dbs: Databases, instance: str) -> tuple[str, set[str]]:
    """Load the group object, then full instance rows of its members (pooled engines)."""
    i = models.cell_instances
    group_uuid, members = _nova_group(dbs, instance)
    with dbs.cell("cell1").engine.connect() as conn:
        instances = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(i)
                .where(
                    i.c.uuid.in_(members),
                    i.c.deleted == 0,
                    sa.or_(i.c.vm_state != "soft-delete", i.c.vm_state.is_(None)),
                )
                .order_by(i.c.created_at.desc(), i.c.id.desc())
            )
        ]
    return group_uuid, {o["host"] for o in instances if o["host"]}


def _newton_query() -> tuple[sa.Select[Any], list[list[tuple[str, str]]]]:
    """Nova's pre-Train instance-list query, with its column keys per joined table."""
    i, ic = models.cell_instances, dataset.instance_info_caches
    sgia, sg = dataset.security_group_instance_association, dataset.security_groups
    groups = sgia.join(
        sg, sa.and_(sg.c.id == sgia.c.security_group_id, sgia.c.deleted == 0, sg.c.deleted == 0)
    )
    query = (
        sa.select(i, ic, sg)
        .select_from(
            i.outerjoin(ic, ic.c.instance_uuid == i.c.uuid).outerjoin(
                groups, sa.and_(sgia.c.instance_uuid == i.c.uuid, sgia.c.deleted == 0)
            )
        )
        .where(
            i.c.uuid.in_(sa.bindparam("uuids", expanding=True)),
            i.c.deleted == 0,
            sa.or_(i.c.vm_state != "soft-delete", i.c.vm_state.is_(None)),
        )
        .order_by(i.c.created_at.desc(), i.c.id.desc())
        .set_label_style(sa.LABEL_STYLE_TABLENAME_PLUS_COL)
    )

    def keys(table: sa.Table) -> list[tuple[str, str]]:
        return [(f"{table.name}_{c.name}", c.name) for c in table.c]

    return query, [keys(i), keys(ic), keys(sg)]


_NEWTON_QUERY, (_INSTANCE_KEYS, _CACHE_KEYS, _GROUP_KEYS) = _newton_query()
_NEWTON_METADATA = {
    "metadata": sa.select(dataset.instance_metadata).where(
        dataset.instance_metadata.c.instance_uuid.in_(sa.bindparam("uuids", expanding=True)),
        dataset.instance_metadata.c.deleted == 0,
    ),
    "system_metadata": sa.select(dataset.instance_system_metadata).where(
        dataset.instance_system_metadata.c.instance_uuid.in_(sa.bindparam("uuids", expanding=True)),
        dataset.instance_system_metadata.c.deleted == 0,
    ),
}


def nova_newton(dbs: Databases, instance: str) -> tuple[str, set[str]]:
    """Nova's ``get_hosts`` until Train: full instances with their joins, then ``host``."""
    group_uuid, members = _nova_group(dbs, instance)
    instances: dict[str, dict[str, Any]] = {}
    with dbs.cell("cell1").engine.connect() as conn:
        for row in conn.execute(_NEWTON_QUERY, {"uuids": members}).mappings():
            uuid = row["instances_uuid"]
            obj = instances.get(uuid)
            if obj is None:
                obj = {name: row[key] for key, name in _INSTANCE_KEYS}
                cache = {name: row[key] for key, name in _CACHE_KEYS}
                obj["info_cache"] = cache if cache["id"] is not None else None
                obj["security_groups"] = []
                obj["metadata"] = {}
                obj["system_metadata"] = {}
                instances[uuid] = obj
            group = {name: row[key] for key, name in _GROUP_KEYS}
            if group["id"] is not None:
                obj["security_groups"].append(group)
        returned = list(instances)
        for attr, query in _NEWTON_METADATA.items():
            if not returned:
                break
            for meta in conn.execute(query, {"uuids": returned}):
                instances[meta.instance_uuid][attr][meta.key] = meta.value
    return group_uuid, {o["host"] for o in instances.values() if o["host"]}


# --------------------------------------------------------------------------- the benchmark

_floors: dict[tuple[str, str], RawFloor] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_floors() -> Iterator[None]:
    """Close the raw floors' connections once the module's benchmarks are done."""
    yield
    for floor in _floors.values():
        floor.close()
    _floors.clear()


def _floor(backend: str, topology: str, data: dataset.DataSet, dbs: Databases) -> RawFloor:
    key = (backend, topology)
    if key not in _floors:
        _floors[key] = RawFloor(data, dbs, topology)
    return _floors[key]


def _floor_run(floor: RawFloor, path: str, instance: str) -> Callable[[], tuple[str, set[str]]]:
    _, side, form, *way = path.split("-", 3)
    return functools.partial(floor.run, side, form, instance, f"-{way[0]}" if way else "")


@pytest.mark.parametrize("size", dataset.SIZES)
@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_scheduler_path(
    benchmark: Any,
    backend: str,
    topology: str,
    deployment: tuple[dataset.DataSet, Databases],
    path: str,
    size: int,
) -> None:
    if path not in paths(backend, topology):
        pytest.skip(f"{path} is not measured on {backend} in {topology}")
    data, dbs = deployment
    group = data.groups[size]
    run: Callable[[], tuple[str, set[str]]]
    if path in PHASES or path == ROUTED:
        set_phase(dbs, Phase(path.removesuffix("-routed")))
        ctx = RequestContext(dbs, None, None, is_admin=True)

        def run() -> tuple[str, set[str]]:
            details = get_group_details(ctx, group.instance)
            assert details is not None
            return details.uuid, set(details.hosts)

        if path == ROUTED:
            run = routed(run)

    elif path.startswith("floor-"):
        run = _floor_run(_floor(backend, topology, data, dbs), path, group.instance)
    else:
        nova = nova_style if path == "nova-style" else nova_newton

        def run() -> tuple[str, set[str]]:
            return nova(dbs, group.instance)

    benchmark.extra_info.update(
        backend=backend,
        topology=topology,
        path=path,
        size=size,
        settings=server_settings(backend, dbs),
    )
    uuid, hosts = benchmark(run)
    assert uuid == group.uuid
    assert hosts == group.expected_hosts


#: Rounds of the interleaved comparison, per group size.
ROUNDS = {10: 60, 100: 60, 1000: 50, 5000: 20}


def _phase_pinned(api_url: str, phase: Phase) -> Databases:
    """Connect a deployment whose phase cache holds ``phase`` for the whole run.

    Each phase then has its own process-like view and the phases can be measured in
    turns, without writing the phase row between calls.
    """
    pinned = connect(api_url, settings=Settings(actor="bench"))
    store = pinned.phases
    store._cached = PhaseState(phase, 0, utcnow(), None)
    store._read_at = time.monotonic()
    store._ttl = 1e9
    return pinned


@pytest.mark.parametrize("size", dataset.SIZES)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_interleaved(
    benchmark: Any,
    backend: str,
    topology: str,
    deployment: tuple[dataset.DataSet, Databases],
    size: int,
) -> None:
    """Measure every path in shuffled turns, so machine noise hits them all alike.

    The contiguous benchmarks above run each path for a second or so in a row; on a
    shared machine, load from elsewhere then lands on some paths and not others. Here
    each round runs every path once, in a fresh random order, and the medians over the
    rounds are the figures ``BENCHMARKS.md`` compares.
    """
    data, dbs = deployment
    group = data.groups[size]
    pinned = {phase: _phase_pinned(data.api_url, Phase(phase)) for phase in PHASES}
    floor = _floor(backend, topology, data, dbs)
    runs: dict[str, Callable[[], tuple[str, set[str]]]] = {}
    for phase, pdbs in pinned.items():
        ctx = RequestContext(pdbs, None, None, is_admin=True)

        def run(ctx: RequestContext = ctx) -> tuple[str, set[str]]:
            details = get_group_details(ctx, group.instance)
            assert details is not None
            return details.uuid, set(details.hosts)

        runs[phase] = run
    for name in floor_paths(backend, topology):
        runs[name] = _floor_run(floor, name, group.instance)
    if topology == "two-cells":
        runs[ROUTED] = routed(runs["api-only"])
        runs["nova-style"] = functools.partial(nova_style, dbs, group.instance)
        runs["nova-newton"] = functools.partial(nova_newton, dbs, group.instance)
    rng = random.Random(size)
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for n in range(ROUNDS[size]):
            order = list(runs)
            rng.shuffle(order)
            for name in order:
                if name in NOVA and backend == "sqlite" and n % 8:
                    continue  # seconds per call on SQLite (BENCHMARKS.md): one turn in eight
                started = time.perf_counter()
                uuid, hosts = runs[name]()
                times[name].append(time.perf_counter() - started)
                assert uuid == group.uuid
                assert hosts == group.expected_hosts
        # One more api-only call for pytest-benchmark's own table, before the pinned
        # deployments are disposed of (a call after would open connections never closed).
        uuid, _ = benchmark.pedantic(runs["api-only"], rounds=1, iterations=1)
        assert uuid == group.uuid
    finally:
        for pdbs in pinned.values():
            pdbs.dispose()
    benchmark.extra_info.update(
        backend=backend,
        topology=topology,
        path="interleaved",
        size=size,
        medians={name: statistics.median(t) for name, t in times.items()},
        # Load from elsewhere only ever adds time: the lower quartile shows the cost
        # with less of it.
        p25={
            name: statistics.quantiles(t, n=4)[0] if len(t) > 1 else t[0]
            for name, t in times.items()
        },
        rounds={name: len(t) for name, t in times.items()},
        settings=server_settings(backend, dbs),
    )


def test_instance_in_no_group(
    benchmark: Any, backend: str, data: dataset.DataSet, dbs: Databases
) -> None:
    """The common case on every boot: one indexed lookup, then None (api-only)."""
    set_phase(dbs, Phase.API_ONLY)
    ctx = RequestContext(dbs, None, None, is_admin=True)
    benchmark.extra_info.update(backend=backend, path="no-group api-only", size=0)
    assert benchmark(get_group_details, ctx, data.no_group_instance) is None


# --------------------------------------------------------------------------- checkout cost

_SERVERS = {
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/mysql",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
}


@pytest.mark.parametrize("engine_kind", ["write-engine", "read-engine"])
@pytest.mark.parametrize("server", sorted(_SERVERS))
def test_checkout_then_select_1(benchmark: Any, server: str, engine_kind: str) -> None:
    """Price a pooled checkout plus ``SELECT 1``: the write engine vs the hot-path engine."""
    from shadowdb.databases import create_engine, create_read_engine, reader

    url = sa.make_url(_SERVERS[server])
    settings = Settings(actor="bench")
    make = create_engine if engine_kind == "write-engine" else create_read_engine
    engine = make(url, settings)
    one = sa.select(sa.literal(1))
    try:
        with reader(engine) as conn:
            conn.execute(one)
    except Exception as err:  # any failure to reach the server
        engine.dispose()
        pytest.skip(f"{server} unreachable: {err}")

    def run() -> int:
        with reader(engine) as conn:
            return int(conn.execute(one).scalar_one())

    benchmark.extra_info.update(backend=server, path=f"checkout {engine_kind}", size=0)
    try:
        assert benchmark(run) == 1
    finally:
        engine.dispose()
