"""Run shadowdb's two alembic trees (``schema/api`` and ``schema/cell``) from code.

Migrations run on a connection handed to alembic through ``Config.attributes``; the
``env.py`` of each tree calls :func:`run_migrations`. shadowdb's version tables are
``shadowdb_api_version`` and ``shadowdb_cell_version``, so Nova's own
``alembic_version`` table is never read or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "API_VERSION_TABLE",
    "CELL_VERSION_TABLE",
    "SCHEMA_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "run_migrations",
    "upgrade",
]

API_VERSION_TABLE = "shadowdb_api_version"
CELL_VERSION_TABLE = "shadowdb_cell_version"

#: The alembic trees, beside the package in a source checkout or editable install.
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"

_VERSION_TABLES = {"api": API_VERSION_TABLE, "cell": CELL_VERSION_TABLE}


def alembic_config(tree: str, connection: Connection | None = None) -> Config:
    """Build the alembic configuration of ``tree`` (``"api"`` or ``"cell"``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCHEMA_DIR / tree))
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = _VERSION_TABLES[tree]
    return cfg


def run_migrations(context: Any, metadata: sa.MetaData, version_table: str) -> None:
    """Run the migrations of one tree on the connection in ``context.config``.

    Called from the tree's ``env.py``; offline (SQL script) mode is not supported.
    """
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("shadowdb migrations run on a connection given by shadowdb.schema")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        # Only compare the tables shadowdb describes: Nova's other tables are not ours.
        include_name=lambda name, type_, _parent: type_ != "table" or name in metadata.tables,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def upgrade(engine: Engine, tree: str, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` of ``tree``."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(tree, conn), revision)


def downgrade(engine: Engine, tree: str, revision: str) -> None:
    """Downgrade the database behind ``engine`` to ``revision`` of ``tree``."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(tree, conn), revision)


def current_revision(conn: Connection, tree: str) -> str | None:
    """Return the revision the database is at, or ``None`` if shadowdb never ran there."""
    ctx = MigrationContext.configure(conn, opts={"version_table": _VERSION_TABLES[tree]})
    return ctx.get_current_revision()


def head_revision(tree: str) -> str:
    """Return the newest revision of ``tree``."""
    head = ScriptDirectory.from_config(alembic_config(tree)).get_current_head()
    assert head is not None
    return head


def revisions(tree: str) -> list[str]:
    """Return every revision of ``tree``, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(tree))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]
