"""Add shadowdb's API-side bookkeeping: phase state, phase history, journal.

Revision ID: api_0002
Revises: api_0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "api_0002"
down_revision = "api_0001"
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
        sa.Column("default_cell_uuid", sa.String(length=36), nullable=True),
        **_MYSQL,
    )
    op.create_table(
        "shadowdb_phase_history",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("from_phase", sa.String(length=32), nullable=True),
        sa.Column("to_phase", sa.String(length=32), nullable=False),
        sa.Column("changed_at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("overridden", sa.Text, nullable=True),
        sa.UniqueConstraint("epoch", name="uniq_shadowdb_phase_history0epoch"),
        **_MYSQL,
    )
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
    op.drop_table("shadowdb_phase_history")
    op.drop_table("shadowdb_state")
