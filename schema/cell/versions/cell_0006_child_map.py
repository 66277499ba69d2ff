"""Add the backfill's child map: which group each live policy and member row belongs to.

Nova's child tables have no index on ``group_id`` (InnoDB adds one for the foreign key;
SQLite and PostgreSQL do not) and shadowdb never alters Nova's tables: the backfill reads
a batch's children through this map instead (:mod:`shadowdb.childmap`).

Revision ID: cell_0006
Revises: cell_0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "cell_0006"
down_revision = "cell_0005"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def upgrade() -> None:
    op.create_table(
        "shadowdb_child_map",
        sa.Column("kind", sa.String(length=1), primary_key=True),
        sa.Column("child_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("group_id", sa.Integer, nullable=False),
        sa.Index("shadowdb_child_map_kind_group_id_idx", "kind", "group_id"),
        **_MYSQL,
    )
    op.create_table(
        "shadowdb_child_map_built",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.Integer, nullable=True),
        sa.Column("built_at", sa.DateTime, nullable=True),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("shadowdb_child_map_built")
    op.drop_table("shadowdb_child_map")
