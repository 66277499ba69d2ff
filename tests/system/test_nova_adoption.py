"""``db sync`` on databases Nova built: shadowdb adopts them and changes nothing of Nova's.

The databases come from :mod:`tests.support.nova` (Nova 34.0.0's DDL replayed, rows
written as Nova writes them); the API database's ``cell_mappings`` name the cell0 and
cell1 databases in the URL form operators put in ``nova.conf``, and shadowdb is pointed
at the API database only, discovering the cells from there as Nova does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shadowdb import commands, models, schema
from shadowdb.databases import connect
from shadowdb.settings import Settings
from tests.conftest import FreshDatabases
from tests.support import nova
from tests.support.nova_schema import (
    ALEMBIC_VERSION,
    NOVA_API,
    NOVA_API_OTHER,
    NOVA_CELL,
    NOVA_CELL_OTHER,
    TableSpec,
    assert_nova_tables,
)

#: Every table of the Nova-built databases, by role.
NOVA_TABLES: dict[str, dict[str, TableSpec]] = {
    "api": NOVA_API | NOVA_API_OTHER | {"alembic_version": ALEMBIC_VERSION},
    "cell0": NOVA_CELL | NOVA_CELL_OTHER | {"alembic_version": ALEMBIC_VERSION},
    "cell1": NOVA_CELL | NOVA_CELL_OTHER | {"alembic_version": ALEMBIC_VERSION},
}
TREES = {"api": "api", "cell0": "cell", "cell1": "cell"}
NOVA_HEADS = {"api": nova.NOVA_API_HEAD, "cell0": nova.NOVA_MAIN_HEAD, "cell1": nova.NOVA_MAIN_HEAD}
METADATA = {"api": models.api_metadata, "cell": models.cell_metadata}

Dump = dict[str, list[tuple[Any, ...]]]


class Deployment:
    """The Nova-built databases, with one plain engine each for looking at them."""

    def __init__(self, built: nova.NovaDeployment) -> None:
        self.built = built
        urls = {"api": built.api_url, "cell0": built.cell0_url, "cell1": built.cell1_url}
        self.engines = {
            role: sa.create_engine(url, poolclass=sa.pool.NullPool) for role, url in urls.items()
        }

    @property
    def api_connection(self) -> str:
        """The API database URL as written in ``nova.conf`` ``[api_database]``."""
        return nova.nova_connection_string(self.built.api_url)

    def tables(self) -> dict[str, set[str]]:
        out = {}
        for role, engine in self.engines.items():
            with engine.connect() as conn:
                out[role] = set(sa.inspect(conn).get_table_names())
        return out

    def dump(self, *, nova_only: bool) -> dict[str, Dump]:
        """Every row of every table (only Nova's with ``nova_only``), in primary key order."""
        return {role: _dump(engine, nova_only=nova_only) for role, engine in self.engines.items()}

    def dispose(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def _dump(engine: sa.Engine, *, nova_only: bool) -> Dump:
    out: Dump = {}
    with engine.connect() as conn:
        metadata = sa.MetaData()
        metadata.reflect(conn)
        for name, table in sorted(metadata.tables.items()):
            if nova_only and name.startswith("shadowdb_"):
                continue
            order = list(table.primary_key.columns) or list(table.columns)
            out[name] = [tuple(row) for row in conn.execute(sa.select(table).order_by(*order))]
    return out


@pytest.fixture
def deployment(fresh: FreshDatabases) -> Iterator[Deployment]:
    """A Nova deployment: the API database, cell0 (on fresh's ``cell2``) and cell1."""
    built = nova.build_deployment(
        api_url=fresh.api_url,
        cell0_url=fresh.cell_urls["cell2"],
        cell1_url=fresh.cell_urls["cell1"],
    )
    dep = Deployment(built)
    yield dep
    dep.dispose()


def _sync(dep: Deployment, settings: Settings) -> commands.SyncResult:
    with connect(dep.api_connection, settings=settings) as dbs:
        return commands.sync_schema(dbs)


def test_fixture_builds_the_tables_nova_builds(deployment: Deployment) -> None:
    # The fixture's DDL and the expected shapes are two separate transcriptions of
    # Nova's migrations; they must agree before either proves anything about shadowdb.
    assert deployment.tables() == {role: set(specs) for role, specs in NOVA_TABLES.items()}
    for role, engine in deployment.engines.items():
        assert_nova_tables(engine, NOVA_TABLES[role])
    dump = deployment.dump(nova_only=True)
    assert dump["api"]["alembic_version"] == [(nova.NOVA_API_HEAD,)]
    assert dump["cell1"]["alembic_version"] == [(nova.NOVA_MAIN_HEAD,)]
    assert len(dump["cell1"]["instance_groups"]) == 3
    with deployment.engines["api"].connect() as conn:
        mappings = conn.execute(
            sa.text("SELECT name, database_connection FROM cell_mappings ORDER BY id")
        ).all()
    assert [tuple(m) for m in mappings] == [
        ("cell0", nova.nova_connection_string(deployment.built.cell0_url)),
        ("cell1", nova.nova_connection_string(deployment.built.cell1_url)),
    ]


def test_sync_adds_only_shadowdb_tables_and_leaves_every_nova_row(
    deployment: Deployment, settings: Settings
) -> None:
    tables_before = deployment.tables()
    rows_before = deployment.dump(nova_only=True)

    result = _sync(deployment, settings)

    # The cells were found through Nova's own cell_mappings rows (cell0 first, by id).
    assert [(d.database.split(" (")[0], d.tree) for d in result.databases][1:] == [
        ("cell cell0", "cell"),
        ("cell cell1", "cell"),
    ]
    assert [(d.before, d.after, d.changed) for d in result.databases] == [
        (None, schema.head_revision("api"), True),
        (None, schema.head_revision("cell"), True),
        (None, schema.head_revision("cell"), True),
    ]
    assert result.state_created

    tables_after = deployment.tables()
    for role, before in tables_before.items():
        after = tables_after[role]
        added = after - before
        assert before <= after, role
        assert {t for t in added if not t.startswith("shadowdb_")} == set(), role
        assert f"shadowdb_{TREES[role]}_version" in added, role
        assert "shadowdb_journal" in added, role

    # Not one Nova row changed, Nova's alembic_version included.
    assert deployment.dump(nova_only=True) == rows_before
    for role, head in NOVA_HEADS.items():
        with deployment.engines[role].connect() as conn:
            rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [tuple(r) for r in rows] == [(head,)], role

    # Nor the structure of a Nova table.
    for role, engine in deployment.engines.items():
        assert_nova_tables(engine, NOVA_TABLES[role])


def test_second_sync_changes_nothing(deployment: Deployment, settings: Settings) -> None:
    _sync(deployment, settings)
    tables = deployment.tables()
    rows = deployment.dump(nova_only=False)

    result = _sync(deployment, settings)

    assert [(d.before, d.after, d.changed) for d in result.databases] == [
        (schema.head_revision("api"), schema.head_revision("api"), False),
        (schema.head_revision("cell"), schema.head_revision("cell"), False),
        (schema.head_revision("cell"), schema.head_revision("cell"), False),
    ]
    assert not result.state_created
    assert deployment.tables() == tables
    # Every row of every table, shadowdb's phase row and history included.
    assert deployment.dump(nova_only=False) == rows


def test_models_agree_with_nova_built_databases(deployment: Deployment, settings: Settings) -> None:
    _sync(deployment, settings)
    for role, engine in deployment.engines.items():
        metadata = METADATA[TREES[role]]
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": f"shadowdb_{TREES[role]}_version",
                    "compare_type": True,
                    "compare_server_default": True,
                    # Nova's other tables (flavors, alembic_version, ...) are not
                    # described by shadowdb's metadata: compare only the ones that are.
                    "include_name": lambda name, type_, _parent, md=metadata: (
                        type_ != "table" or name in md.tables
                    ),
                },
            )
            assert compare_metadata(context, metadata) == [], role


def test_cells_are_read_from_novas_cell_mappings(
    deployment: Deployment, settings: Settings
) -> None:
    _sync(deployment, settings)
    with connect(deployment.api_connection, settings=settings) as dbs:
        cells = commands.list_cells(dbs)
        engines = {c.name: c.engine.url for c in dbs.cells}
    assert [(c.name, c.uuid) for c in cells] == [
        ("cell0", nova.CELL0_UUID),
        ("cell1", nova.CELL1_UUID),
    ]
    # Nova's connection strings (pymysql with ?charset=utf8, psycopg2, bare sqlite)
    # reach the same databases through shadowdb's drivers.
    assert engines["cell0"].database == deployment.built.cell0_url.database
    assert engines["cell1"].database == deployment.built.cell1_url.database
