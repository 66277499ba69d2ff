"""shadowdb's schema against Nova's, its alembic trees walked, its models against its migrations.

The expected Nova structure comes from :mod:`tests.support.nova_schema`, transcribed by
hand from Nova 34.0.0's migrations; nothing here is derived from ``shadowdb.models``
except in the models-against-migrations check, whose point is to compare the two.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL

from shadowdb import commands, models, schema
from shadowdb.databases import connect, create_engine
from shadowdb.settings import Settings
from tests.conftest import FreshDatabases
from tests.support.nova_schema import NOVA_API, NOVA_CELL, assert_nova_tables

VERSION_TABLES = {"api": "shadowdb_api_version", "cell": "shadowdb_cell_version"}
METADATA = {"api": models.api_metadata, "cell": models.cell_metadata}
NOVA_TABLES = {"api": NOVA_API, "cell": NOVA_CELL}

#: shadowdb's own tables, by the revision that adds them (written out, not read from models).
SHADOWDB_TABLES = {
    "api_0002": {"shadowdb_state", "shadowdb_phase_history", "shadowdb_journal"},
    "cell_0002": {"shadowdb_journal"},
}

#: The complete table set after each known revision, version table included.
TABLES_AT = {
    "api_0001": set(NOVA_API) | {"shadowdb_api_version"},
    "api_0002": set(NOVA_API) | {"shadowdb_api_version"} | SHADOWDB_TABLES["api_0002"],
    "cell_0001": set(NOVA_CELL) | {"shadowdb_cell_version"},
    "cell_0002": set(NOVA_CELL) | {"shadowdb_cell_version"} | SHADOWDB_TABLES["cell_0002"],
}


def _text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _version_rows(engine: sa.Engine, tree: str) -> list[str]:
    """Read the version table directly (not through alembic) to see exactly what it holds."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLES[tree]}")).all()
    return [row[0] for row in rows]


@pytest.fixture
def synced(fresh: FreshDatabases, settings: Settings) -> Iterator[dict[str, sa.Engine]]:
    """Fresh databases after ``db sync``, cell registration and ``db sync`` again."""
    with connect(_text(fresh.api_url), settings=settings, create=True) as dbs:
        commands.sync_schema(dbs)
        for name, url in fresh.cell_urls.items():
            commands.add_cell(dbs, name, _text(url))
        result = commands.sync_schema(dbs)
    assert [(d.tree, d.after) for d in result.databases] == [
        ("api", schema.head_revision("api")),
        ("cell", schema.head_revision("cell")),
        ("cell", schema.head_revision("cell")),
    ]
    urls = {"api": fresh.api_url} | fresh.cell_urls
    engines = {
        role: sa.create_engine(url, poolclass=sa.pool.NullPool) for role, url in urls.items()
    }
    yield engines
    for engine in engines.values():
        engine.dispose()


# --------------------------------------------------------------------------- A: schema


def test_synced_api_database_has_novas_tables_exactly(
    synced: dict[str, sa.Engine],
) -> None:
    assert_nova_tables(synced["api"], NOVA_API)


@pytest.mark.parametrize("cell", ["cell1", "cell2"])
def test_synced_cell_database_has_novas_tables_exactly(
    synced: dict[str, sa.Engine], cell: str
) -> None:
    assert_nova_tables(synced[cell], NOVA_CELL)


def test_synced_databases_add_only_shadowdb_tables_and_version_tables(
    synced: dict[str, sa.Engine],
) -> None:
    trees = {"api": "api", "cell1": "cell", "cell2": "cell"}
    nova = {"api": set(NOVA_API), "cell": set(NOVA_CELL)}
    for role, engine in synced.items():
        tree = trees[role]
        tables = _tables(engine)
        # Nova's tables, shadowdb's version table, and otherwise only shadowdb_* tables.
        assert nova[tree] <= tables, role
        assert VERSION_TABLES[tree] in tables, role
        assert SHADOWDB_TABLES[f"{tree}_0002"] <= tables, role
        assert {t for t in tables - nova[tree] if not t.startswith("shadowdb_")} == set(), role
        # shadowdb never creates Nova's alembic_version, nor the other tree's version table.
        assert "alembic_version" not in tables, role
        other = VERSION_TABLES["cell" if tree == "api" else "api"]
        assert other not in tables, role
        assert _version_rows(engine, tree) == [schema.head_revision(tree)], role
        with engine.connect() as conn:
            assert schema.current_revision(conn, tree) == schema.head_revision(tree)


