"""Add the cell-side phase row (the fence) and the per-group identity locks.

Revision ID: cell_0003
Revises: cell_0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "cell_0003"
down_revision = "cell_0002"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def upgrade() -> None:
    op.create_table(
        "shadowdb_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("changed_at", sa.DateTime, nullable=False),
        **_MYSQL,
    )
    op.create_table(
        "shadowdb_group_locks",
        sa.Column("uuid", sa.String(length=36), primary_key=True),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("shadowdb_group_locks")
    op.drop_table("shadowdb_state")
