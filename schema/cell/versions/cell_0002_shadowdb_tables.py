"""Add shadowdb's cell-side journal.

Revision ID: cell_0002
Revises: cell_0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "cell_0002"
down_revision = "cell_0001"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def upgrade() -> None:
    op.create_table(
        "shadowdb_journal",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("group_uuid", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Index("shadowdb_journal_group_uuid_idx", "group_uuid"),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("shadowdb_journal")