def test_version_table_names() -> None:
    assert schema.API_VERSION_TABLE == "shadowdb_api_version"
    assert schema.CELL_VERSION_TABLE == "shadowdb_cell_version"


# --------------------------------------------------------------------------- B: alembic walk


def _tree_engine(fresh: FreshDatabases, settings: Settings, tree: str) -> sa.Engine:
    url = fresh.api_url if tree == "api" else fresh.cell_urls["cell1"]
    return create_engine(url, settings)


@pytest.mark.parametrize("tree", ["api", "cell"])
def test_revisions_start_with_nova_adoption(tree: str) -> None:
    revisions = schema.revisions(tree)
    assert revisions[:2] == [f"{tree}_0001", f"{tree}_0002"]
    assert revisions[-1] == schema.head_revision(tree)
    assert len(set(revisions)) == len(revisions)


@pytest.mark.parametrize("tree", ["api", "cell"])
def test_walk_every_revision_up_down_and_up(
    fresh: FreshDatabases, settings: Settings, tree: str
) -> None:
    engine = _tree_engine(fresh, settings, tree)
    version_table = VERSION_TABLES[tree]
    revisions = schema.revisions(tree)
    try:
        assert _tables(engine) == set()
        with engine.connect() as conn:
            assert schema.current_revision(conn, tree) is None

        # Up, one revision at a time.
        seen: dict[str, set[str]] = {}
        previous: set[str] = set()
        for rev in revisions:
            schema.upgrade(engine, tree, rev)
            tables = _tables(engine)
            assert _version_rows(engine, tree) == [rev]
            with engine.connect() as conn:
                assert schema.current_revision(conn, tree) == rev
            if rev in TABLES_AT:
                assert tables == TABLES_AT[rev], rev
            else:
                # A revision newer than this test: it may only add shadowdb_* tables.
                added = tables - previous
                assert previous <= tables, rev
                assert all(t.startswith("shadowdb_") for t in added), (rev, added)
            assert "alembic_version" not in tables
            seen[rev] = tables
            previous = tables

        # Down through shadowdb's own revisions, back to the first one.
        for rev in reversed(revisions[:-1]):
            schema.downgrade(engine, tree, rev)
            assert _version_rows(engine, tree) == [rev]
            assert _tables(engine) == seen[rev], rev
        assert _tables(engine) == set(NOVA_TABLES[tree]) | {version_table}

        # And up again to the head.
        schema.upgrade(engine, tree)
        assert _version_rows(engine, tree) == [revisions[-1]]
        assert _tables(engine) == seen[revisions[-1]]
    finally:
        engine.dispose()


@pytest.mark.parametrize("tree", ["api", "cell"])
def test_first_revision_refuses_to_downgrade(
    fresh: FreshDatabases, settings: Settings, tree: str
) -> None:
    engine = _tree_engine(fresh, settings, tree)
    first = schema.revisions(tree)[0]
    groups = sa.table("instance_groups", sa.column("id"), sa.column("uuid"))
    try:
        schema.upgrade(engine, tree)
        schema.downgrade(engine, tree, first)
        with engine.begin() as conn:
            values = {"id": 7, "uuid": "7a0f6a57-d7d5-4c45-b8ab-3d0d9b1f4f0e"}
            if tree == "cell":
                values["deleted"] = 0
                groups.append_column(sa.column("deleted"))
            conn.execute(groups.insert().values(values))

        # Nova's tables may hold Nova's data: revision 1 never drops them.
        with pytest.raises(NotImplementedError, match="Nova"):
            schema.downgrade(engine, tree, "base")

        assert _version_rows(engine, tree) == [first]
        assert _tables(engine) == set(NOVA_TABLES[tree]) | {VERSION_TABLES[tree]}
        with engine.connect() as conn:
            assert conn.execute(sa.select(groups.c.uuid)).scalars().all() == [values["uuid"]]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- C: models


@pytest.mark.parametrize("tree", ["api", "cell"])
def test_models_match_migrations(fresh: FreshDatabases, settings: Settings, tree: str) -> None:
    engine = _tree_engine(fresh, settings, tree)
    try:
        schema.upgrade(engine, tree)
        with engine.connect() as conn:
            # No include_name filter: on a database shadowdb built, every table but the
            # version table (which alembic skips when told its name) must be described by
            # the metadata, so a table the migrations create and the models lack shows up.
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": VERSION_TABLES[tree],
                    "compare_type": True,
                    "compare_server_default": True,
                },
            )
            assert compare_metadata(context, METADATA[tree]) == []
    finally:
        engine.dispose()
