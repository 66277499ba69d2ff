"""Add tombstones, what each diff-report covered, and whether the cells were retired.

Revision ID: api_0005
Revises: api_0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "api_0005"
down_revision = "api_0004"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def upgrade() -> None:
    op.create_table(
        "shadowdb_tombstones",
        sa.Column("uuid", sa.String(length=36), primary_key=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("deleted_at", sa.DateTime, nullable=False),
        **_MYSQL,
    )
    with op.batch_alter_table("shadowdb_diff_results") as batch:
        batch.add_column(sa.Column("cells", sa.Text, nullable=True))
        batch.add_column(sa.Column("unexplained", sa.Integer, nullable=True))
    with op.batch_alter_table("shadowdb_state") as batch:
        batch.add_column(sa.Column("cells_retired", sa.Boolean, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("shadowdb_state") as batch:
        batch.drop_column("cells_retired")
    with op.batch_alter_table("shadowdb_diff_results") as batch:
        batch.drop_column("unexplained")
        batch.drop_column("cells")
    op.drop_table("shadowdb_tombstones")
