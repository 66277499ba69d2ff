"""Add the diff report's record: one row per ``shadowdb diff-report`` run.

Revision ID: api_0004
Revises: api_0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "api_0004"
down_revision = "api_0003"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def upgrade() -> None:
    op.create_table(
        "shadowdb_diff_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("differences", sa.Integer, nullable=False),
        sa.Column("counts", sa.Text, nullable=True),
        sa.Column("rows_api", sa.Integer, nullable=False),
        sa.Column("rows_cells", sa.Integer, nullable=False),
        sa.Column("repaired", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("shadowdb_diff_results")
