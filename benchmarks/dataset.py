"""Build the benchmark data set: an API database and two cells, one with 1M instances.

The data set is realistic in the ways that matter to the hosts query: instance rows as
wide as Nova's (most columns filled), members spread at random over the whole table (a
group's instances were booted months apart), some deleted, soft-deleted and host-less
instances, one instance mapping per instance, and thousands of background groups.

Building is idempotent: a database that already holds the expected data is reused (the
``shadowdb_bench_meta`` marker), so repeated benchmark runs skip the minutes of loading.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from shadowdb import commands, models
from shadowdb.databases import Databases, connect
from shadowdb.settings import Settings

#: Group sizes the benchmarks measure.
SIZES = (10, 100, 1000, 5000)
#: Bump when the shape of the data changes: older data sets are rebuilt.
VERSION = 3
SEED = 20260601

CELL1_INSTANCES = 1_000_000
CELL2_INSTANCES = 20_000
HOSTS = 2000
PROJECTS = 500
BACKGROUND_GROUPS = 20_000
BATCH = 5000
NOW = dt.datetime(2026, 5, 1, 12, 0, 0)

_META = "shadowdb_bench_meta"


@dataclasses.dataclass(frozen=True)
class Group:
    """One measured group: its uuid, members and the instance the scheduler asks about."""

    uuid: str
    size: int
    project_id: str
    members: tuple[str, ...]
    expected_hosts: frozenset[str]

    @property
    def instance(self) -> str:
        """The instance whose group the scheduler looks up (the first member)."""
        return self.members[0]


@dataclasses.dataclass(frozen=True)
class DataSet:
    """Where the data set lives and what the measured groups hold."""

    backend: str
    api_url: str
    cell_urls: dict[str, str]
    groups: dict[int, Group]
    no_group_instance: str


def _uuid(rng: random.Random) -> str:
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


def _instance_rows(
    rng: random.Random, count: int, first_id: int
) -> Iterator[tuple[dict[str, Any], str]]:
    """Yield (row, uuid) for ``count`` instances; about 7% are not live or have no host."""
    for n in range(count):
        iid = first_id + n
        uuid = _uuid(rng)
        host_n = rng.randrange(HOSTS)
        host: str | None = f"compute-{host_n:05d}"
        vm_state: str | None = "active"
        deleted = 0
        roll = rng.random()
        if roll < 0.04:
            deleted = iid
            vm_state = "deleted"
        elif roll < 0.05:
            vm_state = "soft-delete"
        elif roll < 0.06:
            host = None
            vm_state = "error"
        elif roll < 0.07:
            vm_state = None
        project = f"project-{rng.randrange(PROJECTS):04d}"
        created = NOW - dt.timedelta(seconds=rng.randrange(3 * 365 * 86400))
        yield (
            {
                "id": iid,
                "created_at": created,
                "updated_at": created,
                "deleted_at": created if deleted else None,
                "user_id": f"user-{rng.randrange(5000):05d}",
                "project_id": project,
                "image_ref": "5f0b7b9c-1c4e-4c4f-9a8e-2c1d6b1f0a11",
                "launch_index": 0,
                "key_name": "ops-key",
                "power_state": 1,
                "vm_state": vm_state,
                "memory_mb": 4096,
                "vcpus": 2,
                "hostname": f"vm-{iid}",
                "host": host,
                "reservation_id": f"r-{iid:010x}",
                "launched_at": created,
                "display_name": f"server-{iid}",
                "display_description": f"server-{iid}",
                "availability_zone": "nova",
                "locked": False,
                "os_type": "linux",
                "launched_on": host,
                "instance_type_id": 3,
                "uuid": uuid,
                "architecture": "x86_64",
                "root_device_name": "/dev/vda",
                "config_drive": "",
                "progress": 0,
                "auto_disk_config": False,
                "shutdown_terminate": False,
                "disable_terminate": False,
                "root_gb": 20,
                "ephemeral_gb": 0,
                "node": host,
                "deleted": deleted,
                "cleaned": 0,
                "hidden": False,
                "compute_id": host_n if host else None,
            },
            uuid,
        )


def _insert(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(table.insert(), list(rows))


#: The backends the data set is built on.
BACKENDS = ("sqlite", "mysql", "postgresql")


def _server_url(backend: str, name: str) -> str:
    if backend == "mysql":
        return f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    if backend == "postgresql":
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name or 'postgres'}"
    raise ValueError(backend)


def _fresh_server_db(backend: str, name: str) -> None:
    admin = sa.create_engine(_server_url(backend, ""), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if backend == "postgresql":
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8'"))
        else:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    admin.dispose()


def _read_meta(url: str) -> dict[str, Any] | None:
    try:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                row = conn.execute(sa.text(f"SELECT version, payload FROM {_META}")).first()
        finally:
            engine.dispose()
    except sa.exc.DBAPIError:
        return None
    if row is None or row[0] != VERSION:
        return None
    import json

    loaded: dict[str, Any] = json.loads(row[1])
    return loaded


def _write_meta(engine: sa.Engine, payload: dict[str, Any]) -> None:
    import json

    with engine.begin() as conn:
        kind = "LONGTEXT" if engine.dialect.name in ("mysql", "mariadb") else "TEXT"
        conn.execute(sa.text(f"CREATE TABLE {_META} (version INTEGER, payload {kind})"))
        conn.execute(
            sa.text(f"INSERT INTO {_META} VALUES (:v, :p)"),
            {"v": VERSION, "p": json.dumps(payload)},
        )


def _decode(backend: str, api_url: str, cell_urls: dict[str, str], meta: dict[str, Any]) -> DataSet:
    groups = {
        int(size): Group(
            g["uuid"], int(size), g["project_id"], tuple(g["members"]), frozenset(g["hosts"])
        )
        for size, g in meta["groups"].items()
    }
    return DataSet(backend, api_url, cell_urls, groups, meta["no_group_instance"])


def build(backend: str, folder: Path) -> DataSet:
    """Return the data set on ``backend`` (one of :data:`BACKENDS`), building it if needed."""
    if backend == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        api_url = f"sqlite:///{folder / 'api.sqlite'}"
        cell_urls = {n: f"sqlite:///{folder / f'{n}.sqlite'}" for n in ("cell1", "cell2")}
    else:
        api_url = _server_url(backend, "sdbbench_api")
        cell_urls = {n: _server_url(backend, f"sdbbench_{n}") for n in ("cell1", "cell2")}
    meta = _read_meta(api_url)
    if meta is not None:
        return _decode(backend, api_url, cell_urls, meta)
    if backend == "sqlite":
        for path in folder.glob("*.sqlite*"):
            path.unlink()
    else:
        for name in ("sdbbench_api", "sdbbench_cell1", "sdbbench_cell2"):
            _fresh_server_db(backend, name)
    settings = Settings(data_dir=folder, actor="bench")
    with connect(api_url, settings=settings, create=True) as dbs:
        commands.sync_schema(dbs)
        for name, url in cell_urls.items():
            commands.add_cell(dbs, name, url, default=name == "cell1", create=True)
        commands.sync_schema(dbs)
        payload = _load(dbs, backend)
        _write_meta(dbs.api, payload)
    return _decode(backend, api_url, cell_urls, payload)


def _tuned(conn: sa.Connection, backend: str) -> None:
    if backend == "mysql":
        conn.exec_driver_sql("SET SESSION unique_checks = 0")
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
    elif backend == "postgresql":
        # Loading only: a crash mid-build rebuilds the data set anyway.
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


def _load(dbs: Databases, backend: str) -> dict[str, Any]:
    rng = random.Random(SEED)
    cells = {c.name: c for c in dbs.cells}
    mapping_rows: list[dict[str, Any]] = []
    live_host: dict[str, str | None] = {}  # cell1 uuid -> host if live and hosted, else None
    project_of: dict[str, str] = {}
    cell1_uuids: list[str] = []
    for name, count in (("cell1", CELL1_INSTANCES), ("cell2", CELL2_INSTANCES)):
        cell = cells[name]
        with cell.engine.connect() as conn:
            batch: list[dict[str, Any]] = []
            with conn.begin():
                _tuned(conn, backend)
                for row, uuid in _instance_rows(rng, count, 1):
                    batch.append(row)
                    live = row["deleted"] == 0 and row["vm_state"] != "soft-delete"
                    if name == "cell1":
                        cell1_uuids.append(uuid)
                        live_host[uuid] = row["host"] if live else None
                        project_of[uuid] = row["project_id"]
                    mapping_rows.append(
                        {
                            "instance_uuid": uuid,
                            "cell_id": cell.id,
                            "project_id": row["project_id"],
                            "user_id": row["user_id"],
                            "queued_for_delete": False,
                            "created_at": NOW,
                        }
                    )
                    if len(batch) >= BATCH:
                        _insert(conn, models.cell_instances, batch)
                        batch = []
                _insert(conn, models.cell_instances, batch)
    with dbs.api.connect() as conn, conn.begin():
        _tuned(conn, backend)
        for start in range(0, len(mapping_rows), BATCH):
            _insert(conn, models.api_instance_mappings, mapping_rows[start : start + BATCH])
    del mapping_rows

    # Measured groups: members drawn at random from the whole of cell1.
    groups: dict[str, Any] = {}
    chosen = rng.sample(cell1_uuids, sum(SIZES))
    offset = 0
    specs: list[tuple[str, str, list[str], str]] = []
    for size in SIZES:
        members = chosen[offset : offset + size]
        offset += size
        # The instance being scheduled is live and placed, like a real member.
        first = next(m for m in members if live_host[m])
        members.remove(first)
        members.insert(0, first)
        group_uuid = _uuid(rng)
        project = project_of[first]
        hosts = sorted({h for m in members if (h := live_host[m])})
        groups[str(size)] = {
            "uuid": group_uuid,
            "project_id": project,
            "members": members,
            "hosts": hosts,
        }
        specs.append((group_uuid, project, members, "anti-affinity" if size < 100 else "affinity"))
    # Background groups (2-5 members each), in both databases as after a backfill.
    pool = rng.sample(cell1_uuids, BACKGROUND_GROUPS * 5)
    for n in range(BACKGROUND_GROUPS):
        members = pool[n * 5 : n * 5 + rng.randint(2, 5)]
        specs.append((_uuid(rng), project_of[members[0]], members, "soft-anti-affinity"))
    for tables in ("api", "cell"):
        engine = dbs.api if tables == "api" else cells["cell1"].engine
        _insert_groups(engine, tables, specs, backend)
    no_group = next(u for u in reversed(cell1_uuids) if live_host[u])
    if backend == "sqlite":
        for engine in (dbs.api, *(c.engine for c in dbs.cells)):
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
    else:
        # PostgreSQL: ANALYZE (not VACUUM: the tables were only inserted into).
        analyze = "ANALYZE TABLE" if backend == "mysql" else "ANALYZE"
        for cell in dbs.cells:
            with cell.engine.begin() as conn:
                conn.exec_driver_sql(f"{analyze} instances, instance_group_member")
        with dbs.api.begin() as conn:
            conn.exec_driver_sql(f"{analyze} instance_mappings, instance_group_member")
    return {"groups": groups, "no_group_instance": no_group}


def _insert_groups(
    engine: sa.Engine, side: str, specs: Sequence[tuple[str, str, list[str], str]], backend: str
) -> None:
    if side == "api":
        g, p, m, col, extra = (
            models.api_groups,
            models.api_policies,
            models.api_members,
            "instance_uuid",
            {},
        )
    else:
        g, p, m, col, extra = (
            models.cell_groups,
            models.cell_policies,
            models.cell_members,
            "instance_id",
            {"deleted": 0},
        )
    with engine.connect() as conn, conn.begin():
        _tuned(conn, backend)
        for start in range(0, len(specs), BATCH):
            part = specs[start : start + BATCH]
            _insert(
                conn,
                g,
                [
                    {
                        "uuid": u,
                        "name": f"group-{u[:8]}",
                        "project_id": proj,
                        "user_id": "user-00001",
                        "created_at": NOW,
                        **extra,
                    }
                    for u, proj, _, _ in part
                ],
            )
        ids = {uuid: gid for uuid, gid in conn.execute(sa.select(g.c.uuid, g.c.id))}
        policies = [
            {"group_id": ids[u], "policy": pol, "created_at": NOW, **extra}
            for u, _, _, pol in specs
        ]
        for start in range(0, len(policies), BATCH):
            _insert(conn, p, policies[start : start + BATCH])
        members = [
            {"group_id": ids[u], col: member, "created_at": NOW, **extra}
            for u, _, ms, _ in specs
            for member in ms
        ]
        for start in range(0, len(members), BATCH):
            _insert(conn, m, members[start : start + BATCH])


# --------------------------------------------------------------------------- Newton tables
#
# The cell tables Nova's instance-list query joined or read before Train (Newton/Ocata
# ``InstanceGroup.get_hosts``): transcribed from Nova's main-database initial migration
# (same columns, types, indexes and foreign keys). They belong to the benchmark's data set
# only, for the Newton-style baseline; shadowdb's schema does not have them.

#: Bump when the shape of the Newton tables' data changes: they are refilled.
NEWTON_VERSION = 1
#: Fill the Newton tables for every group member and for instances with ``id % N == 0``.
NEWTON_SAMPLE_MOD = 1

_NEWTON_META = "shadowdb_bench_newton_meta"

newton_metadata = sa.MetaData()
_MediumText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_mysql = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}
# Stand-in for Nova's ``instances`` (already in the cell), so the foreign keys resolve.
sa.Table("instances", newton_metadata, sa.Column("uuid", sa.String(36), unique=True))


def _soft_delete_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
        sa.Column("deleted_at", sa.DateTime),
    ]


instance_info_caches = sa.Table(
    "instance_info_caches",
    newton_metadata,
    *_soft_delete_columns(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("network_info", _MediumText),
    sa.Column(
        "instance_uuid",
        sa.String(length=36),
        sa.ForeignKey("instances.uuid", name="instance_info_caches_instance_uuid_fkey"),
        nullable=False,
    ),
    sa.Column("deleted", sa.Integer),
    sa.UniqueConstraint("instance_uuid", name="uniq_instance_info_caches0instance_uuid"),
    **_mysql,
)
instance_metadata = sa.Table(
    "instance_metadata",
    newton_metadata,
    *_soft_delete_columns(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("key", sa.String(length=255)),
    sa.Column("value", sa.String(length=255)),
    sa.Column(
        "instance_uuid",
        sa.String(length=36),
        sa.ForeignKey("instances.uuid", name="instance_metadata_instance_uuid_fkey"),
        nullable=True,
    ),
    sa.Column("deleted", sa.Integer),
    sa.Index("instance_metadata_instance_uuid_idx", "instance_uuid"),
    **_mysql,
)
instance_system_metadata = sa.Table(
    "instance_system_metadata",
    newton_metadata,
    *_soft_delete_columns(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column(
        "instance_uuid",
        sa.String(length=36),
        sa.ForeignKey("instances.uuid", name="instance_system_metadata_ibfk_1"),
        nullable=False,
    ),
    sa.Column("key", sa.String(length=255), nullable=False),
    sa.Column("value", sa.String(length=255)),
    sa.Column("deleted", sa.Integer),
    sa.Index("instance_uuid", "instance_uuid"),
    **_mysql,
)
security_groups = sa.Table(
    "security_groups",
    newton_metadata,
    *_soft_delete_columns(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("name", sa.String(length=255)),
    sa.Column("description", sa.String(length=255)),
    sa.Column("user_id", sa.String(length=255)),
    sa.Column("project_id", sa.String(length=255)),
    sa.Column("deleted", sa.Integer),
    sa.UniqueConstraint(
        "project_id", "name", "deleted", name="uniq_security_groups0project_id0name0deleted"
    ),
    **_mysql,
)
security_group_instance_association = sa.Table(
    "security_group_instance_association",
    newton_metadata,
    *_soft_delete_columns(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column(
        "security_group_id",
        sa.Integer,
        sa.ForeignKey("security_groups.id", name="security_group_instance_association_ibfk_1"),
    ),
    sa.Column(
        "instance_uuid",
        sa.String(length=36),
        sa.ForeignKey(
            "instances.uuid", name="security_group_instance_association_instance_uuid_fkey"
        ),
    ),
    sa.Column("deleted", sa.Integer),
    sa.Index("security_group_instance_association_instance_uuid_idx", "instance_uuid"),
    sa.Index("security_group_id", "security_group_id"),
    **_mysql,
)
NEWTON_TABLES = (
    instance_info_caches,
    security_groups,
    security_group_instance_association,
    instance_metadata,
    instance_system_metadata,
)


def _newton_sql(dialect: str) -> list[str]:
    """Return the INSERT ... SELECT statements filling the Newton tables from ``instances``.

    Server-side, from each instance's own columns: one info cache (a one-port
    ``network_info`` of about 330 bytes), one association with its project's ``default``
    security group, two metadata and three system-metadata rows. Rows of deleted
    instances are deleted too (``deleted`` set to the instance's id).
    """
    if dialect == "sqlite":

        def cat(*parts: str) -> str:
            return " || ".join(parts)

        def hex_(expr: str, width: int) -> str:
            return f"printf('%0{width}x', {expr})"

    else:

        def cat(*parts: str) -> str:
            return f"CONCAT({', '.join(parts)})"

        def hex_(expr: str, width: int) -> str:
            if dialect == "postgresql":
                return f"LPAD(TO_HEX({expr}), {width}, '0')"
            return f"LOWER(LPAD(HEX({expr}), {width}, '0'))"

    port = cat(hex_("i.id", 8), "SUBSTR(i.uuid, 9)")
    octets = ["((i.id >> 16) & 255)", "((i.id >> 8) & 255)", "(i.id & 255)"]
    mac = cat(
        "'fa:16:3e:'", hex_(octets[0], 2), "':'", hex_(octets[1], 2), "':'", hex_(octets[2], 2)
    )
    ip = cat(
        "'10.'",
        f"CAST({octets[0]} AS CHAR)",
        "'.'",
        f"CAST({octets[1]} AS CHAR)",
        "'.'",
        f"CAST({octets[2]} AS CHAR)",
    )
    if dialect in ("sqlite", "postgresql"):  # PostgreSQL's CHAR is one character
        ip = ip.replace("AS CHAR", "AS TEXT")
    network_info = cat(
        '\'[{"id": "\'',
        port,
        '\'", "address": "\'',
        mac,
        '\'", "network": {"id": "9d4e5b1f-3c2a-4f7e-8a6b-2e1d0c9b8a71", "bridge":'
        ' "br-int", "label": "private", "subnets": [{"cidr": "10.0.0.0/8",'
        ' "ips": [{"address": "\'',
        ip,
        '\'", "type": "fixed"}], "gateway": {"address": "10.0.0.1"}}]}, "type":'
        ' "ovs", "devname": "tap\'',
        "SUBSTR(" + port + ", 1, 11)",
        '\'", "active": true, "vnic_type": "normal"}]\'',
    )
    deleted = "CASE WHEN i.deleted = 0 THEN 0 ELSE i.id END"
    common = f"i.created_at, i.updated_at, i.deleted_at, {deleted}"
    where = (
        ""
        if NEWTON_SAMPLE_MOD == 1
        else f" WHERE (i.id % {NEWTON_SAMPLE_MOD} = 0"
        " OR i.uuid IN (SELECT instance_id FROM instance_group_member))"
    )
    stmts = [
        "INSERT INTO instance_info_caches (created_at, updated_at, deleted_at, deleted,"
        f" network_info, instance_uuid) SELECT {common}, {network_info}, i.uuid"
        f" FROM instances i{where}",
        "INSERT INTO security_group_instance_association (created_at, updated_at, deleted_at,"
        f" deleted, security_group_id, instance_uuid) SELECT {common}, sg.id, i.uuid"
        " FROM instances i JOIN security_groups sg ON sg.project_id = i.project_id"
        f" AND sg.name = 'default' AND sg.deleted = 0{where.replace('WHERE', 'AND', 1)}",
    ]
    meta_rows = [
        ("instance_metadata", "'role'", "CASE WHEN i.id % 3 = 0 THEN 'db' ELSE 'web' END"),
        ("instance_metadata", "'owner'", "i.user_id"),
        ("instance_system_metadata", "'image_base_image_ref'", "i.image_ref"),
        ("instance_system_metadata", "'image_disk_format'", "'qcow2'"),
        ("instance_system_metadata", "'image_min_disk'", "CAST(i.root_gb AS CHAR)"),
    ]
    for table, key, value in meta_rows:
        if dialect in ("sqlite", "postgresql"):
            value = value.replace("AS CHAR", "AS TEXT")
        key_column = "`key`" if dialect == "mysql" else '"key"'
        stmts.append(
            f"INSERT INTO {table} (created_at, updated_at, deleted_at, deleted, instance_uuid,"
            f" {key_column}, value)"
            f" SELECT {common}, i.uuid, {key}, {value} FROM instances i{where}"
        )
    return stmts


def add_newton_tables(data: DataSet) -> None:
    """Add Nova's pre-Train instance tables to the data set's cells, once (idempotent)."""
    for url in data.cell_urls.values():
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                if _newton_done(conn):
                    continue
            with engine.begin() as conn:
                _tuned(conn, data.backend)
                _fill_newton(conn, data.backend)
        finally:
            engine.dispose()


def _newton_done(conn: sa.Connection) -> bool:
    if not sa.inspect(conn).has_table(_NEWTON_META):
        return False
    version = conn.execute(sa.text(f"SELECT version FROM {_NEWTON_META}")).scalar()
    return version == NEWTON_VERSION


def _fill_newton(conn: sa.Connection, backend: str) -> None:
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_NEWTON_META}")
    for table in reversed(NEWTON_TABLES):
        table.drop(conn, checkfirst=True)
    for table in NEWTON_TABLES:
        table.create(conn)
    projects = conn.execute(sa.text("SELECT DISTINCT project_id FROM instances")).scalars()
    _insert(
        conn,
        security_groups,
        [
            {
                "created_at": NOW,
                "updated_at": NOW,
                "name": "default",
                "description": "default",
                "user_id": "user-00001",
                "project_id": project,
                "deleted": 0,
            }
            for project in sorted(projects)
        ],
    )
    for stmt in _newton_sql(backend):
        # PyMySQL and psycopg format every statement: a literal % is written %%.
        conn.exec_driver_sql(stmt if backend == "sqlite" else stmt.replace("%", "%%"))
    names = ", ".join(t.name for t in NEWTON_TABLES)
    if backend == "sqlite":
        for table in NEWTON_TABLES:
            conn.exec_driver_sql(f"ANALYZE {table.name}")
    elif backend == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {names}")
    else:
        conn.exec_driver_sql(f"ANALYZE TABLE {names}")
    conn.exec_driver_sql(f"CREATE TABLE {_NEWTON_META} (version INTEGER)")
    conn.exec_driver_sql(f"INSERT INTO {_NEWTON_META} VALUES ({NEWTON_VERSION})")


# --------------------------------------------------------------------------- single cell
#
# Most Nova deployments have cell0 and one real cell. The single-cell deployment is a
# second API database (``api1``) that maps cell0 first (an empty cell database of its
# own) and then the data set's ``cell1`` database, with the same groups, policies and
# members as the main API database (copied row for row, ids kept). It holds no
# ``instance_mappings``: on one cell the hot path reads none.

_SINGLE_VERSION = 1


def _single_urls(data: DataSet, folder: Path) -> tuple[str, str]:
    if data.backend == "sqlite":
        return f"sqlite:///{folder / 'api1.sqlite'}", f"sqlite:///{folder / 'cell0.sqlite'}"
    return _server_url(data.backend, "sdbbench_api1"), _server_url(data.backend, "sdbbench_cell0")


def single_cell(data: DataSet, folder: Path) -> DataSet:
    """Return the data set's single-cell deployment (cell0, then cell1), building it once."""
    api_url, cell0_url = _single_urls(data, folder)
    cell_urls = {"cell0": cell0_url, "cell1": data.cell_urls["cell1"]}
    meta = _read_meta(api_url)
    if meta is not None and meta.get("single") == _SINGLE_VERSION:
        return dataclasses.replace(data, api_url=api_url, cell_urls=cell_urls)
    if data.backend == "sqlite":
        for name in ("api1", "cell0"):
            for path in folder.glob(f"{name}.sqlite*"):
                path.unlink()
    else:
        for name in ("sdbbench_api1", "sdbbench_cell0"):
            _fresh_server_db(data.backend, name)
    from shadowdb.databases import CELL0_UUID

    settings = Settings(data_dir=folder, actor="bench")
    with connect(api_url, settings=settings, create=True) as dbs:
        commands.sync_schema(dbs)
        if data.backend == "sqlite":  # cell0's file, as nova-manage's database sync makes it
            import sqlite3

            sqlite3.connect(sa.make_url(cell0_url).database or "").close()
        with dbs.api.begin() as conn:
            conn.execute(
                models.api_cell_mappings.insert().values(
                    created_at=NOW,
                    updated_at=NOW,
                    uuid=CELL0_UUID,
                    name="cell0",
                    transport_url="none:///",
                    database_connection=cell0_url,
                    disabled=False,
                )
            )
        commands.add_cell(dbs, "cell1", data.cell_urls["cell1"], default=True)
        commands.sync_schema(dbs)
        source = sa.create_engine(data.api_url)
        try:
            with source.connect() as src, dbs.api.begin() as dst:
                _tuned(dst, data.backend)
                for table in (models.api_groups, models.api_policies, models.api_members):
                    rows = src.execute(sa.select(table).order_by(table.c.id))
                    while batch := rows.fetchmany(BATCH):
                        dst.execute(table.insert(), [r._asdict() for r in batch])
                if data.backend == "postgresql":  # ids were given: move the sequences on
                    for table in (models.api_groups, models.api_policies, models.api_members):
                        dst.exec_driver_sql(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'),"
                            f" (SELECT max(id) FROM {table.name}))"
                        )
        finally:
            source.dispose()
        with dbs.api.begin() as conn:
            if data.backend == "sqlite":
                conn.exec_driver_sql("ANALYZE")
            else:
                analyze = "ANALYZE TABLE" if data.backend == "mysql" else "ANALYZE"
                conn.exec_driver_sql(f"{analyze} instance_group_member, instance_groups")
        payload = {
            "groups": {
                str(size): {
                    "uuid": g.uuid,
                    "project_id": g.project_id,
                    "members": list(g.members),
                    "hosts": sorted(g.expected_hosts),
                }
                for size, g in data.groups.items()
            },
            "no_group_instance": data.no_group_instance,
            "single": _SINGLE_VERSION,
        }
        _write_meta(dbs.api, payload)
    return dataclasses.replace(data, api_url=api_url, cell_urls=cell_urls)
