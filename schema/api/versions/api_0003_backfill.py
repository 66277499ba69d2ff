"""Add the backfill's bookkeeping: claimable chunks and groups it could not copy.

Revision ID: api_0003
Revises: api_0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "api_0003"
down_revision = "api_0002"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def upgrade() -> None:
    op.create_table(
        "shadowdb_backfill_chunks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cell_uuid", sa.String(length=36), nullable=False),
        sa.Column("start_id", sa.Integer, nullable=False),
        sa.Column("end_id", sa.Integer, nullable=False),
        sa.Column("next_id", sa.Integer, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint(
            "cell_uuid", "start_id", name="uniq_shadowdb_backfill_chunks0cell_uuid0start_id"
        ),
        **_MYSQL,
    )
    op.create_table(
        "shadowdb_backfill_conflicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("group_uuid", sa.String(length=36), nullable=False),
        sa.Column("cell_uuid", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("found_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint(
            "group_uuid", "cell_uuid", name="uniq_shadowdb_backfill_conflicts0group_uuid0cell_uuid"
        ),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("shadowdb_backfill_conflicts")
    op.drop_table("shadowdb_backfill_chunks")
